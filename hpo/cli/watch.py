"""``hpo status``, ``logs``, ``best``, ``export``, ``plot``, ``report``, ``dashboard``:
watch and harvest a study. The work is done by :mod:`hpo.watch`; here are the flags.

Each takes the settings options of every ``hpo`` command, so ``STUDY_NAME``,
``JOURNAL_DIR``, ``LOG_DIR``, ``TRIAL_OUTPUT``, ``HPO_CONFIG`` (or their flags)
select the study. Heavy imports (optuna, pandas, matplotlib) happen inside the
commands so that ``hpo --help`` stays fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from hpo.cli._options import load, load_sweep, settings_options
from hpo.errors import UsageError

if TYPE_CHECKING:
    from hpo.watch.logs import Line

SOURCE_COLORS = ("cyan", "green", "yellow", "magenta", "blue", "bright_cyan", "bright_green", "bright_magenta")


# -- status -------------------------------------------------------------------------------

@click.command("status")
@click.option("--watch", "-w", "watch", is_flag=True, help="refresh every --interval seconds until Ctrl-C")
@click.option("--interval", type=click.FloatRange(0.2, 3600), default=2.0, show_default=True,
              help="seconds between refreshes with --watch")
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON (one object per refresh)")
@click.option("--no-slurm", is_flag=True, help="do not ask squeue about the study's jobs")
@settings_options
def status_cmd(watch: bool, interval: float, as_json: bool, no_slurm: bool, **flags: Any) -> int:
    """One screen: trials by state, progress and ETA, best trial, running trials, workers, zombies, SLURM jobs."""
    from hpo.watch import status

    launch = load_sweep(flags)

    def snapshot() -> dict[str, Any]:
        return status.snapshot(launch, slurm=not no_slurm)

    render = status.render_snapshot  # a study's screen, or a sweep's: one per study and the combined table
    if as_json:
        from hpo.system.files import strict_json

        return _repeat(lambda: click.echo(strict_json(snapshot())), watch, interval)
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped or redirected: wide lines rather than folded tables
    if not watch:
        console.print(render(snapshot()))
        return 0
    from rich.live import Live

    with Live(render(snapshot()), console=console, auto_refresh=False, screen=False) as live:
        return _repeat(lambda: live.update(render(snapshot()), refresh=True), True, interval, first=False)


def _repeat(action: Callable[[], object], watch: bool, interval: float, first: bool = True) -> int:
    """Run ``action`` once, or every ``interval`` seconds until Ctrl-C (exit 0)."""
    try:
        if first:
            action()
        while watch:
            time.sleep(interval)
            action()
    except KeyboardInterrupt:
        pass
    return 0


# -- logs ---------------------------------------------------------------------------------

@click.command("logs")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines (and new workers' logs) until Ctrl-C")
@click.option("--worker", "worker", default=None, metavar="ID", help="only this worker's log (worker_<ID>.log)")
@click.option("--trial", "trial", type=click.IntRange(0), default=None, metavar="N",
              help="the log of trial N: its run directory's trial.log, else its lines in the worker logs")
@click.option("-n", "--lines", "n_lines", type=click.IntRange(0), default=None,
              help="start with the last N lines [default: all; 10 with -f]")
@click.option("--interval", type=click.FloatRange(0.05, 60), default=0.5, show_default=True,
              help="seconds between polls with -f")
@click.option("--all-studies", is_flag=True,
              help="lines of every study in LOG_DIR (and of logs whose lines name no study), not only STUDY_NAME's")
@settings_options
def logs_cmd(follow: bool, worker: str | None, trial: int | None, n_lines: int | None, interval: float,
             all_studies: bool, **flags: Any) -> int:
    """Worker logs of the study merged in time, each line prefixed with its worker."""
    from hpo.watch.logs import nothing_yet, open_follower

    settings, _ = load(flags)
    follower = open_follower(settings, worker, trial, all_studies)
    prefix = trial is None
    first = follower.poll()
    if not first and not follow:
        if not settings.storage and not settings.journal_path.exists() and not all_studies:
            from hpo.journal.format import no_such_study

            raise no_such_study(settings.study_name, settings.journal_dir)  # a typo, not a quiet study
        if trial is not None:
            raise UsageError(nothing_yet(follower, settings))  # a trial that never ran
        click.echo(nothing_yet(follower, settings), err=True)
        return 0
    keep = n_lines if n_lines is not None else (10 if follow else None)
    _print_lines(first if keep is None else first[len(first) - keep:] if keep else [], follower.width, prefix)
    try:
        while follow:
            time.sleep(interval)
            _print_lines(follower.poll(), follower.width, prefix)
    except KeyboardInterrupt:
        pass
    return 0


def _print_lines(lines: list["Line"], width: int, prefix: bool) -> None:
    from hpo.watch.logs import format_line

    if not lines:
        return
    if not prefix:
        click.echo("\n".join(line.text for line in lines))
        return
    colors: dict[str, str] = {}
    out = []
    for line in lines:
        color = colors.setdefault(line.source, SOURCE_COLORS[sum(map(ord, line.source)) % len(SOURCE_COLORS)])
        text = format_line(line, width)
        out.append(click.style(text[:width], fg=color) + text[width:])
    click.echo("\n".join(out))  # click drops the colours when stdout is not a terminal


# -- best ----------------------------------------------------------------------------------

@click.command("best")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@settings_options
def best_cmd(fmt: str, **flags: Any) -> int:
    """The best trial's parameters (or the Pareto set and its knee), and the env lines of its budgets."""
    import yaml

    from hpo.system.files import strict_json
    from hpo.watch.export import best_report
    from hpo.watch.status import open_view

    settings, _ = load(flags)
    report = best_report(open_view(settings), settings.as_dict(), settings.objective_fields)
    for warning in report.get("warnings", []):
        click.echo(f"hpo: warning: {warning}", err=True)
    if fmt == "json":
        click.echo(strict_json(report, indent=2))
    else:
        click.echo(yaml.safe_dump(json.loads(json.dumps(report, default=str)), sort_keys=False,
                                  allow_unicode=True).rstrip())
    return 0


# -- studies ---------------------------------------------------------------------------------

@click.command("studies")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per study")
@settings_options
def studies_cmd(as_json: bool, **flags: Any) -> int:
    """The studies of the journal folder (JOURNAL_DIR): trials by state, best value, last activity."""
    from rich.console import Console

    from hpo.system.files import strict_json
    from hpo.watch.status import render_studies, study_rows

    settings, _ = load(flags)
    folder = settings.journal_dir
    if not folder.is_dir():
        raise UsageError(f"JOURNAL_DIR={str(folder)!r} ({settings.sources.get('journal_dir', 'default')}) is not "
                         "a folder; valid: the folder of your studies' journals (--journal-dir)")
    rows = study_rows(folder)
    if as_json:
        for row in rows:
            click.echo(strict_json(row))  # a best of -inf is null, as in every JSON hpo prints
    elif rows:
        Console(width=200).print(render_studies(rows))
    else:
        click.echo(f"no studies in {folder} (no *.journal file)")
    return 0


# -- export ----------------------------------------------------------------------------------

def _out_folder(out: str | None) -> Path | None:
    """``--out DIR`` of export and plot, refused (exit 2) before anything is read or written
    when it is a file or cannot be written, as a folder setting is."""
    from hpo.config.settings import writable_directory

    return writable_directory("--out", out) if out else None



@click.command("export")
@click.option("--out", "out", default=None, metavar="DIR", help="output folder [default: results/<study>]")
@click.option("--top", "top", type=click.IntRange(1), default=20, show_default=True,
              help="rows of top_<K>_trials.csv")
@settings_options
def export_cmd(out: str | None, top: int, **flags: Any) -> int:
    """best_params.json, all_trials.csv, top_<K>_trials.csv, trials.parquet and hpo_results.json."""
    from hpo.watch.export import export_launch

    for written in export_launch(load_sweep(flags), _out_folder(out), top):
        click.echo(str(written), err=not isinstance(written, Path))  # a file to stdout, a note to stderr
    return 0


# -- plot -----------------------------------------------------------------------------------

@click.command("plot")
@click.option("--out", "out", default=None, metavar="DIR",
              help="output folder [default: results/<study>/figures; a sweep: each study's, and results/]")
@settings_options
def plot_cmd(out: str | None, **flags: Any) -> int:
    """The study's figures as PNG files (no display or browser needed); a sweep's: each
    study's, and <config>_compare.png comparing them."""
    from hpo.watch.plots import plot_study, plot_sweep

    launch = load_sweep(flags)
    if len(launch.studies) > 1:
        written, skipped = plot_sweep(launch, _out_folder(out))
    else:
        settings, config = launch.one()
        written, skipped = plot_study(settings, config.objective, _out_folder(out))
    for path in written:
        click.echo(str(path))
    for name, reason in skipped.items():
        click.echo(f"skipped {name}: {reason}", err=True)
    return 0


# -- report ----------------------------------------------------------------------------------

@click.command("report")
@click.option("--out", "out", default=None, metavar="FILE",
              help="HTML file [default: results/<study>/report.html; a sweep: results/<config>_report.html]")
@click.option("--top", "top", type=click.IntRange(1), default=20, show_default=True,
              help="rows of the top trials table")
@settings_options
def report_cmd(out: str | None, top: int, **flags: Any) -> int:
    """One self-contained HTML page: status, best trial, top trials and every figure (a sweep:
    its studies compared, then each)."""
    from hpo.watch.report import write_report, write_sweep_report

    launch = load_sweep(flags)
    if len(launch.studies) > 1:
        click.echo(str(write_sweep_report(launch, top, Path(out) if out else None)))
        return 0
    settings, config = launch.one()
    click.echo(str(write_report(settings, config.objective, top, Path(out) if out else None)))
    return 0


# -- dashboard ---------------------------------------------------------------------------------

@click.command("dashboard")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--host", "bind", default="127.0.0.1", show_default=True,
              help="address to bind; the default keeps the dashboard off the network (use ssh -L)")
@settings_options
def dashboard_cmd(port: int, bind: str, **flags: Any) -> int:
    """optuna-dashboard on the study's journal, with the ssh port-forward line for a laptop."""
    import getpass
    import socket

    from hpo.watch.dashboard import LOCAL_HOSTS, forward_line, serve
    from hpo.watch.status import open_view

    settings, _ = load(flags)
    open_view(settings)  # a missing journal or study fails here, with the valid names
    click.echo(f"optuna-dashboard for study {settings.study_name!r} ({settings.storage_label}) "
               f"on http://{bind}:{port}/", err=True)
    if bind in LOCAL_HOSTS:
        # getfqdn() says "localhost" on a node whose hosts file maps its name there: the hostname then
        host = next((h for h in (socket.getfqdn(), socket.gethostname()) if not h.startswith("localhost")),
                    socket.gethostname())
        click.echo(f"from a laptop: {forward_line(port, getpass.getuser(), host)}  "
                   f"then open http://127.0.0.1:{port}/", err=True)
    serve(settings, bind, port)
    return 0


COMMANDS = (status_cmd, logs_cmd, best_cmd, studies_cmd, export_cmd, plot_cmd, report_cmd, dashboard_cmd)


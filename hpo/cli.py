"""The ``hpo`` command line. The only place errors become exit statuses.

Exit statuses: 0 done; 2 bad input (nothing written); 3 storage; 4 scheduler;
75 a worker was preempted (requeue it); 130 interrupted.
Heavy imports (torch, optuna, submitit) happen inside commands, so ``hpo --help`` is fast.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click

from hpo import __version__
from hpo.errors import HpoError
from hpo.config import StudyConfig, load_all
from hpo.settings import FIELDS, Settings

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """One ``--flag`` per setting, from the same table as the environment variables."""
    for f in reversed(FIELDS):
        func = click.option(
            f.flag, f.name, default=None, metavar=f.env,
            help=f"{f.help} [env {f.env}; default {f.default}]",
        )(func)
    func = click.option("--arg", "args", multiple=True, metavar="NAME=VALUE",
                        help="a setting of the objective (see `hpo config`), e.g. --arg n_train=2000")(func)
    return click.option("--config", "config", default=None, type=click.Path(dir_okay=False),
                        help="study config YAML [env HPO_CONFIG; default configs/physae.yaml]")(func)


def load(flags: dict[str, Any]) -> tuple[Settings, StudyConfig]:
    """Resolve settings and the study config from flags, environment and file."""
    return load_all(flags, os.environ)


def config_mode_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--overwrite", is_flag=True,
                        help="the study was run with another config: store this one (the old one is backed up)")(func)
    return click.option("--reuse-stored", is_flag=True,
                        help="the study was run with another config: run with the stored one")(func)


def check_runnable(settings: Settings, config: StudyConfig) -> None:
    """What only importing and constructing can tell: fail before anything is written."""
    from hpo.errors import UsageError
    from hpo.storage import make_pruner, make_sampler

    config.load_objective()
    try:
        make_sampler(settings, None, config.sampler_args)
        make_pruner(settings, config.pruner_args)
    except UsageError as exc:
        raise UsageError(f"{config.path}: {exc}") from None


def launch(flags: dict[str, Any], launcher: str) -> tuple[Settings, StudyConfig]:
    """Settings and the config this launch runs with (see hpo.provenance), recorded."""
    import dataclasses

    from hpo.errors import UsageError
    from hpo.provenance import ConfigMode, reconcile, record_launch

    reuse, overwrite = flags.pop("reuse_stored"), flags.pop("overwrite")
    if reuse and overwrite:
        raise UsageError("--reuse-stored and --overwrite exclude each other; give one")
    settings, config = load(flags)
    check_runnable(settings, config)
    mode = ConfigMode.REUSE_STORED if reuse else ConfigMode.OVERWRITE if overwrite else ConfigMode.CHECK
    used = reconcile(settings, config, mode)
    if used.path != config.path:
        settings = dataclasses.replace(settings, config=used.path)
    record_launch(settings, used, launcher)
    return settings, used


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="hpo")
@click.option("--debug", is_flag=True, help="show tracebacks of errors")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Optuna studies of PhysAE (or any objective) on SLURM GPU clusters and on one machine.

    \b
    Run a study here:        hpo run --workers 2
    One worker (srun, etc.): hpo worker
    Effective settings:      hpo config
    """
    ctx.obj = {"debug": debug}


@cli.command("config")
@settings_options
@click.option("--record-job", "record_job", default=None, metavar="JOB_ID",
              help="append JOB_ID to the study's jobs file (what the sbatch scripts call) and print nothing else")
def config_cmd(record_job: str | None, **flags: Any) -> None:
    """Print the effective settings and where each value came from."""
    settings, config = load(flags)
    if record_job is not None:
        from hpo.scheduler import record_jobs

        record_jobs(settings.jobs_path, [record_job])
        return
    click.echo(f"# study config: {config.path} ({settings.sources['config']})")
    click.echo(f"# storage: {settings.storage_label}")
    click.echo(f"# from the environment: {settings.env_line() or 'nothing'}")
    width = max(len(f.env) for f in settings.fields())
    for heading, table in (("", FIELDS), (f"# the objective's own settings ({config.objective.partition(':')[0]}"
                                          ".SETTINGS; flag: --arg NAME=VALUE)", settings.objective_fields)):
        if heading and table:
            click.echo(heading)
        for f in table:
            value = settings.value(f)
            shown = "(unset)" if value is None else str(value)
            click.echo(f"{f.env:<{width}}  {shown:<24} {settings.sources[f.name]}")
    fixed = settings.fixed_params()
    click.echo(f"# fixed parameters: {fixed or 'none'}; sampled: "
               f"{', '.join(n for n in config.space if n not in fixed)}")


@cli.command("worker")
@settings_options
@config_mode_options
@click.option("--quiet", is_flag=True, help="log only warnings to stderr (the log file gets everything)")
def worker_cmd(quiet: bool, **flags: Any) -> int:
    """Run one worker in this process (what srun, an array task or submitit calls)."""
    from hpo.worker import run_worker

    settings, config = launch(flags, "hpo worker")
    reason, log = run_worker(settings, config, os.environ, echo_level="WARNING" if quiet else "INFO")
    if not quiet:
        click.echo(f"worker stopped: {reason.label}; log: {log}", err=True)
    # Every journal append is already fsynced and the logs are flushed below: skip the
    # interpreter's teardown, which takes ~1 s with torch loaded (measured) of a slot
    # the scheduler has given us.
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(reason.exit_code)


@cli.command("run")
@settings_options
@config_mode_options
@click.option("--workers", "-n", "n_workers", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="worker processes on this machine")
def run_cmd(n_workers: int, **flags: Any) -> int:
    """Run the study on this machine with N workers sharing the journal (resumes if it exists)."""
    from hpo.launch.local import run_local

    settings, config = launch(flags, "hpo run")
    return run_local(settings, config, n_workers, os.environ)


@cli.command("submit")
@settings_options
@config_mode_options
@click.option("--workers", "-n", "n_workers", type=click.IntRange(1, 10000), required=True,
              help="worker jobs (a job array, one GPU each)")
@click.option("--partition", default=None, help="SLURM partition")
@click.option("--time", "time_minutes", type=click.IntRange(1), default=60, show_default=True,
              help="time limit of each worker, minutes")
@click.option("--gpus-per-worker", type=click.IntRange(0), default=1, show_default=True)
@click.option("--cpus-per-worker", type=click.IntRange(1), default=4, show_default=True)
@click.option("--mem", default=None, help="memory per worker, e.g. 16G")
@click.option("--account", default=None)
@click.option("--qos", default=None)
@click.option("--constraint", default=None)
@click.option("--exclude", default=None, help="nodes to avoid")
@click.option("--wait", is_flag=True, help="wait for the study with a progress bar")
@click.option("--dry-run", is_flag=True, help="print what would be submitted; submit nothing")
@click.option("--local", is_flag=True, help="run the workers here through submitit's local executor")
def submit_cmd(n_workers: int, partition: str | None, time_minutes: int, gpus_per_worker: int,
               cpus_per_worker: int, mem: str | None, account: str | None, qos: str | None,
               constraint: str | None, exclude: str | None, wait: bool, dry_run: bool, local: bool,
               **flags: Any) -> int:
    """Submit N workers through submitit into the study (a second submit joins it)."""
    import json

    if dry_run:
        settings, config = load({k: v for k, v in flags.items() if k not in ("reuse_stored", "overwrite")})
    else:
        settings, config = launch(flags, "hpo submit")
    from hpo.launch.submit import SubmitOptions, describe, submit
    from hpo.launch.watch import follow_commands, wait_for_study
    from hpo.scheduler import record_jobs
    from hpo.storage import open_study

    opts = SubmitOptions(workers=n_workers, partition=partition, time_minutes=time_minutes,
                         gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, mem=mem,
                         account=account, qos=qos, constraint=constraint, exclude=exclude,
                         job_name=f"hpo-{settings.study_name}")
    if dry_run:
        click.echo(json.dumps({"study": settings.study_name, "storage": settings.storage_label,
                               "submit": describe(opts), "worker_env": settings.to_env()}, indent=2))
        return 0
    shared = open_study(settings, config)
    seed_offset = 10_000 * sum(1 for t in shared.trials() if t.state.is_finished())
    jobs = submit(opts, settings.to_env(), seed_offset, Path.cwd(), local)
    ids = [job.job_id for job in jobs]
    record_jobs(settings.jobs_path, ids)
    click.echo(f"submitted {len(ids)} worker(s) to study {settings.study_name!r}: {' '.join(ids)}")
    click.echo(follow_commands(settings))
    code = wait_for_study(shared, jobs) if wait else 0
    # submitit's LocalJob cleans up in __del__, which fails at interpreter shutdown
    # (module globals gone): let it run now.
    del jobs
    import gc

    gc.collect()
    return code


@cli.command("cancel")
@settings_options
def cancel_cmd(**flags: Any) -> int:
    """Cancel the study's SLURM jobs (those recorded by hpo submit and the sbatch scripts)."""
    from hpo.scheduler import active_jobs, cancel, recorded_jobs

    settings, _ = load(flags)
    jobs = active_jobs(recorded_jobs(settings.jobs_path))
    cancel(jobs)
    click.echo(f"cancelled {len(jobs)} job(s) of study {settings.study_name!r}: {' '.join(jobs) or '-'}")
    return 0


def _other_study_trials(settings: Settings, name: str) -> list[Any]:
    """Trials of another study in the same storage (read-only)."""
    import dataclasses

    import optuna

    from hpo.errors import UsageError
    from hpo.storage import open_settings_storage

    storage = open_settings_storage(dataclasses.replace(settings, study_name=name))
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        raise UsageError(f"--from-study {name!r}: no such study in {settings.storage_label if settings.storage else settings.journal_dir}; "
                         f"existing: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


@cli.command("enqueue")
@settings_options
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--from-study", default=None, help="take the best trials of this study (same storage)")
@click.option("--top", type=click.IntRange(1), default=5, show_default=True, help="how many, with --from-study")
def enqueue_cmd(file: str | None, from_study: str | None, top: int, **flags: Any) -> int:
    """Put parameter sets (a JSON/YAML FILE, or another study's top trials) first in line."""
    from hpo.errors import UsageError
    from hpo.storage import open_study
    from hpo.space import check_param_set
    from hpo.warmstart import read_param_sets, top_trials

    settings, config = load(flags)
    if (file is None) == (from_study is None):
        raise UsageError("give a FILE of parameter sets or --from-study NAME (one of them)")
    if file is not None:
        sets, origin = read_param_sets(Path(file)), f"file {file}"
    elif from_study is not None:
        best = top_trials(_other_study_trials(settings, from_study), top, config.directions[0] == "maximize")
        sets, origin = [dict(t.params) for t in best], f"study {from_study} (top {top})"
    checked = [check_param_set(config.space, params, f"{origin}[{i}]") for i, params in enumerate(sets)]
    shared = open_study(settings, config)
    for params in checked:
        shared.study.enqueue_trial(params, user_attrs={"origin": f"enqueued from {origin}"})
    click.echo(f"enqueued {len(checked)} trial(s) from {origin} into study {settings.study_name!r}")
    return 0


@cli.command("refine")
@settings_options
@click.option("--from", "source", required=True, help="the finished study to refine around")
@click.option("--top", type=click.IntRange(1), default=5, show_default=True, help="best trials the ranges cover")
@click.option("--factor", type=click.FloatRange(1.0, min_open=True), default=2.0, show_default=True,
              help="log-scale parameters: [min/factor, max*factor] of the best trials")
@click.option("--fraction", type=click.FloatRange(0.0, 1.0), default=0.1, show_default=True,
              help="other parameters: padded by this fraction of their range")
def refine_cmd(source: str, top: int, factor: float, fraction: float, **flags: Any) -> int:
    """Create a study narrowed around the best trials of another (CODES's fine stage)."""
    import dataclasses

    import yaml

    from hpo.config import load_config, parse_config
    from hpo.errors import UsageError
    from hpo.provenance import stored_config_path
    from hpo.storage import open_study
    from hpo.util import write_bytes_atomic
    from hpo.warmstart import dumps_summary, refine_space, refined_config, top_trials

    settings, config = load(flags)
    new_name = settings.study_name if settings.sources["study_name"] == "flag" or \
        settings.sources["study_name"].startswith("env:") else f"{source}_fine"
    if new_name == source:
        raise UsageError(f"STUDY_NAME={new_name!r} is the study refined from; give the new study another name")
    source_settings = dataclasses.replace(settings, study_name=source)
    stored = stored_config_path(source_settings)
    source_config = load_config(stored) if stored.is_file() else config
    best = top_trials(_other_study_trials(settings, source), top, source_config.directions[0] == "maximize")
    if not best:
        raise UsageError(f"--from {source!r}: the study has no complete single-objective trial to refine around")
    new_space, summary, budget = refine_space(source_config.space, [t.params for t in best], factor, fraction)
    new_settings = dataclasses.replace(settings, study_name=new_name, max_trials=budget)
    path = stored_config_path(new_settings)
    if path.exists():
        raise UsageError(f"study {new_name!r} already has a config ({path}); choose another STUDY_NAME")
    text = refined_config(source_config.text, new_name, new_space, budget, best[0].params)
    new_config = dataclasses.replace(parse_config(path, yaml.safe_load(text)), text=text)
    write_bytes_atomic(path, text.encode())
    write_bytes_atomic(path.with_name("fine_summary.yaml"), dumps_summary(source, summary, budget, best[0].params).encode())
    open_study(dataclasses.replace(new_settings, config=path), new_config)  # creates it, best trial enqueued first
    click.echo(f"study {new_name!r}: {len(summary)} parameter(s) narrowed around the top {len(best)} trial(s) of "
               f"{source!r}; budget {budget} trials; ranges in {path.with_name('fine_summary.yaml')}")
    click.echo(f"run it: hpo run --config {path}")
    return 0


@cli.command("doctor")
@settings_options
def doctor_cmd(**flags: Any) -> int:
    """Check the study's journal: damage, locks, filesystem. Exit 3 when damaged."""
    from hpo.journal.repair import doctor

    settings, _ = load(flags)
    report = doctor(settings.journal_path)
    click.echo(report.render())
    return 3 if report.damaged or report.optuna_error else 0


@cli.command("repair")
@settings_options
@click.option("--yes", is_flag=True, help="every worker of the study is stopped: repair now")
def repair_cmd(yes: bool, **flags: Any) -> int:
    """Rewrite a damaged journal loadable again (offline: stop every worker first).

    Bad records are quarantined beside the journal and a full backup is kept."""
    from hpo.journal.repair import doctor, repair
    from hpo.storage import make_lock

    settings, _ = load(flags)
    report = doctor(settings.journal_path)
    click.echo(report.render())
    if not report.damaged:
        return 0
    if not yes:
        click.echo("not repaired: stop every worker of the study, then rerun with --yes", err=True)
        return 2
    result = repair(settings.journal_path, make_lock(settings.journal_path))
    click.echo(result.render())
    return 0


@cli.command("reap")
@settings_options
def reap_cmd(**flags: Any) -> int:
    """Fail the study's lost trials (dead workers) now and enqueue their retries."""
    import socket

    from hpo.recovery import reap
    from hpo.storage import open_study

    settings, config = load(flags)
    reaped = reap(open_study(settings, config, create=False), socket.gethostname())
    click.echo(f"reaped {len(reaped)} lost trial(s): {' '.join(map(str, reaped)) or '-'}")
    return 0


from hpo.watch.commands import register as _register_watch  # noqa: E402 (it imports the helpers above)

_register_watch(cli)


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        code = cli.main(args=argv, prog_name="hpo", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = 130
    except HpoError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"hpo: error: {exc}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)

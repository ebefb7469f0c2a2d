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
from hpo.settings import FIELDS, Settings, config_path, resolve

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """One ``--flag`` per setting, from the same table as the environment variables."""
    for f in reversed(FIELDS):
        func = click.option(
            "--" + f.name.replace("_", "-"), f.name, default=None, metavar=f.env,
            help=f"{f.help} [env {f.env}; default {f.default}]",
        )(func)
    return click.option("--config", "config", default=None, type=click.Path(dir_okay=False),
                        help="study config YAML [env HPO_CONFIG; default configs/physae.yaml]")(func)


def load(flags: dict[str, Any]) -> tuple[Settings, Any]:
    """Resolve settings and the study config from flags, environment and file."""
    from hpo.config import load_config

    path, source = config_path(flags, os.environ)
    config = load_config(path)
    settings = resolve(flags, os.environ, config.settings, path, source)
    return settings, config


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
def config_cmd(**flags: Any) -> None:
    """Print the effective settings and where each value came from."""
    settings, config = load(flags)
    click.echo(f"# study config: {config.path} ({settings.sources['config']})")
    click.echo(f"# journal: {settings.journal_path}")
    width = max(len(f.env) for f in FIELDS)
    for f in FIELDS:
        value = getattr(settings, f.name)
        shown = "(unset)" if value is None else str(value)
        click.echo(f"{f.env:<{width}}  {shown:<24} {settings.sources[f.name]}")
    fixed = settings.fixed_params()
    click.echo(f"# fixed parameters: {fixed or 'none'}; sampled: "
               f"{', '.join(n for n in config.space if n not in fixed)}")


@cli.command("worker")
@settings_options
@click.option("--quiet", is_flag=True, help="log only warnings to stderr (the log file gets everything)")
def worker_cmd(quiet: bool, **flags: Any) -> int:
    """Run one worker in this process (what srun, an array task or submitit calls)."""
    import signal

    from hpo.logs import setup_worker_logging
    from hpo.worker import StopFlag, Worker, default_identity

    settings, config = load(flags)
    identity = default_identity(os.environ)
    worker = Worker(settings, config, identity)  # imports the objective: fails before writing
    log = setup_worker_logging(settings.log_dir, identity.worker_id, echo_level="WARNING" if quiet else "INFO")
    flag: StopFlag = worker.flag
    flag.install((signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2))
    try:
        reason = worker.run()
    finally:
        flag.uninstall()
    if not quiet:
        click.echo(f"worker stopped: {reason.label}; log: {log}", err=True)
    return reason.exit_code


@cli.command("run")
@settings_options
@click.option("--workers", "-n", "n_workers", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="worker processes on this machine")
def run_cmd(n_workers: int, **flags: Any) -> int:
    """Run the study on this machine with N workers sharing the journal (resumes if it exists)."""
    from hpo.launch.local import run_local

    settings, config = load(flags)
    config.load_objective()  # a bad objective fails here, before any worker starts
    return run_local(settings, config, n_workers, os.environ)


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

"""The ``hpo`` command line. The only place errors become exit statuses.

Exit statuses: 0 done; 2 bad input (nothing written); 3 storage; 4 scheduler;
75 a worker was preempted (requeue it); 130 interrupted.
Heavy imports (torch, optuna, submitit) happen inside commands, so ``hpo --help`` is fast.

Modules, one per command group: :mod:`hpo.cli.workers` (worker, run, submit, cancel),
:mod:`hpo.cli.study` (config, enqueue, refine, retrain), :mod:`hpo.cli.journal` (doctor,
repair, reap), :mod:`hpo.cli.watch` (status, logs, best, export, plot, report, dashboard);
:mod:`hpo.cli._options` holds the settings flags they share.
"""

from __future__ import annotations

import sys
import traceback

import click

from hpo import __version__
from hpo.cli import journal, study, watch, workers
from hpo.errors import HpoError

__all__ = ["cli", "main"]


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


for _group in (workers, study, journal, watch):
    for _command in _group.COMMANDS:
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Run ``hpo`` and exit with its status; ``HpoError`` prints one line (a traceback with --debug)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        code = cli.main(args=argv, prog_name="hpo", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.UsageError as exc:  # a flag's value or a command's usage: one line, as hpo's own errors
        where = f"; see `{exc.ctx.command_path} --help`" if exc.ctx is not None else ""
        click.echo(f"hpo: error: {exc.format_message().rstrip('.')}{where}", err=True)
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

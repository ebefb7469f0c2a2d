"""``hpo doctor``, ``repair``, ``reap``: the health of the study's journal and trials."""

from __future__ import annotations

from typing import Any

import click

from hpo.cli._options import load, settings_options


@click.command("doctor")
@settings_options
def doctor_cmd(**flags: Any) -> int:
    """Check the study's journal: damage, locks, filesystem. Exit 3 when damaged."""
    from hpo.journal.repair import doctor

    settings, _ = load(flags)
    report = doctor(settings.journal_path)
    click.echo(report.render())
    return 3 if report.damaged or report.optuna_error else 0


@click.command("repair")
@settings_options
@click.option("--yes", is_flag=True, help="every worker of the study is stopped: repair now")
def repair_cmd(yes: bool, **flags: Any) -> int:
    """Rewrite a damaged journal loadable again (offline: stop every worker first).

    Bad records are quarantined beside the journal and a full backup is kept."""
    from hpo.journal.repair import doctor, repair

    settings, _ = load(flags)
    report = doctor(settings.journal_path)
    click.echo(report.render())
    if not report.damaged:
        return 0
    if not yes:
        click.echo("not repaired: stop every worker of the study, then rerun with --yes", err=True)
        return 2
    result = repair(settings.journal_path)
    click.echo(result.render())
    return 0


@click.command("reap")
@settings_options
def reap_cmd(**flags: Any) -> int:
    """Fail the study's lost trials (dead workers) now and enqueue their retries."""
    from hpo.worker.recovery import reap_study

    reaped = reap_study(*load(flags))
    click.echo(f"reaped {len(reaped)} lost trial(s): {' '.join(map(str, reaped)) or '-'}")
    return 0


COMMANDS = (doctor_cmd, repair_cmd, reap_cmd)

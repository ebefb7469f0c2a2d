"""``hpo doctor``, ``repair``, ``reap``: the health of the study's journal and trials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hpo.cli._options import load, settings_options


@click.command("doctor")
@click.option("--prove-lock", is_flag=True,
              help="prove that record (fcntl) locks hold across nodes in JOURNAL_DIR and write its proof there: "
                   "run as `srun --nodes 2 --ntasks 2 hpo doctor --prove-lock`, or here with --via")
@click.option("--via", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="with --prove-lock: the same folder through another mount (another client of the filesystem)")
@settings_options
def doctor_cmd(prove_lock: bool, via: Path | None, **flags: Any) -> int:
    """Check the study's journal: damage, locks, filesystem. Exit 3 when damaged."""
    from hpo.journal.repair import doctor

    settings, _ = load(flags)
    if prove_lock:
        return _prove_lock(settings.journal_dir, via)
    report = doctor(settings.journal_path)
    click.echo(report.render())
    return 3 if report.damaged or report.optuna_error else 0


@click.command("repair")
@click.option("--yes", is_flag=True, help="every worker of the study is stopped: repair now")
@settings_options
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


def _prove_lock(journal_dir: Path, via: Path | None) -> int:
    from hpo.config.environment import environment
    from hpo.config.identity import SchedulerVars
    from hpo.journal.locking import PROOF_NAME, prove_lock

    scheduler = SchedulerVars.from_env(environment())
    under_srun = scheduler.procid is not None and scheduler.ntasks > 1 and via is None
    journal_dir.mkdir(parents=True, exist_ok=True)
    proof = prove_lock(journal_dir, via, int(scheduler.procid or 0) if under_srun else None, scheduler.ntasks,
                       f"{scheduler.job_id}-{scheduler.step_id}" if under_srun else None)
    if under_srun and scheduler.procid != "0":
        return 0  # side 0 prints the proof
    hosts = ", ".join(c["host"] for c in proof["clients"])
    click.echo(f"record locks are honoured in {journal_dir} ({proof['fstype']}, {len(proof['clients'])} client(s): "
               f"{hosts}): refused while held {proof['refused_while_held']}/{proof['rounds']}, handed over in "
               f"{proof['handoff_ms_median']:.1f} ms (max {proof['handoff_ms_max']:.1f} ms); proof written to "
               f"{journal_dir / PROOF_NAME}: new journals there take the record lock (HPO_JOURNAL_LOCK=auto)")
    return 0


COMMANDS = (doctor_cmd, repair_cmd, reap_cmd)

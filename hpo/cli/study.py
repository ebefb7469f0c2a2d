"""``hpo config``, ``enqueue``, ``refine``, ``retrain``: the study's settings, queue and
search space, and one more training of a trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hpo.cli._options import load, load_sweep, settings_options


@click.command("config")
@click.option("--record-job", "record_job", default=None, metavar="JOB_ID",
              help="append JOB_ID to the study's jobs file (what the sbatch scripts call) and print nothing else")
@settings_options
def config_cmd(record_job: str | None, **flags: Any) -> None:
    """Print the effective settings and where each value came from."""
    from hpo.config.describe import describe

    launch = load_sweep(flags)
    if record_job is not None:
        from hpo.launch.prepare import check_launch, record_launch_jobs

        check_launch(launch)  # a job its workers would refuse is not recorded as the study's
        record_launch_jobs(launch, [record_job])
        return
    click.echo("\n".join(describe(launch)))


@click.command("enqueue")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--from-study", default=None, help="take the best trials of this study (same storage)")
@click.option("--top", type=click.IntRange(1), default=5, show_default=True, help="how many, with --from-study")
@settings_options
def enqueue_cmd(file: str | None, from_study: str | None, top: int, **flags: Any) -> int:
    """Put parameter sets (a JSON/YAML FILE, or another study's top trials) first in line."""
    from hpo.launch.warmstart import enqueue

    settings, config = load(flags)
    count, origin = enqueue(settings, config, Path(file) if file else None, from_study, top)
    click.echo(f"enqueued {count} trial(s) from {origin} into study {settings.study_name!r}")
    return 0


@click.command("refine")
@click.option("--from", "source", required=True, help="the finished study to refine around")
@click.option("--top", type=click.IntRange(1), default=5, show_default=True, help="best trials the ranges cover")
@click.option("--factor", type=click.FloatRange(1.0, min_open=True), default=2.0, show_default=True,
              help="log-scale parameters: [min/factor, max*factor] of the best trials")
@click.option("--fraction", type=click.FloatRange(0.0, 1.0), default=0.1, show_default=True,
              help="other parameters: padded by this fraction of their range")
@settings_options
def refine_cmd(source: str, top: int, factor: float, fraction: float, **flags: Any) -> int:
    """Create a study narrowed around the best trials of another (a fine stage after a coarse one)."""
    from hpo.launch.warmstart import refine

    settings, config = load(flags)
    new = refine(settings, config, source, top, factor, fraction)
    click.echo(f"study {new.name!r}: {new.narrowed} parameter(s) narrowed around the top {new.around} trial(s) of "
               f"{source!r}; budget {new.budget} trials; ranges in {new.summary_path}")
    click.echo(f"run it: hpo run --config {new.config_path}")
    return 0


@click.command("retrain")
@click.option("--to", "to", default=None, metavar="NAME", help="the new study [default: <study>-retrain]")
@click.option("--trial", "number", type=click.IntRange(0), default=None,
              help="retrain this trial [default: the best one; with several objectives the knee]")
@settings_options
def retrain_cmd(to: str | None, number: int | None, **flags: Any) -> int:
    """Train the best trial's parameters once more, with its own budgets, as trial 0 of a new study.

    Budgets given here (--arg NAME=VALUE or their environment variables) override the trial's."""
    from hpo.config.environment import environment
    from hpo.launch.retrain import plan_retrain, run_retrain, start_retrain

    plan = plan_retrain(*load(flags), to, number)
    if plan.warning is not None:
        click.echo(f"warning: {plan.warning}", err=True)
    start_retrain(plan)
    click.echo(f"retraining trial {plan.trial.number} of {plan.source!r} (values {plan.trial.values}) as trial 0 "
               f"of {plan.settings.study_name!r}, budgets from {plan.budgets_from}")
    if plan.budgets:
        click.echo("budgets: " + ", ".join(plan.budgets))
    code, result = run_retrain(plan, environment())
    if result is not None:
        click.echo(f"{plan.settings.study_name!r} trial 0: {result.state} values {result.values}; run directory "
                   f"{result.user_attrs.get('run_dir')}")
    return code


COMMANDS = (config_cmd, enqueue_cmd, refine_cmd, retrain_cmd)

"""``hpo worker``, ``run``, ``submit``, ``cancel``: start the study's workers and stop them."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from hpo.cli._options import Command, load, load_sweep, settings_options
from hpo.config.environment import environment
from hpo.config.study import StudyConfig
from hpo.config.settings import Settings
from hpo.config.identity import new_launch_id


def config_mode_options(func: Command) -> Command:
    """--reuse-stored and --overwrite: what a launch does when the study ran another config."""
    func = click.option("--overwrite", is_flag=True,
                        help="the study was run with another config: store this one (the old one is backed up)")(func)
    return click.option("--reuse-stored", is_flag=True,
                        help="the study was run with another config: run with the stored one")(func)


def check_runnable(settings: Settings, config: StudyConfig) -> None:
    """What only importing and constructing can tell: fail before anything is written."""
    from hpo.errors import UsageError
    from hpo.study.algorithms import make_pruner, make_sampler

    config.load_objective()
    if config.setup is not None:
        config.function("setup")
    try:
        make_sampler(settings.sampler, None, config.sampler_args)
        make_pruner(settings.pruner, config.pruner_args)
    except UsageError as exc:
        raise UsageError(f"{config.path}: {exc}") from None


def launch(flags: dict[str, Any], launcher: str) -> tuple[Settings, StudyConfig]:
    """Settings and the config this launch runs with (see hpo.study.provenance), recorded."""
    import dataclasses

    from hpo.errors import UsageError
    from hpo.study.provenance import ConfigMode, check_unchanged, reconcile, record_launch

    reuse, overwrite = flags.pop("reuse_stored"), flags.pop("overwrite")
    if reuse and overwrite:
        raise UsageError("--reuse-stored and --overwrite exclude each other; give one")
    settings, config, studies = load_sweep(flags)
    check_runnable(settings, config)
    mode = ConfigMode.REUSE_STORED if reuse else ConfigMode.OVERWRITE if overwrite else ConfigMode.CHECK
    if mode is ConfigMode.CHECK:  # every study first: a refusal writes nothing for any of them
        for cell_settings, cell_config in studies:
            check_unchanged(cell_settings, cell_config)
    for number, (cell_settings, cell_config) in enumerate(studies):  # a sweep: every study it selects
        used = reconcile(cell_settings, cell_config, mode)
        record_launch(cell_settings, used, launcher)
        if number == 0 and used.path != config.path:  # the stored copy, loaded whole (a sweep too)
            settings, config = dataclasses.replace(settings, config=used.path), used
    return settings, config


@click.command("worker")
@settings_options
@config_mode_options
@click.option("--quiet", is_flag=True, help="log only warnings to stderr (the log file gets everything)")
def worker_cmd(quiet: bool, **flags: Any) -> int:
    """Run one worker in this process (what srun, an array task or submitit calls)."""
    from hpo.worker.loop import run_worker

    settings, config = launch(flags, "hpo worker")
    reason, log = run_worker(settings, config, environment(), echo_level="WARNING" if quiet else "INFO")
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


@click.command("run")
@settings_options
@config_mode_options
@click.option("--workers", "-n", "n_workers", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="worker processes on this machine")
def run_cmd(n_workers: int, **flags: Any) -> int:
    """Run the study on this machine with N workers sharing the journal (resumes if it exists)."""
    from hpo.launch.local import run_local

    settings, config = launch(flags, "hpo run")
    return run_local(settings, config, n_workers, environment())


@click.command("submit")
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
        settings, config, _ = load_sweep({k: v for k, v in flags.items() if k not in ("reuse_stored", "overwrite")})
    else:
        settings, config = launch(flags, "hpo submit")
    from hpo.launch.submit import SubmitOptions, describe, submit
    from hpo.launch.progress import follow_commands, wait_for_study
    from hpo.study.shared import open_study
    from hpo.system.slurm import record_jobs

    opts = SubmitOptions(workers=n_workers, partition=partition, time_minutes=time_minutes,
                         gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, mem=mem,
                         account=account, qos=qos, constraint=constraint, exclude=exclude,
                         job_name="hpo-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in settings.study_name))
    if dry_run:
        click.echo(json.dumps({"study": settings.study_name, "storage": settings.storage_label,
                               "submit": describe(opts), "worker_env": settings.to_env()}, indent=2))
        return 0
    from hpo.config.study import expand

    cells = expand(settings, config)
    studies = [open_study(s, c) for s, c in cells]
    jobs = submit(opts, settings, new_launch_id(), Path.cwd(), local)
    ids = [job.job_id for job in jobs]
    for cell_settings, _ in cells:
        record_jobs(cell_settings.jobs_path, ids)
    names = ", ".join(repr(s.study_name) for s, _ in cells)
    click.echo(f"submitted {len(ids)} worker(s) to {'studies' if len(cells) > 1 else 'study'} {names}: "
               f"{' '.join(ids)}")
    if len(cells) > 1:
        click.echo("every worker works on the studies in order, moving to the next one when a study's "
                   "MAX_TRIALS are finished (or while all its remaining trials are running)")
    click.echo(follow_commands(cells[0][0]))
    code = wait_for_study(studies, jobs) if wait else 0
    # submitit's LocalJob cleans up in __del__, which fails at interpreter shutdown
    # (module globals gone): let it run now.
    del jobs
    import gc

    gc.collect()
    return code


@click.command("cancel")
@settings_options
def cancel_cmd(**flags: Any) -> int:
    """Cancel the study's SLURM jobs (those recorded by hpo submit and the sbatch scripts)."""
    from hpo.system.slurm import active_jobs, cancel, recorded_jobs

    settings, _ = load(flags)
    jobs = active_jobs(recorded_jobs(settings.jobs_path))
    cancel(jobs)
    click.echo(f"cancelled {len(jobs)} job(s) of study {settings.study_name!r}: {' '.join(jobs) or '-'}")
    return 0




COMMANDS = (worker_cmd, run_cmd, submit_cmd, cancel_cmd)

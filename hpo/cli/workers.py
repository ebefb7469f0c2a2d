"""``hpo worker``, ``run``, ``submit``, ``cancel``: start the study's workers and stop them."""

from __future__ import annotations

import json
from typing import Any, Callable

import click

from hpo.cli._options import Command, load, load_sweep, settings_options
from hpo.config.environment import environment
from hpo.config.study import Launch
from hpo.errors import UsageError


def config_mode_options(func: Command) -> Command:
    """--reuse-stored and --overwrite: what a launch does when the study ran another config."""
    func = click.option("--overwrite", is_flag=True,
                        help="the study was run with another config: store this one (the old one is backed up)")(func)
    return click.option("--reuse-stored", is_flag=True,
                        help="the study was run with another config: run with the stored one")(func)


def prepared(flags: dict[str, Any], launcher: str, trains_here: bool = True,
             check: Callable[[Launch], object] = lambda launch: None) -> Launch:
    """The launch these flags select, checked and recorded (see hpo.launch.prepare);
    ``trains_here``: its device is checked against this machine's GPUs; ``check``: the
    launcher's own, before anything is written."""
    from hpo.launch.prepare import config_mode, prepare

    mode = config_mode(flags.pop("reuse_stored"), flags.pop("overwrite"))
    launch = load_sweep(flags)
    check(launch)
    return prepare(launch, mode, launcher, environment() if trains_here else None)


@click.command("worker")
@config_mode_options
@click.option("--quiet", is_flag=True, help="log only warnings to stderr (the log file gets everything)")
@settings_options
def worker_cmd(quiet: bool, **flags: Any) -> int:
    """Run one worker in this process (what srun, an array task or submitit calls)."""
    import logging
    import os
    import sys

    from hpo.launch.results import export_at_end
    from hpo.worker.loop import run_worker

    launch, env = prepared(flags, "hpo worker"), environment()
    reason, log = run_worker(launch, env, echo_level="WARNING" if quiet else "INFO",
                             at_end=lambda settings, shared: export_at_end(settings, shared, env))
    if not quiet:
        click.echo(f"worker stopped: {reason.label}; log: {log}", err=True)
    # Every journal append is already fsynced and the logs are flushed below: skip the
    # interpreter's teardown, which takes ~1 s with torch loaded (measured) of a slot
    # the scheduler has given us.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(reason.exit_code)


@click.command("run")
@config_mode_options
@click.option("--workers", "-n", "n_workers", type=click.IntRange(1, 1024), default=None,
              help="worker processes on this machine [default: 1; with --workers-per-gpu K, K on every GPU]")
@click.option("--workers-per-gpu", "per_gpu", type=click.IntRange(1, 64), default=None, metavar="K",
              help="K workers share each GPU (small models leave a GPU idle between their kernels)")
@settings_options
def run_cmd(n_workers: int | None, per_gpu: int | None, **flags: Any) -> int:
    """Run the study on this machine with N workers sharing the journal (resumes if it exists)."""
    from hpo.launch.local import plan_gpus, run_local, visible_gpus

    env = environment()
    plans: list[tuple[list[str], str | None]] = []
    launch = prepared(flags, "hpo run", check=lambda launch: plans.append(
        plan_gpus(visible_gpus(launch.settings, env), n_workers, per_gpu)))  # exit 2 before anything is written
    plan, shared_gpus = plans[0]
    return run_local(launch, plan, env, shared_gpus)


@click.command("submit")
@config_mode_options
@click.option("--workers", "-n", "n_workers", type=click.IntRange(1, 10000), required=True,
              help="workers (a job array, one GPU a job)")
@click.option("--workers-per-gpu", "per_gpu", type=click.IntRange(1, 64), default=1, show_default=True, metavar="K",
              help="K workers in each job, sharing its GPU (small models leave a GPU idle between their kernels)")
@click.option("--mps", is_flag=True,
              help="run each job's workers under CUDA MPS (SLURM; with --workers-per-gpu: their kernels side by side)")
@click.option("--partition", default=None, help="SLURM partition")
@click.option("--time", "time_minutes", type=click.IntRange(1), default=60, show_default=True,
              help="time limit of each worker, minutes")
@click.option("--gpus-per-worker", type=click.IntRange(0, 1), default=1, show_default=True,
              help="0 (CPU) or 1: a worker trains on one GPU")
@click.option("--cpus-per-worker", type=click.IntRange(1), default=4, show_default=True)
@click.option("--mem", default=None, help="memory per worker, e.g. 16G")
@click.option("--account", default=None)
@click.option("--qos", default=None)
@click.option("--constraint", default=None)
@click.option("--exclude", default=None, help="nodes to avoid")
@click.option("--wait", is_flag=True, help="wait for the study with a progress bar")
@click.option("--dry-run", is_flag=True, help="print what would be submitted; submit nothing")
@click.option("--local", is_flag=True, help="run the workers here through submitit's local executor")
@settings_options
def submit_cmd(n_workers: int, per_gpu: int, mps: bool, partition: str | None, time_minutes: int, gpus_per_worker: int,
               cpus_per_worker: int, mem: str | None, account: str | None, qos: str | None,
               constraint: str | None, exclude: str | None, wait: bool, dry_run: bool, local: bool,
               **flags: Any) -> int:
    """Submit N workers through submitit into the study (a second submit joins it)."""
    import gc

    from hpo.launch.progress import follow_commands, wait_for_study
    from hpo.launch.submit import SubmitOptions, check_options, describe, job_env, job_name, submit_study

    check_options(n_workers, gpus_per_worker, per_gpu, mps)
    if mps and local:
        raise UsageError("--mps with --local: MPS is started by each SLURM job's script, which --local has not; "
                         "valid: leave --mps out here (start nvidia-cuda-mps-control -d yourself), or submit to SLURM")
    if dry_run:
        launch = load_sweep({k: v for k, v in flags.items() if k not in ("reuse_stored", "overwrite")})
    else:
        launch = prepared(flags, "hpo submit", trains_here=bool(local))
    opts = SubmitOptions(workers=n_workers, partition=partition, time_minutes=time_minutes,
                         gpus_per_worker=gpus_per_worker, workers_per_gpu=per_gpu, cpus_per_worker=cpus_per_worker,
                         mem=mem,
                         account=account, qos=qos, constraint=constraint, exclude=exclude,
                         job_name=job_name(launch.label), mps=mps)
    if dry_run:
        storages = [s.storage_label for s, _ in launch.studies]
        click.echo(json.dumps({"study": launch.label, "storage": storages[0] if len(storages) == 1 else storages,
                               "submit": describe(opts), "worker_env": job_env(launch, "<launch id>", 0,
                                                                              opts.cpus_per_worker)}, indent=2))
        return 0
    submitted = submit_study(launch, opts, local)
    names = ", ".join(repr(s.study_name) for s, _ in launch.studies)
    shared = f" in {len(submitted.jobs)} job(s), {per_gpu} to a GPU" if per_gpu > 1 else ""
    click.echo(f"submitted {n_workers} worker(s){shared} to {'studies' if len(launch.studies) > 1 else 'study'} "
               f"{names}: {' '.join(submitted.job_ids)}")
    if len(launch.studies) > 1:
        click.echo("every worker works on the studies in order, moving to the next one when a study's "
                   "MAX_TRIALS are finished (or while all its remaining trials are running)")
    click.echo(follow_commands(launch.settings))
    code = wait_for_study(submitted.studies, submitted.jobs) if wait else 0
    # submitit's LocalJob cleans up in __del__, which fails at interpreter shutdown
    # (module globals gone): let it run now.
    del submitted
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

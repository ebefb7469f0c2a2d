"""What every launch does before a worker starts: check what only importing and building
can tell (the objective, its setup, the sampler and pruner: bad input writes nothing),
compare each study's config with the one it stored, and record the launch
(:mod:`hpo.study.provenance`)."""

from __future__ import annotations

from typing import Mapping

from hpo.config.identity import SchedulerVars
from hpo.config.settings import Settings
from hpo.config.study import Launch, StudyConfig
from hpo.errors import UsageError
from hpo.journal.locking import lock_kind
from hpo.config.search import SAMPLERS
from hpo.study import budgets
from hpo.study.algorithms import make_pruner, make_sampler
from hpo.study.shared import check_directions
from hpo.study.storage import stored_study
from hpo.study.provenance import ConfigMode, check_unchanged, reconcile, record_launch
from hpo.system.slurm import record_jobs
from hpo.worker.device import resolve_device
from hpo.worker.trackers import check_installed
from hpo.worker.setup import check_setup_inputs


def config_mode(reuse_stored: bool, overwrite: bool) -> ConfigMode:
    """What a launch does when a study ran another config (``--reuse-stored``, ``--overwrite``)."""
    if reuse_stored and overwrite:
        raise UsageError("--reuse-stored and --overwrite exclude each other; give one")
    return ConfigMode.REUSE_STORED if reuse_stored else ConfigMode.OVERWRITE if overwrite else ConfigMode.CHECK


def check_runnable(settings: Settings, config: StudyConfig) -> None:
    """Import the objective (and setup, and check the options it declares), build the
    sampler and pruner, and find the trackers' libraries: fail before anything is written."""
    check_installed(settings.tracker_names)
    config.load_objective()
    if config.setup is not None:
        config.function("setup")
        check_setup_inputs(settings, config)
    if SAMPLERS[settings.sampler].one_objective and len(config.directions) > 1:
        several = ", ".join(n for n, a in SAMPLERS.items() if not a.one_objective)
        raise UsageError(f"OPTUNA_SAMPLER={settings.sampler} ({settings.sources.get('sampler', 'default')}) searches "
                         f"one objective; {config.path} has {len(config.directions)}; valid: {several}")
    try:
        make_sampler(settings.sampler, None, config.sampler_args)
        make_pruner(settings.pruner, config.pruner_args)
    except UsageError as exc:
        raise UsageError(f"{config.path}: {exc}") from None


def prepare(launch: Launch, mode: ConfigMode, launcher: str, env: Mapping[str, str] | None = None) -> Launch:
    """The launch as it will run, recorded in each study's provenance.

    Every study's stored config is checked before anything is written (a refusal of one
    study of a sweep writes nothing for any); then each study's config is reconciled
    (stored the first time; with ``--reuse-stored`` the stored one is what runs) and
    the launch recorded."""
    check_launch(launch)
    if env is not None and launch.settings.device.startswith("cuda"):
        # ``env``: the launch trains here (hpo worker, hpo run; not hpo submit's login node):
        # a GPU it was not given is refused (exit 2) before anything is written.
        task = SchedulerVars.from_env(env)
        resolve_device(launch.settings.device, task.visible_gpus, task.local_id)
    if mode is ConfigMode.CHECK:
        for settings, config in launch.studies:
            check_unchanged(settings, config)
    used = [reconcile(settings, config, mode) for settings, config in launch.studies]
    for (settings, _), config in zip(launch.studies, used):
        record_launch(settings, config, launcher)
    if used[0].path == launch.config.path:
        return launch
    return launch.with_config(used[0])  # --reuse-stored: the stored copy (a sweep's whole config) runs


def check_launch(launch: Launch) -> None:
    """What refuses a launch before anything is written, for every launcher (the sbatch
    scripts' ``hpo config --record-job`` too): the objective, setup, sampler, pruner and
    trackers, one lock per journal, the budgets the study's trials ran with."""
    check_runnable(launch.settings, launch.config)
    for settings, config in launch.studies:
        if not settings.storage:
            lock_kind(settings.journal_path, settings.journal_lock)  # one journal, one lock: refused here
        held = stored_study(settings.spec)
        if held is not None:  # an existing study: its directions, and the budgets its trials ran with
            check_directions(settings.spec, config, held.directions)
            budgets.check(settings.spec, held.system_attrs)


def record_launch_jobs(launch: Launch, job_ids: list[str]) -> None:
    """Append the jobs to the jobs file of every study of the launch (a sweep's job works on
    each); ``hpo cancel`` and ``hpo status`` read them there."""
    for settings, _ in launch.studies:
        record_jobs(settings.jobs_path, job_ids)

"""Experiment trackers: each trial one run in TensorBoard, MLflow or W&B, through their own libraries.

Chosen with one setting, ``HPO_TRACKERS=tensorboard,mlflow,wandb`` (any of them; unset:
none), installed with ``pip install 'hpo[trackers]'``. A run holds the trial's parameters,
its study, number, worker and host, every ``ctx.report`` value (``intermediate_value``) and
every ``ctx.log_metrics`` value at its step, and its end: its values (``value``, or
``values_0``...; the study's metric names when it has them) and state. The runs of one study
are grouped:

- **TensorBoard**: event files in ``$TRIAL_OUTPUT/$STUDY_NAME/tensorboard/trial_<n>/``
  (``tensorboard --logdir optuna_runs/<study>/tensorboard``), through
  ``torch.utils.tensorboard``; the parameters and end as its HParams.
- **MLflow**: the study is an experiment of that name, each trial a run ``trial_<n>``.
  ``MLFLOW_TRACKING_URI`` when set (a server, a database), else the file store
  ``$TRIAL_OUTPUT/mlruns`` (a folder per run: safe for many writers on a shared
  filesystem; MLflow 3 keeps it behind ``MLFLOW_ALLOW_FILE_STORE``, which hpo sets).
- **W&B**: offline (compute nodes have no internet; ``WANDB_MODE`` decides otherwise),
  project ``WANDB_PROJECT`` or the study, group the study, runs in
  ``$TRIAL_OUTPUT/$STUDY_NAME/wandb/offline-run-*``: ``wandb sync`` them from a login node.

A tracker is never the trial's business: one that raises (a full disk, a server that went
away) logs one WARNING naming it and the error, and is left out for the rest of that trial,
which goes on and ends as it would have.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from hpo.config.environment import environment, export
from hpo.config.settings import TRACKER_NAMES
from hpo.errors import UsageError

if TYPE_CHECKING:
    from hpo.config.settings import Settings

_logger = logging.getLogger(__name__)

INTERMEDIATE = "intermediate_value"  # the metric name of ctx.report's values


def check_installed(names: Sequence[str]) -> None:
    """Refuse (exit 2, before anything is written) a tracker whose library is missing."""
    for name in names:
        module = KINDS[name][0]
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"HPO_TRACKERS={','.join(names)}: {name} needs the {module} package, which "
                             "is not installed; valid: pip install 'hpo[trackers]', or leave it out")


@dataclass(frozen=True)
class RunInfo:
    """What a tracker's run is about: one trial."""

    study: str
    number: int
    worker: str
    host: str
    params: Mapping[str, Any]
    study_dir: Path  # $TRIAL_OUTPUT/$STUDY_NAME
    trial_output: Path
    value_names: tuple[str, ...]  # "value", or one per objective

    @property
    def tags(self) -> dict[str, str]:
        return {"study": self.study, "trial": str(self.number), "worker": self.worker, "host": self.host}


class Tracker(Protocol):
    def start(self, run: RunInfo) -> None: ...

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def end(self, state: str, values: Mapping[str, float]) -> None: ...


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics`` (a tracker's scalars); the rest stays in metrics.jsonl."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoard:
    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        self.writer = SummaryWriter(log_dir=str(run.study_dir / "tensorboard" / f"trial_{run.number}"))
        self.last_step = 0

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.last_step = max(self.last_step, step)

    def end(self, state: str, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, self.last_step)
        hparams = {**{k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self.run.params.items()},
                   **self.run.tags, "state": state}
        # run_name ".": the HParams go into the trial's own folder, not a timestamped one below it.
        self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in values.items()}, run_name=".")
        self.writer.close()


class MLflow:
    def start(self, run: RunInfo) -> None:
        from mlflow import MlflowClient

        env = environment()
        if "MLFLOW_ALLOW_FILE_STORE" not in env:
            export({"MLFLOW_ALLOW_FILE_STORE": "true"})  # the default store below: see the docstring
        uri = env.get("MLFLOW_TRACKING_URI") or (run.trial_output.resolve() / "mlruns").as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self._experiment(run)
        tags = {f"hpo.{k}": v for k, v in run.tags.items()}
        self.run_id = self.client.create_run(experiment, run_name=f"trial_{run.number}", tags=tags).info.run_id
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in run.params.items()])

    def _experiment(self, run: RunInfo) -> str:
        """The study's experiment, made once: under hpo's lock, as two workers of two nodes may
        start their first trial at once (MLflow's file store does not refuse a second one)."""
        from hpo.system.lock import make_lock

        found = self.client.get_experiment_by_name(run.study)
        if found is not None:
            return str(found.experiment_id)
        locks = run.trial_output / "mlruns-locks"
        locks.mkdir(parents=True, exist_ok=True)
        with make_lock(locks / run.study):
            found = self.client.get_experiment_by_name(run.study)
            return str(found.experiment_id if found is not None else self.client.create_experiment(run.study))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def end(self, state: str, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key, value)
        self.client.set_tag(self.run_id, "hpo.state", state)
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")
        self.client.set_terminated(self.run_id, status)


class WandB:
    def start(self, run: RunInfo) -> None:
        import wandb

        env = environment()
        # Compute nodes have no internet: offline, unless WANDB_MODE says otherwise (wandb sync later).
        export({k: v for k, v in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true")) if k not in env})
        folder = run.study_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=env.get("WANDB_PROJECT") or run.study, group=run.study, name=f"trial_{run.number}",
            dir=str(folder), config={**run.params, "hpo": run.tags}, job_type="trial", reinit="finish_previous",
            settings=wandb.Settings(console="off"),  # the worker's own log keeps stdout and stderr
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def end(self, state: str, values: Mapping[str, float]) -> None:
        self.run.summary.update({**values, "state": state})
        self.run.finish(exit_code=0 if state == "COMPLETE" else 1)


# HPO_TRACKERS's names (hpo.config.settings.TRACKER_NAMES, which parses them) -> the package each
# needs (missing: exit 2 at launch) and its tracker.
KINDS: Mapping[str, tuple[str, Callable[[], Tracker]]] = {
    "tensorboard": ("tensorboard", TensorBoard), "mlflow": ("mlflow", MLflow), "wandb": ("wandb", WandB)}
assert tuple(KINDS) == TRACKER_NAMES, "one list of trackers: add a name to both"


class TrialRuns:
    """A trial's run in every tracker chosen. A tracker that raises is logged once and left
    out for the rest of the trial: the trial never fails for it."""

    def __init__(self, names: Sequence[str], run: RunInfo) -> None:
        self.info = run
        self.active: dict[str, Tracker] = {}
        for name in names:
            tracker = KINDS[name][1]()
            if self._call(name, lambda: tracker.start(run)):
                self.active[name] = tracker

    def _call(self, name: str, action: Callable[[], None]) -> bool:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a tracker's failure is never the trial's
            _logger.warning("trial %d: tracker %s failed (%s: %s); the trial goes on without it",
                            self.info.number, name, type(exc).__name__, exc)
            self.active.pop(name, None)
            return False
        return True

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        numbers = _numbers(metrics)
        if numbers:
            for name, tracker in list(self.active.items()):
                self._call(name, lambda: tracker.log(step, numbers))

    def end(self, state: str, values: Sequence[float] | None) -> None:
        final = _numbers(dict(zip(self.info.value_names, values or ())))
        for name, tracker in list(self.active.items()):
            self._call(name, lambda: tracker.end(state, final))
        self.active.clear()


def open_runs(settings: "Settings", run: RunInfo) -> TrialRuns | None:
    """The trial's tracker runs (``HPO_TRACKERS``), or None when no tracker is chosen."""
    return TrialRuns(settings.tracker_names, run) if settings.tracker_names else None


def value_names(directions: int, metric_names: Sequence[str] | None) -> tuple[str, ...]:
    """What a trial's final values are called in a tracker: the study's metric names, else
    ``value`` (one objective) or ``values_0``... (Optuna's export naming)."""
    if metric_names and len(metric_names) == directions:
        return tuple(metric_names)
    return ("value",) if directions == 1 else tuple(f"values_{i}" for i in range(directions))


"""Stale-trial recovery for journal storage: heartbeats and the reaper.

Optuna's journal storage has no heartbeat (``fail_stale_trials`` only works on
RDB storage), so a worker killed by SIGKILL, the OOM killer or a node failure
leaves its trial RUNNING forever. Here a running trial's worker writes the time
every ``HPO_HEARTBEAT_SECONDS`` into its own small file beside the journal,
``$JOURNAL_DIR/<study>.heartbeats/<worker id>.json`` (``{"trial_id", "time"}``,
replaced atomically), not into the journal: a beat in the journal was a record,
a lock and an fsync for every running trial every period (6 a minute per trial at
the default), the most frequent record a study had. Any worker (at start and
between trials) or ``hpo reap`` fails RUNNING trials whose last beat (that file,
when it names the trial; an ``hpo:heartbeat`` trial attribute, which older hpo
versions wrote; else the trial's start) is older than ``HPO_STALE_SECONDS``, or
whose process is gone on this host, with reason ``worker lost``, and enqueues a
retry with the same parameters at most ``HPO_MAX_RETRIES`` times along the lineage.
An RDB storage keeps heartbeats in its own table (``record_heartbeat``).

Clock assumption: heartbeats carry the writer's wall clock and are compared
with the reaper's; nodes are assumed NTP-synchronised to well under
``HPO_STALE_SECONDS`` (default 60 s, against typical skews of milliseconds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, AbstractSet, Any, Callable, Iterator, Mapping

from optuna.trial import FrozenTrial, TrialState

from hpo.storage import stale_trial_ids, trial_id
from hpo.util import process_alive, write_bytes_atomic

if TYPE_CHECKING:
    from hpo.storage import SharedStudy

_logger = logging.getLogger(__name__)

HEARTBEAT_ATTR = "hpo:heartbeat"  # a trial system attribute: where hpo before 0.3 kept beats (still read)
BEATS_SUFFIX = ".heartbeats"
WORKER_LOST = "worker lost"

Beats = Mapping[str, tuple[int, float]]  # worker id -> (trial id, time of its last beat)


def beats_dir(journal_dir: Path, study_name: str) -> Path:
    """``$JOURNAL_DIR/<study>.heartbeats/``: one file per worker, on the journal's filesystem."""
    return journal_dir / f"{study_name}{BEATS_SUFFIX}"


def write_beat(directory: Path, worker_id: str, trial_id: int, now: float) -> None:
    """Replace the worker's beat file (temp file + rename: a reader sees a whole one)."""
    data = json.dumps({"trial_id": trial_id, "time": now}).encode()
    try:
        write_bytes_atomic(directory / f"{worker_id}.json", data, durable=False)
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(directory / f"{worker_id}.json", data, durable=False)


def read_beats(directory: Path) -> dict[str, tuple[int, float]]:
    """Every worker's last beat; a file being replaced or unreadable is skipped (its trial
    falls back to its start or journal attribute: a late verdict, never a wrong one)."""
    out: dict[str, tuple[int, float]] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            beat = json.loads((directory / name).read_bytes())
            out[name[:-5]] = (int(beat["trial_id"]), float(beat["time"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def file_beat(beats: Beats | None, user_attrs: Mapping[str, Any], trial_id: int) -> float | None:
    """The time of the trial's last beat in its worker's file, if that file names this trial."""
    held = beats.get(str(user_attrs.get("worker"))) if beats else None
    return held[1] if held is not None and held[0] == trial_id else None


class Heartbeat:
    """One background thread per worker that keeps the running trial's heartbeat fresh.

    Safe because the journal storage serialises access with its own thread
    lock; signal handlers never touch the storage (they only set a flag).
    The trial's ``datetime_start`` counts as its first heartbeat.

    Like a lock holder's lease, the worker judges its own trial by its own clock:
    once no beat has been written for half ``HPO_STALE_SECONDS`` (the process was
    stopped, swapped out, or the filesystem paused) the trial may have been reaped,
    and :meth:`suspect` says so. Then the trial's state is read on a fresh view of
    the journal (a read barrier on a lagging filesystem) before anything more is
    written for it: no record for a reaped trial, even on GlusterFS's default mode.
    """

    def __init__(self, shared: "SharedStudy", period: float, stale_seconds: float, worker_id: str = "") -> None:
        self._shared, self._period, self._stale = shared, period, stale_seconds
        self._worker_id = worker_id or f"pid{os.getpid()}"
        self._dir = beats_dir(shared.settings.journal_dir, shared.settings.study_name)
        self._trial_id: int | None = None
        self._on_taken: Callable[[], None] = lambda: None
        self._confirmed_at = time.monotonic()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpo-heartbeat", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watching(self, trial_id: int, started: float,
                 on_taken: Callable[[], None] = lambda: None) -> Iterator[None]:
        """Keep ``trial_id`` (created at wall time ``started``) alive; call ``on_taken``
        (once) if the journal shows that another worker ended it, e.g. after this process
        was stopped past the stale age. The trial's start counts as its first beat."""
        self._confirmed_at = time.monotonic() - max(0.0, time.time() - started)
        self._trial_id, self._on_taken = trial_id, on_taken
        try:
            yield
        finally:
            self._trial_id = None

    def suspect(self) -> bool:
        """Whether the trial's last beat is older than half the stale age, by our clock."""
        return time.monotonic() - self._confirmed_at > self._stale / 2

    def _run(self) -> None:
        while not self._wake.wait(self._period):
            trial_id = self._trial_id
            if trial_id is None:
                continue
            try:
                if self._shared.is_finished(trial_id, fresh=self.suspect()):
                    # Reaped while we were stalled: beat no more (a heartbeat would be a
                    # record Optuna's replay ignores); the runner stops the trial.
                    self._trial_id = None
                    self._on_taken()
                    continue
                if self._shared.is_journal:
                    write_beat(self._dir, self._worker_id, trial_id, time.time())
                else:  # an RDB storage keeps heartbeats in its own table
                    self._shared.storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
                self._confirmed_at = time.monotonic()
            except Exception:  # the trial was finished meanwhile: nothing to keep alive
                _logger.debug("heartbeat of trial id %d not written", trial_id, exc_info=True)


def last_beat(system_attrs: Mapping[str, Any], started: float | None, beat: float | None = None) -> float | None:
    """When a running trial last showed life: the latest of its worker's beat file
    (``beat``) and its ``hpo:heartbeat`` attribute, else its start."""
    attr = system_attrs.get(HEARTBEAT_ATTR)
    known = [b for b in (beat, float(attr) if isinstance(attr, (int, float)) else None) if b is not None]
    return max(known) if known else started


def is_lost(user_attrs: Mapping[str, Any], system_attrs: Mapping[str, Any], trial_id: int,
            started: float | None, now: float, stale_seconds: float, host: str | None = None,
            live_jobs: set[str] | None = None, stale_ids: AbstractSet[int] | None = None,
            beats: Beats | None = None) -> bool:
    """The one rule for "this RUNNING trial's worker is gone" (the reaper acts on it,
    ``hpo status`` shows it as a zombie): a dead pid on this ``host`` (None: not
    checked), a SLURM job no longer in the queue (``live_jobs``: None when unknown), or
    a stale heartbeat: an RDB storage's own verdict (``stale_ids``), else the last beat
    (``beats``: :func:`read_beats`; see :func:`last_beat`) older than ``stale_seconds``."""
    pid = user_attrs.get("pid")
    if host is not None and user_attrs.get("host") == host and isinstance(pid, int) and pid != os.getpid():
        if not process_alive(pid):
            return True
    job = user_attrs.get("slurm_job_id")
    if live_jobs is not None and job is not None and str(job) not in live_jobs:
        return True
    if stale_ids is not None:
        return trial_id in stale_ids
    beat = last_beat(system_attrs, started, file_beat(beats, user_attrs, trial_id))
    return now - (now if beat is None else beat) > stale_seconds


def _frozen_is_lost(trial: FrozenTrial, now: float, stale_seconds: float, host: str,
                    live_jobs: set[str] | None, stale_ids: set[int] | None, beats: Beats | None) -> bool:
    started = trial.datetime_start.timestamp() if trial.datetime_start else None
    return is_lost(trial.user_attrs, trial.system_attrs, trial_id(trial), started, now, stale_seconds, host,
                   live_jobs, stale_ids, beats)


def _live_slurm_jobs() -> set[str] | None:
    """Ids of the jobs in the queue, or None when squeue cannot tell."""
    from hpo.errors import SchedulerError
    from hpo.scheduler import queued_job_ids

    try:
        return queued_job_ids()
    except SchedulerError as exc:
        _logger.debug("squeue unavailable, judging trials by heartbeat only: %s", exc)
        return None


def reap(shared: "SharedStudy", host: str) -> list[int]:
    """Fail lost trials and enqueue their retries. Returns the reaped trial numbers."""
    settings = shared.settings
    now = time.time()
    running = shared.index.running()
    live = _live_slurm_jobs() if any("slurm_job_id" in t.user_attrs for t in running) else None
    stale_ids = stale_trial_ids(shared.storage, shared.study_id)
    beats = read_beats(beats_dir(settings.journal_dir, settings.study_name)) if shared.is_journal else None
    candidates = [t for t in running if _frozen_is_lost(t, now, settings.stale_seconds, host, live, stale_ids, beats)]
    if not candidates:
        return []
    reaped: list[int] = []
    with shared.slots():  # one reaper at a time: no trial is retried twice
        shared.sync_view()  # a trial another node just finished or reaped is not reaped again
        still_running = {t.number for t in shared.index.running()}
        for trial in candidates:
            if trial.number not in still_running:
                continue
            shared.set_user_attrs(trial_id(trial), {"reason": WORKER_LOST})
            shared.study.tell(trial.number, state=TrialState.FAIL)
            reaped.append(trial.number)
            _logger.warning("trial %d: worker %s lost; marked FAIL", trial.number, trial.user_attrs.get("worker"))
            enqueue_retry(shared, trial, WORKER_LOST)
    return reaped


def enqueue_retry(shared: "SharedStudy", trial: FrozenTrial, reason: str) -> bool:
    """Re-run ``trial``'s parameters, up to ``HPO_MAX_RETRIES`` along its lineage."""
    count = int(trial.user_attrs.get("retry_count", 0))
    if count >= shared.settings.max_retries:
        _logger.warning("trial %d: %s, not retried (%d retries already)", trial.number, reason, count)
        return False
    origin = trial.user_attrs.get("retry_origin", trial.number)
    shared.study.enqueue_trial(
        dict(trial.params),
        user_attrs={
            "retry_of": trial.number,
            "retry_origin": origin,
            "retry_count": count + 1,
            "retry_reason": reason,
            "resume_from": trial.user_attrs.get("run_dir"),
        },
    )
    _logger.info("trial %d: %s; retry %d/%d enqueued", trial.number, reason, count + 1, shared.settings.max_retries)
    return True

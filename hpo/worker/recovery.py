"""Stale-trial recovery for journal storage: heartbeats and the reaper.

Optuna's journal storage has no heartbeat (``fail_stale_trials`` only works on
RDB storage), so a worker killed by SIGKILL, the OOM killer or a node failure
leaves its trial RUNNING forever. Here a running trial's worker writes the time
every ``HPO_HEARTBEAT_SECONDS`` into the trial's own small file beside the journal,
``$JOURNAL_DIR/<study>.heartbeats/trial_<id>.json`` (``{"time", "worker"}``, replaced
atomically, removed when the trial ends or is reaped), not into the journal: a beat in the journal was a record,
a lock and an fsync for every running trial every period (6 a minute per trial at
the default), the most frequent record a study had. Any worker (at start and
between trials) or ``hpo reap`` fails RUNNING trials whose last beat (the latest of
that file, an ``hpo:heartbeat`` trial attribute, which older hpo versions wrote, and
the trial's start; a file that exists but cannot be read now defers the verdict) is older than ``HPO_STALE_SECONDS``, or
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
from typing import TYPE_CHECKING, AbstractSet, Any, Callable, Iterable, Iterator, Mapping

from optuna.trial import FrozenTrial, TrialState

from hpo._optuna import stale_trial_ids, trial_id
from hpo.system.files import make_dirs, write_bytes_atomic
from hpo.system.processes import process_alive
from hpo.worker.outcome import OUT_OF_MEMORY

if TYPE_CHECKING:
    from hpo.config.settings import Settings
    from hpo.config.study import StudyConfig
    from hpo.study.shared import SharedStudy

_logger = logging.getLogger(__name__)

HEARTBEAT_ATTR = "hpo:heartbeat"  # a trial system attribute: where hpo before 0.3 kept beats (still read)
WORKER_LOST = "worker lost"

Beats = Mapping[int, "float | None"]  # trial id -> its last beat (None: a file there, unreadable now)


def _beat_path(directory: Path, trial_id: int) -> Path:
    return directory / f"trial_{trial_id}.json"


def write_beat(directory: Path, trial_id: int, worker_id: str, now: float) -> None:
    """Replace the trial's beat file (temp file + rename: a reader sees a whole one).
    Named after the trial, not the worker: two workers that share an id (``hpo run``
    inside one SLURM allocation) never overwrite each other's beats."""
    data = json.dumps({"time": now, "worker": worker_id}).encode()
    try:
        write_bytes_atomic(_beat_path(directory, trial_id), data, durable=False)
    except FileNotFoundError:
        make_dirs(directory)
        write_bytes_atomic(_beat_path(directory, trial_id), data, durable=False)


def drop_beat(directory: Path, trial_id: int) -> None:
    """The trial ended: its beat file goes (the folder holds the running trials only)."""
    with contextlib.suppress(OSError):
        _beat_path(directory, trial_id).unlink()


def read_beats(directory: Path, trial_ids: "Iterable[int]") -> dict[int, float | None]:
    """The last beat of each of these (running) trials that has a file.

    A file whose content cannot be parsed (a client's cache serving a replaced file empty,
    write-behind not flushed yet) counts from its modification time, which the rename set;
    a file that cannot even be looked at now (ESTALE on NFS, three tries) maps to None: its
    trial is not judged this round, a late verdict rather than a wrong one."""
    out: dict[int, float | None] = {}
    for trial_id in trial_ids:
        path = _beat_path(directory, trial_id)
        for attempt in range(3):
            try:
                out[trial_id] = float(json.loads(path.read_bytes())["time"])
                break
            except FileNotFoundError:
                out.pop(trial_id, None)
                break
            except (ValueError, KeyError, TypeError):
                with contextlib.suppress(OSError):
                    out[trial_id] = path.stat().st_mtime
                    break
            except OSError:
                pass
            out[trial_id] = None
            time.sleep(0.01 * (attempt + 1))
    return out


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

    def __init__(self, shared: "SharedStudy", period: float, stale_seconds: float, worker_id: str = "",
                 hang_seconds: float | None = None, on_hung: Callable[[int, float], None] | None = None) -> None:
        self._shared, self._period, self._stale = shared, period, stale_seconds
        self._worker_id = worker_id or f"pid{os.getpid()}"
        self._dir = shared.spec.beats_dir
        self._trial_id: int | None = None
        self._on_taken: Callable[[], None] = lambda: None
        self._confirmed_at = time.monotonic()
        # HPO_HANG_SECONDS: a trial whose objective showed life once (a report, a check, a
        # metrics line) and then none for this long is hung (a GPU stuck in a kernel). Not
        # judged before its first sign (a long setup), nor while hpo itself works in a hook.
        self._hang, self._on_hung = hang_seconds, on_hung or exit_hung
        self._progress_at: float | None = None
        self._busy = 0
        self._wake = threading.Event()
        # Held while a beat file is written or dropped: without it a beat written just
        # after the trial ended (the thread read the id before) left a file behind.
        self._beat_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="hpo-heartbeat", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watching(self, trial_id: int, started: float,
                 on_taken: Callable[[], None] = lambda: None) -> Iterator[None]:
        """Keep ``trial_id`` (created at wall time ``started``) alive; call ``on_taken``
        (once) if the journal shows that another worker ended it, e.g. after this process
        was stopped past the stale age. The trial's start counts as its first beat."""
        self._confirmed_at = time.monotonic() - max(0.0, time.time() - started)
        self._progress_at, self._busy = None, 0
        self._trial_id, self._on_taken = trial_id, on_taken
        try:
            yield
        finally:
            self._trial_id = None  # first: no new beat starts (the thread checks it again under the lock)
            with self._beat_lock:
                if self._shared.is_journal:
                    drop_beat(self._dir, trial_id)

    def close(self) -> None:
        """Stop the thread (the study is done for this worker); it ends within one period."""
        self._wake.set()

    def progress(self) -> None:
        """The trial's objective showed life (a report, a check, a metrics line): not hung."""
        self._progress_at = time.monotonic()

    @contextlib.contextmanager
    def hpo_working(self) -> Iterator[None]:
        """hpo's own work inside a hook (a flush that waits for the journal lock): not the trial's silence."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self.progress()

    def suspect(self) -> bool:
        """Whether the trial's last beat is older than half the stale age, by our clock."""
        return time.monotonic() - self._confirmed_at > self._stale / 2

    def _run(self) -> None:
        while not self._wake.wait(self._period):
            trial_id = self._trial_id
            if trial_id is None:
                continue
            last = self._progress_at
            quiet = 0.0 if last is None or self._busy else time.monotonic() - last
            if self._hang is not None and quiet > self._hang:
                self._on_hung(trial_id, quiet)  # exits the process; beats no more (a test's hook may return)
                return
            try:
                if self._shared.is_finished(trial_id, fresh=self.suspect()):
                    # Reaped while we were stalled: beat no more (a heartbeat would be a
                    # record Optuna's replay ignores); the runner stops the trial.
                    self._trial_id = None
                    self._on_taken()
                    continue
                if self._shared.is_journal:
                    with self._beat_lock:
                        if self._trial_id != trial_id:
                            continue  # the trial ended while we asked: its file is gone for good
                        write_beat(self._dir, trial_id, self._worker_id, time.time())
                else:  # an RDB storage keeps heartbeats in its own table
                    self._shared.storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
                self._confirmed_at = time.monotonic()
            except Exception:  # the trial was finished meanwhile: nothing to keep alive
                _logger.debug("heartbeat of trial id %d not written", trial_id, exc_info=True)


def exit_hung(trial_id: int, quiet: float) -> None:
    """A trial hung (HPO_HANG_SECONDS): say so and end the process at once with
    :attr:`Stop.HUNG`'s status. The main thread is stuck (a CUDA call that never returns
    cannot be interrupted), so nothing of the trial is written: with its process gone, its
    trial is reaped ``worker lost`` and retried by another worker (at once on this host),
    and SLURM gets the GPU back instead of holding it to the job's time limit."""
    from hpo.worker.stop import Stop

    _logger.error("trial id %d made no progress for %.0f s (no report, check_stop or metrics line; "
                  "HPO_HANG_SECONDS): treating this worker as hung (a GPU stuck in a kernel?); it exits %d and its "
                  "trial is reaped and retried elsewhere", trial_id, quiet, Stop.HUNG.exit_code)
    logging.shutdown()
    os._exit(Stop.HUNG.exit_code)


def last_beat(system_attrs: Mapping[str, Any], started: float | None, beat: float | None = None) -> float | None:
    """When a running trial last showed life: the latest of its beat file (``beat``; never
    before the trial's start: a file left by an older journal's trial of the same id) and
    its ``hpo:heartbeat`` attribute (older hpo versions); with neither, its start."""
    attr = system_attrs.get(HEARTBEAT_ATTR)
    if beat is not None and started is not None:
        beat = max(beat, started)
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
    if beats is not None and trial_id in beats and beats[trial_id] is None:
        return False  # its beat file is there but unreadable just now: judged next round
    beat = last_beat(system_attrs, started, beats.get(trial_id) if beats else None)
    return now - (now if beat is None else beat) > stale_seconds


def _frozen_is_lost(trial: FrozenTrial, now: float, stale_seconds: float, host: str,
                    live_jobs: set[str] | None, stale_ids: set[int] | None, beats: Beats | None) -> bool:
    started = trial.datetime_start.timestamp() if trial.datetime_start else None
    return is_lost(trial.user_attrs, trial.system_attrs, trial_id(trial), started, now, stale_seconds, host,
                   live_jobs, stale_ids, beats)


def _live_slurm_jobs() -> set[str] | None:
    """Ids of the jobs in the queue, or None when squeue cannot tell."""
    from hpo.errors import SchedulerError
    from hpo.system.slurm import queued_job_ids

    try:
        return queued_job_ids()
    except SchedulerError as exc:
        _logger.debug("squeue unavailable, judging trials by heartbeat only: %s", exc)
        return None


def reap(shared: "SharedStudy", host: str, now: float | None = None) -> list[int]:
    """Fail lost trials and enqueue their retries (``now``: the wall time to judge beats by,
    this host's clock by default). Returns the reaped trial numbers."""
    spec = shared.spec
    now = time.time() if now is None else now
    running = shared.index.running()
    live = _live_slurm_jobs() if any("slurm_job_id" in t.user_attrs for t in running) else None
    stale_ids = stale_trial_ids(shared.storage, shared.study_id)
    folder = spec.beats_dir
    beats = read_beats(folder, [trial_id(t) for t in running]) if shared.is_journal else None
    candidates = [t for t in running if _frozen_is_lost(t, now, spec.stale_seconds, host, live, stale_ids, beats)]
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
            drop_beat(folder, trial_id(trial))
            reaped.append(trial.number)
            _logger.warning("trial %d: worker %s lost; marked FAIL", trial.number, trial.user_attrs.get("worker"))
            enqueue_retry(shared, trial, WORKER_LOST)
    return reaped


def reap_study(settings: "Settings", config: "StudyConfig") -> list[int]:
    """``hpo reap``: open the (existing) study and reap its lost trials now, judged from this host."""
    import socket

    from hpo.study.shared import open_study

    return reap(open_study(settings.spec, config, create=False, trains=False), socket.gethostname())


# A user attribute a retry carries along its lineage once one of it ran out of GPU memory
# that other processes held: the one retry hpo.worker.outcome gives such a trial is spent.
OOM_RETRIED = "oom_retried"


def enqueue_retry(shared: "SharedStudy", trial: FrozenTrial, reason: str) -> bool:
    """Re-run ``trial``'s parameters, up to ``HPO_MAX_RETRIES`` along its lineage."""
    count = int(trial.user_attrs.get("retry_count", 0))
    if count >= shared.spec.max_retries:
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
            **({OOM_RETRIED: True} if trial.user_attrs.get(OOM_RETRIED) or reason.startswith(OUT_OF_MEMORY) else {}),
        },
    )
    _logger.info("trial %d: %s; retry %d/%d enqueued", trial.number, reason, count + 1, shared.spec.max_retries)
    return True

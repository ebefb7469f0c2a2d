"""The reaper and heartbeats (hpo/worker/recovery.py), in process: beat files, the one
"is this trial lost" rule, the reaper on a real journal in ``tmp_path`` and its retries.
A bug here fails a live trial (lost work, a trial run twice) or leaves a dead one RUNNING
forever (a slot of MAX_TRIALS held by nobody). Clocks and the process table are faked."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable

import pytest
from optuna.trial import TrialState

from hpo.config.settings import StudySpec
from hpo.config.study import StudyConfig
from hpo.errors import SchedulerError
from hpo.study.shared import SharedStudy, open_study
from hpo.worker import recovery
from hpo.worker.recovery import (
    HEARTBEAT_ATTR,
    WORKER_LOST,
    Heartbeat,
    drop_beat,
    enqueue_retry,
    is_lost,
    last_beat,
    read_beats,
    reap,
    write_beat,
)

HOST = "node-a"
ME = os.getpid()


# -- beat files --------------------------------------------------------------------------------
def test_a_beat_is_a_small_json_file_named_after_the_trial(tmp_path: Path) -> None:
    folder = tmp_path / "s.heartbeats"
    write_beat(folder, 7, "job_3", 1234.5)  # the folder is made on the first beat
    assert json.loads((folder / "trial_7.json").read_text()) == {"time": 1234.5, "worker": "job_3"}
    write_beat(folder, 7, "job_3", 1240.0)
    assert read_beats(folder, [7, 8]) == {7: 1240.0}
    assert sorted(p.name for p in folder.iterdir()) == ["trial_7.json"]  # no temp file left
    drop_beat(folder, 7)
    drop_beat(folder, 7)  # already gone: fine
    assert read_beats(folder, [7]) == {}


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"worker": "w"}', b'{"time": null}', b'[1]',
                                     b'{"time": "soon"}'])
def test_a_beat_file_that_cannot_be_parsed_counts_from_its_mtime(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "trial_3.json").write_bytes(content)
    os.utime(tmp_path / "trial_3.json", (1000.0, 1500.0))
    assert read_beats(tmp_path, [3]) == {3: 1500.0}


def test_a_beat_file_that_cannot_be_read_defers_the_verdict(tmp_path: Path) -> None:
    (tmp_path / "trial_3.json").mkdir()  # reading it raises an OSError that is not "missing"
    assert read_beats(tmp_path, [3]) == {3: None}


def test_a_beat_file_that_is_readable_on_the_second_look_counts(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    write_beat(tmp_path, 3, "w", 42.0)
    real, tries = Path.read_bytes, []

    def read_bytes(self: Path) -> bytes:
        tries.append(self.name)
        if len(tries) < 3:
            raise OSError(116, "Stale file handle")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert read_beats(tmp_path, [3]) == {3: 42.0} and len(tries) == 3


def test_a_beat_file_that_stays_unreadable_is_tried_three_times(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    write_beat(tmp_path, 3, "w", 42.0)
    tries: list[str] = []
    sleeps: list[float] = []

    def read_bytes(self: Path) -> bytes:
        tries.append(self.name)
        raise OSError(116, "Stale file handle")

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(recovery, "time", types.SimpleNamespace(sleep=sleeps.append))
    assert read_beats(tmp_path, [3]) == {3: None}
    assert len(tries) == 3 and sleeps == pytest.approx([0.01, 0.02, 0.03])


def test_an_unparsable_beat_file_that_vanishes_meanwhile_is_no_beat(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "trial_3.json").write_bytes(b"")
    monkeypatch.setattr(Path, "stat", lambda self, **kw: (_ for _ in ()).throw(FileNotFoundError(2, "gone")))
    real = Path.read_bytes
    calls: list[int] = []

    def read_bytes(self: Path) -> bytes:
        calls.append(1)
        if len(calls) > 1:
            raise FileNotFoundError(2, "gone")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert read_beats(tmp_path, [3]) == {}


# -- last beat and the one rule ----------------------------------------------------------------
@pytest.mark.parametrize(("attrs", "started", "beat", "last"), [
    ({}, 100.0, None, 100.0),
    ({}, None, None, None),
    ({}, 100.0, 150.0, 150.0),
    ({}, 100.0, 50.0, 100.0),  # a file left by an older journal's trial of the same id
    ({}, None, 50.0, 50.0),
    ({HEARTBEAT_ATTR: 170}, 100.0, 150.0, 170.0),
    ({HEARTBEAT_ATTR: 120.5}, 100.0, 150.0, 150.0),
    ({HEARTBEAT_ATTR: 120.5}, 100.0, None, 120.5),
    ({HEARTBEAT_ATTR: "170"}, 100.0, None, 100.0),  # not a number: ignored
])
def test_the_last_beat_is_the_latest_sign_of_life(attrs: dict[str, Any], started: float | None, beat: float | None,
                                                  last: float | None) -> None:
    assert last_beat(attrs, started, beat) == last


def lost(user: dict[str, Any] | None = None, system: dict[str, Any] | None = None, *, started: float | None = 1000.0,
         now: float = 1030.0, stale: float = 60.0, host: str | None = HOST, live_jobs: set[str] | None = None,
         stale_ids: set[int] | None = None, beats: dict[int, float | None] | None = None) -> bool:
    return is_lost(user or {}, system or {}, 5, started, now, stale, host, live_jobs, stale_ids, beats)


@pytest.fixture
def alive(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """A fake process table of this host: the pids in the set are alive."""
    pids: set[int] = set()
    monkeypatch.setattr(recovery, "process_alive", lambda pid, start=None: pid in pids)
    return pids


def test_a_fresh_trial_is_not_lost(alive: set[int]) -> None:
    assert not lost()
    assert not lost(now=1060.0)  # exactly the stale age: not yet
    assert lost(now=1060.5)


def test_a_trial_without_any_time_is_never_judged_stale(alive: set[int]) -> None:
    assert not lost(started=None, now=1e12)


def test_a_dead_pid_on_this_host_is_lost_at_once(alive: set[int]) -> None:
    alive.add(4242)
    assert not lost({"host": HOST, "pid": 4242})
    alive.clear()
    assert lost({"host": HOST, "pid": 4242})


@pytest.mark.parametrize(("user", "host"), [
    ({"host": "node-b", "pid": 4242}, HOST),  # another host's pid says nothing here
    ({"host": HOST, "pid": 4242}, None),  # pids not checked
    ({"host": HOST, "pid": "4242"}, HOST),  # not a pid
    ({"host": HOST, "pid": ME}, HOST),  # our own trial: we are alive
])
def test_a_pid_is_judged_only_on_its_own_host(alive: set[int], user: dict[str, Any], host: str | None) -> None:
    assert not lost(user, host=host)


def test_our_own_pid_is_never_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    monkeypatch.setattr(recovery, "process_alive", lambda pid, start=None: asked.append(pid) or False)
    assert not lost({"host": HOST, "pid": ME})
    assert asked == []


def test_a_job_gone_from_the_queue_is_lost(alive: set[int]) -> None:
    assert lost({"slurm_job_id": 77}, live_jobs={"76"})
    assert not lost({"slurm_job_id": 77}, live_jobs={"77"})
    assert not lost({"slurm_job_id": "77"}, live_jobs=None)  # squeue could not tell
    assert not lost({}, live_jobs=set())  # not a SLURM trial


def test_an_rdb_storage_judges_its_own_heartbeats(alive: set[int]) -> None:
    assert lost(stale_ids={5}, now=1001.0)
    assert not lost(stale_ids={6}, now=1e9)
    assert not lost(stale_ids=set(), now=1e9)


def test_beat_files_keep_a_trial_alive(alive: set[int]) -> None:
    assert not lost(beats={5: 1050.0}, now=1100.0)
    assert lost(beats={5: 1030.0}, now=1100.0)
    assert lost(beats={6: 1099.0}, now=1100.0)  # another trial's beat says nothing of this one
    assert lost(beats={}, now=1100.0)


def test_an_unreadable_beat_file_defers_the_verdict(alive: set[int]) -> None:
    assert not lost(beats={5: None}, now=1e9)
    assert lost({"host": HOST, "pid": 4242}, beats={5: None}, now=1e9)  # a dead pid still is


def test_an_old_heartbeat_attribute_still_counts(alive: set[int]) -> None:
    assert not lost(system={HEARTBEAT_ATTR: 1080.0}, now=1100.0)


# -- the slurm queue ---------------------------------------------------------------------------
def test_the_queue_is_asked_of_squeue(monkeypatch: pytest.MonkeyPatch) -> None:
    import hpo.system.slurm as slurm

    monkeypatch.setattr(slurm, "queued_job_ids", lambda: {"1", "2"})
    assert recovery._live_slurm_jobs() == {"1", "2"}

    def fail() -> set[str]:
        raise SchedulerError("squeue: not found")

    monkeypatch.setattr(slurm, "queued_job_ids", fail)
    assert recovery._live_slurm_jobs() is None


# -- the reaper on a real journal --------------------------------------------------------------
def spec(tmp_path: Path, max_retries: int = 2, stale: float = 60.0, journal_lock: str = "auto") -> StudySpec:
    return StudySpec("s", tmp_path / "journal", "", 10, "finished", 1.0, stale, max_retries, "random", "none",
                     journal_lock)


def open_(tmp_path: Path, **kw: Any) -> SharedStudy:
    config = StudyConfig(path=tmp_path / "c.yaml", objective="m:f", directions=("minimize",), space={},
                         enqueue=(), settings={})
    return open_study(spec(tmp_path, **kw), config, seed=0)


def start(shared: SharedStudy, **user_attrs: Any) -> int:
    """A RUNNING trial with a parameter and these user attributes; returns its id."""
    trial = shared.study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    for key, value in user_attrs.items():
        trial.set_user_attr(key, value)
    return trial._trial_id


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Move the reaper's wall clock ``seconds`` past now (nothing else's)."""
    def move(seconds: float) -> None:
        monkeypatch.setattr(recovery, "time", types.SimpleNamespace(time=lambda: time.time() + seconds,
                                                                    sleep=time.sleep, monotonic=time.monotonic))
    return move


def test_a_stale_trial_is_failed_and_retried_with_its_parameters(tmp_path: Path, alive: set[int],
                                                                 later: Callable[[float], None],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hpo")
    shared = open_(tmp_path)
    tid = start(shared, worker="w9", run_dir="/runs/t0")
    write_beat(shared.spec.beats_dir, tid, "w9", time.time())
    later(30)
    assert reap(shared, HOST) == []
    later(120)
    assert reap(shared, HOST) == [0]
    dead, retry = shared.trials()
    assert dead.state == TrialState.FAIL and dead.user_attrs["reason"] == WORKER_LOST
    assert retry.state == TrialState.WAITING and retry.system_attrs["fixed_params"] == dead.params
    assert retry.user_attrs == {"retry_of": 0, "retry_origin": 0, "retry_count": 1, "retry_reason": WORKER_LOST,
                                "resume_from": "/runs/t0"}
    assert not (shared.spec.beats_dir / f"trial_{tid}.json").exists()
    assert "trial 0: worker w9 lost; marked FAIL" in caplog.messages
    assert "trial 0: worker lost; retry 1/2 enqueued" in caplog.messages
    assert reap(shared, HOST) == []  # nothing is reaped twice


def test_a_fresh_beat_file_keeps_an_old_trial_alive(tmp_path: Path, alive: set[int],
                                                    later: Callable[[float], None]) -> None:
    shared = open_(tmp_path)
    tid = start(shared)
    write_beat(shared.spec.beats_dir, tid, "w", time.time() + 100)
    later(120)
    assert reap(shared, HOST) == []
    assert shared.trials()[0].state == TrialState.RUNNING


def test_a_dead_worker_on_this_host_is_reaped_at_once(tmp_path: Path, alive: set[int]) -> None:
    shared = open_(tmp_path)
    start(shared, host=HOST, pid=4242)
    alive.add(4242)
    assert reap(shared, HOST) == []
    assert reap(shared, "node-b") == []
    alive.clear()
    assert reap(shared, HOST) == [0]


def test_a_slurm_trial_is_reaped_when_its_job_left_the_queue(tmp_path: Path, alive: set[int],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    shared = open_(tmp_path)
    start(shared, slurm_job_id="11")
    start(shared)
    queue: list[set[str] | None] = [{"11"}, {"12"}]
    asked: list[int] = []
    monkeypatch.setattr(recovery, "_live_slurm_jobs", lambda: asked.append(1) or queue.pop(0))
    assert reap(shared, HOST) == []
    assert reap(shared, HOST) == [0]
    assert len(asked) == 2
    assert reap(shared, HOST) == [] and len(asked) == 2  # no SLURM trial running: squeue is not asked


def test_a_trial_finished_before_the_reaper_holds_the_lock_is_left_alone(tmp_path: Path, alive: set[int],
                                                                         later: Callable[[float], None],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    shared = open_(tmp_path)
    start(shared)
    start(shared)
    later(120)
    real = shared.slots

    def slots() -> Any:
        other = open_(tmp_path)  # its worker tells just before we take the slot lock
        other.study.tell(0, 1.0)
        return real()

    monkeypatch.setattr(shared, "slots", slots)
    assert reap(shared, HOST) == [1]
    assert [t.state for t in shared.trials()] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]


def test_the_reaper_holds_the_slot_lock_and_reads_a_fresh_view(tmp_path: Path, alive: set[int],
                                                               later: Callable[[float], None],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    shared = open_(tmp_path, journal_lock="file")  # the lock file: a hold is seen from outside
    start(shared)
    later(120)
    lock_file = Path(shared.slots_lock.lock_file)
    held: list[bool] = []
    monkeypatch.setattr(shared, "sync_view", lambda: held.append(lock_file.exists()) or False)
    assert reap(shared, HOST) == [0]
    assert held == [True] and not lock_file.exists()


@pytest.mark.filterwarnings("ignore:Argument ``heartbeat_interval``", "ignore:Heartbeat of storage is supposed")
def test_an_rdb_storage_reaps_what_its_heartbeat_table_calls_stale(tmp_path: Path, alive: set[int],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An RDB storage judges its own heartbeats (Optuna's table): its verdict is the one used."""
    config = StudyConfig(path=tmp_path / "c.yaml", objective="m:f", directions=("minimize",), space={},
                         enqueue=(), settings={})
    rdb = StudySpec("s", tmp_path / "journal", f"sqlite:///{tmp_path / 'db.sqlite'}", 10, "finished", 1.0, 60.0, 2,
                    "random", "none")
    shared = open_study(rdb, config, seed=0)
    fresh, stale = start(shared), start(shared)
    sid = shared.study_id
    monkeypatch.setattr(shared.storage, "_get_stale_trial_ids", lambda study_id: [stale] if study_id == sid else [])
    assert reap(shared, HOST) == [1]
    assert [t.state for t in shared.trials()] == [TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING]
    assert fresh != stale


# -- retries along a lineage -------------------------------------------------------------------
def test_retries_keep_the_origin_and_stop_at_max_retries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hpo")
    shared = open_(tmp_path, max_retries=2)
    start(shared)  # trial 0, the origin
    start(shared, retry_origin=0, retry_count=1, run_dir="/runs/t1")
    start(shared, retry_origin=0, retry_count=2)
    _, first, second = shared.trials()
    assert enqueue_retry(shared, first, "preempted") is True
    assert shared.trials()[3].user_attrs == {"retry_of": 1, "retry_origin": 0, "retry_count": 2,
                                             "retry_reason": "preempted", "resume_from": "/runs/t1"}
    assert enqueue_retry(shared, second, "preempted") is False
    assert len(shared.trials()) == 4
    assert "trial 2: preempted, not retried (2 retries already)" in caplog.messages


def test_no_retry_at_all_when_max_retries_is_zero(tmp_path: Path) -> None:
    shared = open_(tmp_path, max_retries=0)
    start(shared)
    assert enqueue_retry(shared, shared.trials()[0], WORKER_LOST) is False and len(shared.trials()) == 1


def test_a_first_retry_names_its_trial_as_the_origin(tmp_path: Path) -> None:
    shared = open_(tmp_path, max_retries=1)
    start(shared)
    start(shared)
    assert enqueue_retry(shared, shared.trials()[1], WORKER_LOST) is True
    assert shared.trials()[2].user_attrs["retry_origin"] == 1 and shared.trials()[2].user_attrs["retry_count"] == 1


# -- the heartbeat thread ----------------------------------------------------------------------
def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_a_running_trial_is_kept_alive_by_its_beat_file(tmp_path: Path) -> None:
    shared = open_(tmp_path)
    tid = start(shared)
    beat = Heartbeat(shared, period=0.005, stale_seconds=60.0, worker_id="w1")
    path = shared.spec.beats_dir / f"trial_{tid}.json"
    try:
        with beat.watching(tid, time.time()):
            wait_until(path.exists)
            first = read_beats(shared.spec.beats_dir, [tid])[tid]
            wait_until(lambda: read_beats(shared.spec.beats_dir, [tid])[tid] != first)
            assert json.loads(path.read_text())["worker"] == "w1"
            assert not beat.suspect()
        assert not path.exists()
    finally:
        beat.close()


def test_a_worker_without_an_id_beats_as_its_pid(tmp_path: Path) -> None:
    shared = open_(tmp_path)
    tid = start(shared)
    beat = Heartbeat(shared, period=0.005, stale_seconds=60.0)
    path = shared.spec.beats_dir / f"trial_{tid}.json"
    try:
        with beat.watching(tid, time.time()):
            wait_until(path.exists)
            assert json.loads(path.read_text())["worker"] == f"pid{ME}"
    finally:
        beat.close()


def test_a_reaped_trial_calls_on_taken_once_and_beats_no_more(tmp_path: Path) -> None:
    shared = open_(tmp_path)
    tid = start(shared)
    taken: list[int] = []
    beat = Heartbeat(shared, period=0.005, stale_seconds=60.0, worker_id="w")
    path = shared.spec.beats_dir / f"trial_{tid}.json"
    try:
        with beat.watching(tid, time.time(), on_taken=lambda: taken.append(1)):
            wait_until(path.exists)
            open_(tmp_path).study.tell(0, state=TrialState.FAIL)  # the reaper of another worker
            drop_beat(shared.spec.beats_dir, tid)
            wait_until(lambda: taken == [1])
            time.sleep(0.05)
            assert taken == [1] and not path.exists()
    finally:
        beat.close()


def test_a_trial_that_started_long_ago_is_suspect_until_a_beat_lands(tmp_path: Path) -> None:
    """The trial's start is its first beat: a worker that resumes a trial older than half
    the stale age checks the journal on a fresh view before it writes again."""
    shared = open_(tmp_path)
    tid = start(shared)
    beat = Heartbeat(shared, period=3600.0, stale_seconds=10.0, worker_id="w")
    try:
        assert not beat.suspect()
        with beat.watching(tid, time.time() - 6):
            assert beat.suspect()
        with beat.watching(tid, time.time() - 4):
            assert not beat.suspect()
        with beat.watching(tid, time.time() + 100):  # a start in the future is not a beat to come
            assert not beat.suspect()
    finally:
        beat.close()


def test_a_suspect_trial_is_read_on_a_fresh_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = open_(tmp_path)
    tid = start(shared)
    fresh: list[bool] = []
    real = shared.is_finished
    monkeypatch.setattr(shared, "is_finished", lambda t, fresh_=False, **kw: fresh.append(kw.get("fresh", fresh_))
                        or real(t))
    beat = Heartbeat(shared, period=0.005, stale_seconds=1.0, worker_id="w")
    try:
        with beat.watching(tid, time.time() - 0.9):
            wait_until(lambda: len(fresh) >= 1)
        assert fresh[0] is True
        assert fresh[-1] is False or len(fresh) == 1  # after a beat the trial is no longer suspect
    finally:
        beat.close()


def test_close_ends_the_thread(tmp_path: Path) -> None:
    shared = open_(tmp_path)
    beat = Heartbeat(shared, period=0.005, stale_seconds=60.0)
    beat.close()
    beat._thread.join(2)
    assert not beat._thread.is_alive()


class FakeRdb:
    """An RDB-backed study, as the heartbeat sees it: its own heartbeat table."""

    def __init__(self, finished: bool = False) -> None:
        self.beats: list[int] = []
        self.is_journal, self.finished = False, finished
        self.spec = types.SimpleNamespace(beats_dir=Path("/nonexistent"))
        self.storage = types.SimpleNamespace(record_heartbeat=self.beats.append)

    def is_finished(self, trial_id: int, fresh: bool = False) -> bool:
        return self.finished


def test_an_rdb_storage_keeps_heartbeats_in_its_table() -> None:
    shared = FakeRdb()
    beat = Heartbeat(shared, period=0.005, stale_seconds=60.0)  # type: ignore[arg-type]
    try:
        with beat.watching(9, time.time()):
            wait_until(lambda: len(shared.beats) >= 2)
        assert set(shared.beats) == {9}
    finally:
        beat.close()


def test_a_failing_heartbeat_keeps_the_thread_alive(tmp_path: Path) -> None:
    shared = FakeRdb()
    calls: list[int] = []

    def record(trial_id: int) -> None:
        calls.append(trial_id)
        raise RuntimeError("database is locked")

    shared.storage.record_heartbeat = record
    beat = Heartbeat(shared, period=0.005, stale_seconds=60.0)  # type: ignore[arg-type]
    try:
        with beat.watching(9, time.time()):
            wait_until(lambda: len(calls) >= 3)
        assert beat._thread.is_alive()
    finally:
        beat.close()


def test_no_beat_between_trials() -> None:
    shared = FakeRdb()
    beat = Heartbeat(shared, period=0.002, stale_seconds=60.0)  # type: ignore[arg-type]
    try:
        with beat.watching(9, time.time()):
            wait_until(lambda: len(shared.beats) >= 1)
        count = len(shared.beats)
        time.sleep(0.03)
        assert len(shared.beats) <= count + 1
    finally:
        beat.close()

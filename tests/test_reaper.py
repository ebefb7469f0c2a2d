"""The reaper, in-process: which RUNNING trials are lost, and what happens to them.

A real journal in tmp_path, a fake process table (which pids are alive on this host), a
fake queue (which SLURM jobs are still there) and the wall time passed in: each rule of
``is_lost`` on its own, and the reaper's actions (FAIL ``worker lost``, one retry with the
same parameters, along a lineage bounded by ``HPO_MAX_RETRIES``, the beat file gone).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest

from conftest import TOY_CONFIG, clean_env
from hpo.config.study import load_launch
from hpo.study.shared import SharedStudy, open_study
from hpo.worker import recovery
from hpo.worker.recovery import WORKER_LOST, is_lost, reap, write_beat

HOST = socket.gethostname()
DEAD, ALIVE = 4_000_001, 4_000_002  # pids of the fake process table


@pytest.fixture
def processes(monkeypatch: pytest.MonkeyPatch) -> dict[int, bool]:
    """Which pids are alive on this host, as the reaper asks (``process_alive``)."""
    table = {DEAD: False, ALIVE: True}
    monkeypatch.setattr(recovery, "process_alive", lambda pid, start=None: table.get(pid, False))
    return table


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The SLURM jobs still in the queue, as the reaper asks."""
    jobs: set[str] = set()
    monkeypatch.setattr(recovery, "_live_slurm_jobs", lambda: set(jobs))
    return jobs


@pytest.fixture
def study(tmp_path: Path) -> Callable[..., SharedStudy]:
    def open_(**env: str) -> SharedStudy:
        (tmp_path / "toy.yaml").write_text(TOY_CONFIG.format(objective="quadratic"))
        settings, config = load_launch({}, clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"),
                                                     JOURNAL_DIR=str(tmp_path / "journal"), **env)).one()
        return open_study(settings.spec, config)

    return open_


def running(shared: SharedStudy, x: float = 0.5, **who: Any) -> optuna.trial.FrozenTrial:
    """A RUNNING trial with parameter ``x`` whose worker is ``who`` (host, pid, slurm_job_id)."""
    trial, _ = shared.ask_within_budget(lambda n: {"worker": f"w{n}", **who})
    assert trial is not None
    shared.storage.set_trial_param(trial._trial_id, "x", x, optuna.distributions.FloatDistribution(-5, 5))
    return shared.frozen(trial._trial_id)


def beat(shared: SharedStudy, trial: optuna.trial.FrozenTrial, at: float) -> None:
    write_beat(shared.spec.beats_dir, trial._trial_id, "w", at)


# -- the rule, one clause at a time -----------------------------------------------------------

def lost(user_attrs: dict[str, Any], beat_at: float | None, now: float = 1000.0, **kw: Any) -> bool:
    beats = {} if beat_at is None else {7: beat_at}
    return is_lost(user_attrs, {}, 7, started=0.0, now=now, stale_seconds=60, beats=beats, **kw)


def test_a_dead_pid_on_this_host_is_lost_though_its_beat_is_fresh(processes: dict[int, bool]) -> None:
    assert lost({"host": HOST, "pid": DEAD}, beat_at=999.0, host=HOST)
    assert not lost({"host": HOST, "pid": ALIVE}, beat_at=999.0, host=HOST)
    assert not lost({"host": "elsewhere", "pid": DEAD}, beat_at=999.0, host=HOST)  # not our process table
    assert not lost({"host": HOST, "pid": os.getpid()}, beat_at=999.0, host=HOST)  # this very process


def test_a_job_that_left_the_queue_is_lost_though_its_beat_is_fresh() -> None:
    assert lost({"slurm_job_id": "77"}, beat_at=999.0, live_jobs={"78"})
    assert not lost({"slurm_job_id": "77"}, beat_at=999.0, live_jobs={"77", "78"})
    assert not lost({"slurm_job_id": "77"}, beat_at=999.0, live_jobs=None)  # squeue could not tell


def test_a_beat_older_than_the_stale_age_is_lost_and_an_unreadable_one_is_judged_later() -> None:
    assert lost({}, beat_at=939.0) and not lost({}, beat_at=941.0)  # stale after 60 s
    assert lost({}, beat_at=None)  # no beat since its start, 1000 s ago
    assert not is_lost({}, {}, 7, started=0.0, now=1000.0, stale_seconds=60, beats={7: None})


def test_an_rdb_storage_decides_by_its_own_heartbeat_table() -> None:
    assert is_lost({}, {}, 7, started=0.0, now=10.0, stale_seconds=60, stale_ids={7})
    assert not is_lost({}, {}, 7, started=0.0, now=10_000.0, stale_seconds=60, stale_ids={8})


# -- the reaper --------------------------------------------------------------------------------

def test_the_reaper_fails_a_dead_workers_trial_and_retries_it_once(study: Callable[..., SharedStudy],
                                                                    processes: dict[int, bool],
                                                                    queue: set[str]) -> None:
    shared = study(MAX_TRIALS="4")
    gone = running(shared, 1.5, host=HOST, pid=DEAD)
    alive = running(shared, -2.0, host=HOST, pid=ALIVE)
    now = time.time()
    beat(shared, gone, now)
    beat(shared, alive, now)
    assert reap(shared, HOST, now=now) == [gone.number]
    assert reap(shared, HOST, now=now) == []  # reaped once, not twice
    trials = shared.trials()
    assert [(t.number, t.state.name) for t in trials] == [(0, "FAIL"), (1, "RUNNING"), (2, "WAITING")]
    assert trials[0].user_attrs["reason"] == WORKER_LOST
    retry = trials[2]
    assert retry.system_attrs["fixed_params"] == {"x": 1.5}
    assert {k: retry.user_attrs[k] for k in ("retry_of", "retry_origin", "retry_count", "retry_reason")} == {
        "retry_of": 0, "retry_origin": 0, "retry_count": 1, "retry_reason": WORKER_LOST}
    assert sorted(p.name for p in shared.spec.beats_dir.iterdir()) == [f"trial_{alive._trial_id}.json"]


def test_the_reaper_judges_stale_beats_by_the_time_it_is_given(study: Callable[..., SharedStudy],
                                                               queue: set[str]) -> None:
    shared = study(HPO_STALE_SECONDS="60")
    trial = running(shared, host="another-node", pid=12)
    last = trial.datetime_start.timestamp() + 10
    beat(shared, trial, last)
    assert reap(shared, HOST, now=last + 59) == []
    assert reap(shared, HOST, now=last + 61) == [trial.number]


def test_the_reaper_fails_a_trial_whose_job_left_the_queue_at_once(study: Callable[..., SharedStudy],
                                                                   queue: set[str]) -> None:
    shared = study()
    kept = running(shared, host="n1", pid=5, slurm_job_id="100")
    gone = running(shared, host="n2", pid=5, slurm_job_id="101")
    now = time.time()
    for trial in (kept, gone):
        beat(shared, trial, now)
    queue.add("100")
    assert reap(shared, HOST, now=now) == [gone.number]


def test_retries_stop_at_max_retries_along_the_lineage(study: Callable[..., SharedStudy],
                                                        processes: dict[int, bool], queue: set[str]) -> None:
    shared = study(HPO_MAX_RETRIES="2", MAX_TRIALS="10")
    first = running(shared, 3.0, host=HOST, pid=DEAD)
    reaped = reap(shared, HOST)
    for _ in range(2):  # each retry is taken by a worker that dies too
        retry, _ = shared.ask_within_budget(lambda n: {"host": HOST, "pid": DEAD})
        assert retry is not None
        reaped += reap(shared, HOST)
    trials = shared.trials()
    assert reaped == [0, 1, 2] and [t.state.name for t in trials] == ["FAIL", "FAIL", "FAIL"]
    assert [t.user_attrs.get("retry_count") for t in trials] == [None, 1, 2]
    assert {t.user_attrs.get("retry_origin", t.number) for t in trials} == {first.number}


def test_a_stale_beat_file_of_an_older_trial_counts_from_this_trials_start(study: Callable[..., SharedStudy],
                                                                          queue: set[str]) -> None:
    """A beat file left with this trial's id by an older journal (re-created study) is older
    than the trial itself: the trial's start counts, so it is not reaped at once."""
    shared = study()
    trial = running(shared, host="another-node", pid=12)
    started = trial.datetime_start.timestamp()
    beat(shared, trial, started - 3600)
    assert reap(shared, HOST, now=started + 30) == []
    assert json.loads((shared.spec.beats_dir / f"trial_{trial._trial_id}.json").read_text())["time"] == started - 3600

"""The budget and slot check (hpo/study/shared.py) on a real journal in ``tmp_path``, in
process: exact ``MAX_TRIALS`` (what counts, what waits, what is done), launch numbers, the
read barrier, warm starts, the incremental trial index and the facts stored with a study.
A bug here runs more trials than the budget, or fewer, or the same launch number twice."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpo._optuna import METRIC_NAMES_ATTR, journal_backend
from hpo.config.settings import StudySpec
from hpo.config.study import StudyConfig
from hpo.errors import StudyMismatch, UsageError
from hpo.study.shared import (
    BUDGET_ATTR,
    BUDGET_COUNTS_ATTR,
    LAUNCH_ATTR_PREFIX,
    VIEW_ATTR,
    WARM_START_ATTR,
    SharedStudy,
    TrialIndex,
    open_study,
)


def spec(tmp_path: Path, max_trials: int = 3, counts: str = "finished", name: str = "s",
         journal_lock: str = "auto") -> StudySpec:
    return StudySpec(name, tmp_path / "journal", "", max_trials, counts, 1.0, 60.0, 2, "random", "none", journal_lock)


def config(tmp_path: Path, enqueue: tuple[dict[str, Any], ...] = (), directions: tuple[str, ...] = ("minimize",),
           metric_names: tuple[str, ...] | None = None) -> StudyConfig:
    return StudyConfig(path=tmp_path / "c.yaml", objective="m:f", directions=directions, space={},
                       enqueue=enqueue, settings={}, metric_names=metric_names)


def open_(tmp_path: Path, **kw: Any) -> SharedStudy:
    cfg_kw = {k: kw.pop(k) for k in ("enqueue", "directions", "metric_names") if k in kw}
    warm = kw.pop("warm_start", True)
    create = kw.pop("create", True)
    return open_study(spec(tmp_path, **kw), config(tmp_path, **cfg_kw), seed=0, create=create, warm_start=warm)


def add(shared: SharedStudy, *states: TrialState) -> None:
    """Trials in these end states (RUNNING: left running), written as another worker would."""
    for state in states:
        trial = shared.study.ask()
        if state != TrialState.RUNNING:
            shared.study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)


def attrs(number: int) -> dict[str, Any]:
    return {"worker": "w1", "number_seen": number}


def barrier(shared: SharedStudy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the journal behave as on a lagging filesystem (GlusterFS FUSE): reads need a barrier."""
    monkeypatch.setattr(journal_backend(shared.storage), "needs_barrier", True, raising=False)


# -- the budget --------------------------------------------------------------------------------
def test_a_trial_starts_while_the_budget_has_room(tmp_path: Path) -> None:
    shared = open_(tmp_path, max_trials=3)
    add(shared, TrialState.COMPLETE)
    trial, done = shared.ask_within_budget(attrs)
    assert done is False and trial is not None and trial.number == 1
    frozen = shared.frozen(trial._trial_id)
    assert frozen.state == TrialState.RUNNING and frozen.user_attrs == {"worker": "w1", "number_seen": 1}
    assert shared.counts() == Counter({TrialState.COMPLETE: 1, TrialState.RUNNING: 1})


def test_the_budget_is_done_at_exactly_max_trials_finished(tmp_path: Path) -> None:
    shared = open_(tmp_path, max_trials=3)
    add(shared, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    trial, done = shared.ask_within_budget(attrs)
    assert trial is not None and not done  # a FAIL never takes a slot
    shared.study.tell(trial, 2.0)
    assert shared.ask_within_budget(attrs) == (None, True)
    assert len(shared.trials()) == 4


def test_running_trials_hold_the_last_slots_without_finishing_the_study(tmp_path: Path) -> None:
    shared = open_(tmp_path, max_trials=3)
    add(shared, TrialState.COMPLETE, TrialState.RUNNING, TrialState.RUNNING)
    assert shared.ask_within_budget(attrs) == (None, False)
    assert shared.ask_within_budget(attrs) == (None, False)
    assert len(shared.trials()) == 3


def test_one_slot_left_beside_a_running_trial_is_taken(tmp_path: Path) -> None:
    shared = open_(tmp_path, max_trials=3)
    add(shared, TrialState.COMPLETE, TrialState.RUNNING)
    trial, done = shared.ask_within_budget(attrs)
    assert trial is not None and trial.number == 2 and not done
    assert shared.ask_within_budget(attrs) == (None, False)


def test_when_only_complete_trials_count_a_pruned_one_frees_its_slot(tmp_path: Path) -> None:
    shared = open_(tmp_path, max_trials=2, counts="complete")
    add(shared, TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED)
    assert shared.finished() == 1
    trial, done = shared.ask_within_budget(attrs)
    assert trial is not None and not done
    shared.study.tell(trial, 0.5)
    assert shared.ask_within_budget(attrs) == (None, True)


@pytest.mark.parametrize(("counts", "finished"), [("finished", 3), ("complete", 1)])
def test_finished_counts_what_max_trials_counts(tmp_path: Path, counts: str, finished: int) -> None:
    shared = open_(tmp_path, counts=counts, max_trials=10)
    add(shared, TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    assert shared.finished() == finished
    given = Counter({TrialState.COMPLETE: 5, TrialState.PRUNED: 2, TrialState.FAIL: 9, TrialState.RUNNING: 4})
    assert shared.finished(given) == (7 if counts == "finished" else 5)


def test_a_waiting_trial_is_run_first_and_gets_its_attributes(tmp_path: Path) -> None:
    shared = open_(tmp_path, max_trials=5)
    add(shared, TrialState.COMPLETE)
    shared.study.enqueue_trial({"x": 0.25}, user_attrs={"origin": "retry"})
    trial, _ = shared.ask_within_budget(attrs)
    assert trial is not None and trial.number == 1
    frozen = shared.frozen(trial._trial_id)
    assert frozen.state == TrialState.RUNNING
    assert frozen.user_attrs == {"origin": "retry", "worker": "w1", "number_seen": 1}
    assert frozen.system_attrs["fixed_params"] == {"x": 0.25}


def test_a_trial_created_outside_hpo_meanwhile_is_numbered_right(tmp_path: Path) -> None:
    """The number is predicted from the index; a writer that skipped the slot lock is caught."""
    shared = open_(tmp_path, max_trials=5)
    shared.counts()  # the index has seen 0 trials
    other = open_(tmp_path, max_trials=5)
    add(other, TrialState.COMPLETE)
    trial = shared._ask(attrs)
    assert trial.number == 1
    assert shared.frozen(trial._trial_id).user_attrs == {"worker": "w1", "number_seen": 1}


def test_room_seen_on_a_lagging_view_is_checked_again_on_a_fresh_one(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On GlusterFS a worker's view may miss another node's trials: "room", seen first
    without the lock, then holding it, is only trusted after the barrier."""
    shared = open_(tmp_path, max_trials=2)
    add(shared, TrialState.COMPLETE)
    add(open_(tmp_path, max_trials=2), TrialState.COMPLETE)  # another node's: in the file already
    barrier(shared, monkeypatch)
    real_counts = shared.counts
    looks: list[bool] = []

    def counts() -> Counter[TrialState]:
        # This node's view shows the other node's trial only once it read past its barrier.
        fresh = VIEW_ATTR in shared.storage.get_study_system_attrs(shared.study_id)
        return real_counts() if fresh else Counter({TrialState.COMPLETE: 1})

    real_verdict = shared._budget_verdict

    def verdict() -> tuple[None, bool] | None:
        seen = real_verdict()
        looks.append(seen is None)
        return seen

    monkeypatch.setattr(shared, "counts", counts)
    monkeypatch.setattr(shared, "_budget_verdict", verdict)
    assert shared.ask_within_budget(attrs) == (None, True)
    assert looks == [True, True, False] and VIEW_ATTR in shared.storage.get_study_system_attrs(shared.study_id)


def test_done_or_full_on_the_first_look_needs_no_barrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = open_(tmp_path, max_trials=1)
    add(shared, TrialState.COMPLETE)
    barrier(shared, monkeypatch)
    assert shared.ask_within_budget(attrs) == (None, True)
    assert VIEW_ATTR not in shared.storage.get_study_system_attrs(shared.study_id)


def test_the_budget_is_checked_holding_the_slot_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = open_(tmp_path, journal_lock="file")  # the lock file: a hold is seen from outside
    lock_file = Path(shared.slots_lock.lock_file)
    seen: list[bool] = []
    real = shared._budget_verdict
    monkeypatch.setattr(shared, "_budget_verdict", lambda: seen.append(lock_file.exists()) or real())
    shared.ask_within_budget(attrs)
    # A first look without it (a waiting worker takes no lock), the one that counts holding it.
    assert seen == [False, True] and not lock_file.exists()


def test_the_slot_lock_is_given_back_when_the_block_raises(tmp_path: Path) -> None:
    shared = open_(tmp_path, journal_lock="file")
    with pytest.raises(ZeroDivisionError):
        with shared.slots():
            assert Path(shared.slots_lock.lock_file).exists()
            1 / 0
    assert not Path(shared.slots_lock.lock_file).exists()
    # On the journal the slot lock is the journal's own: the check and the creation, one acquisition.
    assert shared.slots_lock.lock_file == str(tmp_path / "journal" / "s.journal.lock")


# -- the read barrier --------------------------------------------------------------------------
def test_no_barrier_is_written_where_reads_are_fresh(tmp_path: Path) -> None:
    shared = open_(tmp_path)
    before = shared.spec.journal_path.read_bytes()
    assert shared.sync_view() is False
    assert shared.spec.journal_path.read_bytes() == before


def test_a_barrier_is_one_study_attribute_where_reads_lag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = open_(tmp_path)
    barrier(shared, monkeypatch)
    lines = len(shared.spec.journal_path.read_bytes().splitlines())
    assert shared.sync_view() is True
    assert len(shared.spec.journal_path.read_bytes().splitlines()) == lines + 1
    assert isinstance(shared.storage.get_study_system_attrs(shared.study_id)[VIEW_ATTR], float)


def test_is_finished_fresh_reads_through_a_barrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = open_(tmp_path)
    add(shared, TrialState.RUNNING, TrialState.COMPLETE)
    barrier(shared, monkeypatch)
    first, second = (t._trial_id for t in shared.trials())
    assert shared.is_finished(first) is False and shared.is_finished(second) is True
    assert VIEW_ATTR not in shared.storage.get_study_system_attrs(shared.study_id)
    assert shared.is_finished(first, fresh=True) is False
    assert VIEW_ATTR in shared.storage.get_study_system_attrs(shared.study_id)


# -- launch numbers ----------------------------------------------------------------------------
def test_launch_numbers_are_given_once_each_in_order(tmp_path: Path) -> None:
    shared = open_(tmp_path)
    assert [shared.launch_number(k) for k in ("a", "b", "a", "c", "b")] == [0, 1, 0, 2, 1]
    again = open_(tmp_path)  # another worker of the same launches
    assert (again.launch_number("c"), again.launch_number("d")) == (2, 3)
    held = shared.storage.get_study_system_attrs(shared.study_id)
    assert {k: v for k, v in held.items() if k.startswith(LAUNCH_ATTR_PREFIX)} == {
        "hpo:launch:a": 0, "hpo:launch:b": 1, "hpo:launch:c": 2, "hpo:launch:d": 3}


def test_a_new_study_numbers_its_launches_from_zero(tmp_path: Path) -> None:
    open_(tmp_path, name="one").launch_number("x")
    assert open_(tmp_path, name="two").launch_number("y") == 0


def test_a_launch_number_is_given_on_a_fresh_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = open_(tmp_path)
    barrier(shared, monkeypatch)
    shared.launch_number("a")
    assert VIEW_ATTR in shared.storage.get_study_system_attrs(shared.study_id)


# -- warm starts -------------------------------------------------------------------------------
WARM = ({"x": 0.1}, {"x": 0.2})


def test_an_empty_study_gets_the_warm_start_trials_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hpo")
    shared = open_(tmp_path, enqueue=WARM)
    open_(tmp_path, enqueue=WARM)  # a second worker of the same launch
    waiting = shared.trials()
    assert [t.state for t in waiting] == [TrialState.WAITING] * 2
    assert [t.params or t.system_attrs["fixed_params"] for t in waiting] == [{"x": 0.1}, {"x": 0.2}]
    assert [t.user_attrs for t in waiting] == [{"origin": "warm start"}] * 2
    assert shared.storage.get_study_system_attrs(shared.study_id)[WARM_START_ATTR] is True
    assert f"enqueued 2 warm-start trial(s) from {tmp_path / 'c.yaml'}" in caplog.messages


def test_a_study_that_holds_trials_gets_no_warm_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hpo")
    shared = open_(tmp_path)
    add(shared, TrialState.COMPLETE)
    shared.warm_start(config(tmp_path, enqueue=WARM))
    shared.warm_start(config(tmp_path, enqueue=WARM))
    assert len(shared.trials()) == 1
    assert shared.storage.get_study_system_attrs(shared.study_id)[WARM_START_ATTR] is False
    assert caplog.messages.count(
        f"not enqueuing the 2 warm-start trial(s) of {tmp_path / 'c.yaml'}: study 's' already holds 1 trial(s) "
        "(enqueued by hpo enqueue, or run before)") == 1


def test_no_warm_start_when_asked_for_none(tmp_path: Path) -> None:
    shared = open_(tmp_path, enqueue=WARM, warm_start=False)
    assert shared.trials() == []
    assert WARM_START_ATTR not in shared.storage.get_study_system_attrs(shared.study_id)


def test_a_warm_start_is_decided_on_a_fresh_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = open_(tmp_path)
    barrier(shared, monkeypatch)
    shared.warm_start(config(tmp_path, enqueue=WARM))
    assert VIEW_ATTR in shared.storage.get_study_system_attrs(shared.study_id)


# -- the trial index ---------------------------------------------------------------------------
def _timed(study: optuna.Study, state: TrialState, seconds: float | None) -> None:
    start = datetime(2026, 1, 1, 12, 0, 0)
    study.add_trial(optuna.trial.FrozenTrial(
        number=-1, state=state, value=1.0 if state == TrialState.COMPLETE else None,
        datetime_start=None if seconds is None else start,
        datetime_complete=None if seconds is None else start + timedelta(seconds=seconds),
        params={}, distributions={}, user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=-1,
    ))


def _index_checks(study: optuna.Study, index: TrialIndex) -> None:
    assert index.counts() == Counter() and index.n_trials == 0
    _timed(study, TrialState.COMPLETE, 2.5)
    _timed(study, TrialState.PRUNED, 4.0)
    _timed(study, TrialState.FAIL, 1.0)
    running = study.ask()
    assert index.counts() == Counter({TrialState.COMPLETE: 1, TrialState.PRUNED: 1, TrialState.FAIL: 1,
                                      TrialState.RUNNING: 1})
    assert index.n_trials == 4 and [t.number for t in index.running()] == [3]
    assert index.complete_seconds == [2.5]
    study.tell(running, 0.5)
    _timed(study, TrialState.COMPLETE, 3.0)
    assert index.running() == []
    assert index.counts() == Counter({TrialState.COMPLETE: 3, TrialState.PRUNED: 1, TrialState.FAIL: 1})
    assert index.complete_seconds[0] == 2.5 and index.complete_seconds[2] == 3.0 and len(index.complete_seconds) == 3
    assert index.finished == Counter({TrialState.COMPLETE: 3, TrialState.PRUNED: 1, TrialState.FAIL: 1})
    assert index.n_trials == 5


def test_the_index_follows_a_journal_study_incrementally(tmp_path: Path) -> None:
    shared = open_(tmp_path, max_trials=100)
    _index_checks(shared.study, TrialIndex(shared.storage, shared.study_id))


def test_the_index_of_any_other_storage_scans_it_whole() -> None:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    _index_checks(study, TrialIndex(study._storage, study._study_id))


def test_the_index_keeps_only_trials_of_its_own_study(tmp_path: Path) -> None:
    one, two = open_(tmp_path, name="one"), open_(tmp_path, name="two")
    add(one, TrialState.COMPLETE, TrialState.COMPLETE)
    add(two, TrialState.RUNNING)
    assert two.counts() == Counter({TrialState.RUNNING: 1}) and two.index.n_trials == 1


def test_set_user_attrs_writes_one_record_per_key(tmp_path: Path) -> None:
    shared = open_(tmp_path)
    add(shared, TrialState.RUNNING)
    tid = shared.trials()[0]._trial_id
    lines = len(shared.spec.journal_path.read_bytes().splitlines())
    shared.set_user_attrs(tid, {"a": 1, "b": "two"})
    assert len(shared.spec.journal_path.read_bytes().splitlines()) == lines + 2
    assert shared.frozen(tid).user_attrs == {"a": 1, "b": "two"}


def test_trials_filters_by_state(tmp_path: Path) -> None:
    shared = open_(tmp_path)
    add(shared, TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL)
    assert [t.number for t in shared.trials((TrialState.RUNNING, TrialState.FAIL))] == [1, 2]
    assert shared.is_journal is True and shared.study_id == shared.study._study_id


# -- opening a study ---------------------------------------------------------------------------
def test_a_study_that_does_not_exist_is_not_created_when_asked_not_to(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        open_(tmp_path, name="nope", create=False)
    assert str(err.value) == (f"STUDY_NAME='nope': no such study in {tmp_path / 'journal'}; "
                              "existing: none")
    open_(tmp_path, name="nope")  # the journal now holds it
    open_(tmp_path, name="other")
    assert open_(tmp_path, name="other", create=False).spec.study_name == "other"


def test_a_missing_study_lists_the_existing_ones(tmp_path: Path) -> None:
    journal = tmp_path / "journal" / "s.journal"
    journal.parent.mkdir()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    optuna.create_study(study_name="a", storage=storage)
    optuna.create_study(study_name="b", storage=storage)
    with pytest.raises(UsageError, match=r"^STUDY_NAME='s': no such study in .*s\.journal; existing: a, b$"):
        open_(tmp_path, create=False)


def test_a_study_with_other_directions_is_refused(tmp_path: Path) -> None:
    open_(tmp_path)
    with pytest.raises(StudyMismatch) as err:
        open_(tmp_path, directions=("maximize",))
    assert str(err.value) == (f"study 's' in {tmp_path / 'journal' / 's.journal'} optimises ['minimize'], but "
                              f"{tmp_path / 'c.yaml'} asks for ['maximize']; use another STUDY_NAME")
    assert open_(tmp_path, directions=("minimize",)).study.directions == [optuna.study.StudyDirection.MINIMIZE]


def test_the_budget_and_metric_names_are_stored_once_and_when_they_change(tmp_path: Path) -> None:
    shared = open_(tmp_path, max_trials=3, metric_names=("loss",))
    held = shared.storage.get_study_system_attrs(shared.study_id)
    assert (held[BUDGET_ATTR], held[METRIC_NAMES_ATTR]) == (3, ["loss"]) and BUDGET_COUNTS_ATTR not in held
    open_(tmp_path, max_trials=3, metric_names=("loss",))
    text = shared.spec.journal_path.read_text()
    assert (text.count(BUDGET_ATTR), text.count(METRIC_NAMES_ATTR), text.count(BUDGET_COUNTS_ATTR)) == (1, 1, 0)
    changed = open_(tmp_path, max_trials=4, counts="complete", metric_names=("mse",))
    held = changed.storage.get_study_system_attrs(changed.study_id)
    assert (held[BUDGET_ATTR], held[BUDGET_COUNTS_ATTR], held[METRIC_NAMES_ATTR]) == (4, "complete", ["mse"])
    back = open_(tmp_path, max_trials=4, counts="finished")
    assert back.storage.get_study_system_attrs(back.study_id)[BUDGET_COUNTS_ATTR] == "finished"


def test_the_slot_lock_polls_the_stop_callable(tmp_path: Path) -> None:
    stop = lambda: False  # noqa: E731
    shared = open_study(spec(tmp_path), config(tmp_path), should_stop=stop)
    assert shared.slots_lock.should_stop is stop
    assert (tmp_path / "journal").is_dir()


# -- what a trial costs the journal ------------------------------------------------------------
def test_a_new_trial_and_its_attributes_are_one_journal_record(tmp_path: Path) -> None:
    """Optuna's ask() then one record per attribute was 0.6 ms each here, far more on NFS."""
    shared = open_(tmp_path)
    add(shared, TrialState.COMPLETE)
    before = len(shared.spec.journal_path.read_bytes().splitlines())
    started = datetime.now()
    trial, _ = shared.ask_within_budget(attrs)
    assert trial is not None
    assert len(shared.spec.journal_path.read_bytes().splitlines()) == before + 1
    frozen = shared.frozen(trial._trial_id)
    # its start is what the reaper judges a trial without beats by: never missing
    assert frozen.datetime_start is not None and abs((frozen.datetime_start - started).total_seconds()) < 5


def test_trials_are_optunas_own_objects_not_copies(tmp_path: Path) -> None:
    """Read-only use; a deep copy of every trial per call is what TrialIndex exists to avoid."""
    shared = open_(tmp_path)
    add(shared, TrialState.COMPLETE, TrialState.RUNNING)
    assert all(a is b for a, b in zip(shared.trials(), shared.trials()))


def test_the_index_of_another_storage_holds_its_trials_uncopied() -> None:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    study.ask()
    index = TrialIndex(storage, study._study_id)
    assert index.running()[0] is storage.get_all_trials(study._study_id, deepcopy=False)[0]


def test_a_study_in_another_storage_never_writes_a_barrier() -> None:
    """Only a journal on a lagging filesystem needs one; an RDB's reads are fresh."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    shared = SharedStudy(study, spec(Path("/nonexistent")), None, TrialIndex(storage, study._study_id))  # type: ignore[arg-type]
    assert shared.sync_view() is False and shared.is_journal is False
    assert storage.get_study_system_attrs(study._study_id) == {}

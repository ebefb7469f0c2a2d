"""``<journal>.snapshot`` (hpo.journal.snapshot): a joining worker replays the compacted
prefix, then the journal's rest, and sees exactly what ``optuna.load_study`` sees; a
stale, damaged or foreign snapshot is never used; workers write it between trials.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import load_study, run_hpo
from hpo.journal.backend import open_journal
from hpo.journal.snapshot import compact, load_snapshot, snapshot_path, write_snapshot


def trial_fields(t: optuna.trial.FrozenTrial) -> tuple[Any, ...]:
    return (t.number, t._trial_id, t.state, t.values, t.params, t.distributions, t.user_attrs, t.system_attrs,
            t.intermediate_values, t.datetime_start, t.datetime_complete)


def everything(storage: optuna.storages.BaseStorage) -> list[Any]:
    studies = sorted(storage.get_all_studies(), key=lambda s: s._study_id)
    return [(s.study_name, s._study_id, s.directions, s.user_attrs, s.system_attrs,
             [trial_fields(t) for t in storage.get_all_trials(s._study_id)]) for s in studies]


def plain(journal: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))


def populate(storage: optuna.storages.BaseStorage, tag: str) -> None:
    """Two studies, every trial state, every kind of record."""
    one = optuna.create_study(storage=storage, study_name=f"one-{tag}", sampler=optuna.samplers.RandomSampler(0))
    one.set_user_attr("note", {"nested": [1, 2]})
    for i in range(6):
        trial = one.ask()
        x = trial.suggest_float("x", -5, 5)
        trial.suggest_int("n", 1, 9, log=True)
        trial.suggest_categorical("act", ["relu", None, 0.5])
        for step in range(5):
            trial.report(x + step, step)
        trial.set_user_attr("run_dir", f"/runs/{i}")
        one.tell(trial, [x, None, None, float("inf"), None, -x][i],
                 state=[TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE,
                        TrialState.FAIL, TrialState.COMPLETE][i])
    running = one.ask()
    running.suggest_float("x", -5, 5)
    running.report(0.5, 0)
    one.enqueue_trial({"x": 1.0, "n": 2, "act": "relu"}, user_attrs={"retry_of": 0})
    two = optuna.create_study(storage=storage, study_name=f"two-{tag}", directions=["minimize", "maximize"])
    two.set_metric_names(["loss", "acc"])
    for _ in range(3):
        trial = two.ask({"lr": FloatDistribution(1e-4, 1e-1, log=True), "k": IntDistribution(1, 4),
                         "c": CategoricalDistribution(["a", "b"])})
        two.tell(trial, [trial.params["lr"], trial.params["k"]])


def test_a_snapshot_replays_to_what_optuna_loads_before_and_after_more_records(tmp_path: Path) -> None:
    journal = tmp_path / "s.journal"
    writer = open_journal(journal)
    populate(writer, "a")
    assert write_snapshot(journal, writer) == journal.stat().st_size  # type: ignore[arg-type]
    snap = load_snapshot(journal)
    assert snap is not None and snap.trials == 11 and len(snap.records) < sum(1 for _ in open(journal))
    joined = open_journal(journal)
    assert everything(joined) == everything(plain(journal))
    # Later records apply on top: the running trial ends, the enqueued one runs, new trials.
    one = optuna.load_study(study_name="one-a", storage=plain(journal))
    running = next(t for t in one.trials if t.state == TrialState.RUNNING)
    one.tell(running.number, 2.0)
    popped = one.ask()
    one.tell(popped, 3.0)
    populate(plain(journal), "b")
    assert everything(joined) == everything(plain(journal))  # the joined storage reads on
    assert everything(open_journal(journal)) == everything(plain(journal))  # and a new one


def test_a_stale_damaged_or_foreign_snapshot_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = tmp_path / "s.journal"
    populate(open_journal(journal), "a")
    assert write_snapshot(journal, open_journal(journal)) is not None
    good = snapshot_path(journal).read_bytes()
    # The journal replaced by another (as `hpo repair` or a user copying a file would):
    other = tmp_path / "other.journal"
    populate(open_journal(other), "z")
    journal.write_bytes(other.read_bytes())
    with caplog.at_level(logging.INFO):
        assert load_snapshot(journal) is None
    assert "no longer what it compacted" in caplog.text
    assert everything(open_journal(journal)) == everything(plain(journal))
    # Cut, or written by another Optuna: not used either.
    populate(open_journal(journal := tmp_path / "t.journal"), "a")
    assert write_snapshot(journal, open_journal(journal)) is not None
    good = snapshot_path(journal).read_bytes()
    snapshot_path(journal).write_bytes(good[: len(good) // 2])
    assert load_snapshot(journal) is None
    header, rest = good.split(b"\n", 1)
    snapshot_path(journal).write_bytes(json.dumps({**json.loads(header), "optuna": "4.0"}).encode() + b"\n" + rest)
    assert load_snapshot(journal) is None
    assert everything(open_journal(journal)) == everything(plain(journal))


def test_a_snapshot_of_a_replaced_journal_is_never_used_or_written(tmp_path: Path) -> None:
    """``hpo repair`` replaces the journal by another file, here with the very same bytes:
    a snapshot compacted from the old file is stale, and a worker that read the old file
    writes none (its replay is not the new file's)."""
    journal = tmp_path / "s.journal"
    populate(open_journal(journal), "a")
    reader = open_journal(journal)  # a worker that read the journal before the repair
    assert write_snapshot(journal, open_journal(journal)) is not None
    assert load_snapshot(journal) is not None
    copy = tmp_path / "copy"
    copy.write_bytes(journal.read_bytes())
    os.replace(copy, journal)
    assert load_snapshot(journal) is None
    snapshot_path(journal).unlink()
    assert write_snapshot(journal, reader) is None and not snapshot_path(journal).exists()
    assert write_snapshot(journal, open_journal(journal)) is not None  # a worker that read the new file


def test_a_journal_with_a_deleted_study_is_not_compacted(tmp_path: Path) -> None:
    journal = tmp_path / "s.journal"
    storage = open_journal(journal)
    populate(storage, "a")
    optuna.delete_study(study_name="one-a", storage=storage)
    assert write_snapshot(journal, storage) is None and not snapshot_path(journal).exists()
    assert compact([], []) == []


def test_a_worker_holding_records_back_does_not_compact(tmp_path: Path) -> None:
    journal = tmp_path / "s.journal"
    storage = open_journal(journal)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    storage.hold(trial._trial_id)
    trial.report(1.0, 0)  # held: in this process's view, not in the file
    assert write_snapshot(journal, storage) is None
    storage.flush(trial._trial_id)
    assert write_snapshot(journal, storage) is not None
    trial.report(2.0, 1)
    storage.drop(trial._trial_id)  # never written, yet in this view: never compact from it again
    study.tell(trial, 1.0)
    assert write_snapshot(journal, storage) is None


def test_workers_write_the_snapshot_between_trials_and_a_joiner_replays_it(toy: Any) -> None:
    cwd, env = toy(MAX_TRIALS="30", OPTUNA_PRUNER="none", TOY_STEP_SECONDS="0", HPO_SNAPSHOT_MB="0.005")
    assert run_hpo(["run", "--workers", "2"], cwd, env).returncode == 0
    journal = cwd / "optuna_journal" / "toy.journal"
    snap = load_snapshot(journal)
    assert snap is not None and 5_000 <= snap.covers_bytes <= journal.stat().st_size
    assert not Path(f"{snapshot_path(journal)}.claim").exists()
    result = run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "40"})
    assert result.returncode == 0, result.stderr
    log = "".join(p.read_text() for p in (cwd / "optuna_logs").glob("worker_*.log"))
    assert f"replayed toy.journal.snapshot ({snap.trials} trials in" in log
    study = load_study(journal, "toy")
    assert [t.number for t in study.trials] == list(range(40))
    assert Counter(t.state.name for t in study.trials) == Counter({"COMPLETE": 40})
    assert everything(open_journal(journal)) == everything(plain(journal))

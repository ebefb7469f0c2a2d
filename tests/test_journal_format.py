"""hpo's journal reader against plain Optuna, on a golden journal written by Optuna 5.0
and on fresh ones; damage and newer formats refused the same way by every command."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import load_study
from test_watch import invoke, same_trial, same_trials

from hpo.config.settings import FIELDS
from hpo.journal.reader import StudyJournal, read_trials

GOLDEN = Path(__file__).parent / "golden" / "optuna5.journal"
STUDIES = ("constrained", "pareto", "plain")
sys.path.insert(0, str(GOLDEN.parent))
import make_journal  # noqa: E402  (tests/golden/make_journal.py, which wrote GOLDEN)


def _strict(text: str) -> Any:
    """json.loads that refuses NaN and infinities (not JSON)."""

    def refuse(token: str) -> Any:
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _env(path: Path, study: str) -> dict[str, str | None]:
    env: dict[str, str | None] = {f.env: None for f in FIELDS}
    env.update({"JOURNAL_DIR": str(path.parent), "STUDY_NAME": study, "MAX_TRIALS": "50"})
    return env


def _journal_copy(tmp_path: Path, name: str) -> Path:
    """The golden file as ``<name>.journal`` (hpo finds the study's journal by its name)."""
    path = tmp_path / f"{name}.journal"
    shutil.copyfile(GOLDEN, path)
    return path


def _agree(path: Path, name: str) -> None:
    """Every field status, best, export and the Pareto set use, against optuna.load_study."""
    theirs = load_study(path, name)
    same_trials(read_trials(path, name), theirs.trials)
    journal = StudyJournal.read(path, name)
    assert [(t.number, t.state, t.values) for t in journal.trials] == [
        (t.number, t.state.name, t.values) for t in theirs.trials]
    assert journal.study.directions == [d.name for d in theirs.directions]
    assert journal.study.user_attrs == theirs.user_attrs
    assert journal.study.metric_names == theirs.metric_names
    for mine, trial in zip(journal.trials, theirs.trials):  # constraints before any decode
        assert mine.constraints == trial.constraints
    if len(theirs.directions) == 1:
        best = journal.best_trial()
        assert best is not None and best.number == theirs.best_trial.number
    else:
        assert [t.number for t in journal.best_trials()] == [t.number for t in theirs.best_trials]
    picks = [t.number for t in theirs.trials][::2]
    journal.decode(picks)  # Optuna's replay of these trials' records only
    for n in picks:
        same_trial(journal.trials[n], theirs.trials[n])


def test_golden_journal_reads_as_optuna_reads_it() -> None:
    assert {s.study_name for s in optuna.get_all_study_summaries(
        optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(GOLDEN))))} == set(STUDIES)
    for name in STUDIES:
        _agree(GOLDEN, name)
    constrained = load_study(GOLDEN, "constrained")
    lowest = min((t for t in constrained.trials if t.state.name == "COMPLETE"), key=lambda t: t.values[0])
    assert lowest.number != constrained.best_trial.number  # the lowest value is infeasible


def test_fresh_journal_reads_as_optuna_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "fresh.journal"
    make_journal.write(path)
    for name in STUDIES:
        _agree(path, name)


def test_every_json_output_is_strict_json(tmp_path: Path) -> None:
    path = _journal_copy(tmp_path, "constrained")
    code, out = invoke(["status", "--json", "--no-slurm"], _env(path, "constrained"))
    assert code == 0, out
    status = _strict(out)
    assert status["best"]["number"] == load_study(path, "constrained").best_trial.number == 3
    code, out = invoke(["best", "--format", "json"], _env(path, "constrained"))
    assert code == 0, out
    assert _strict(out)["best_trial_number"] == 3
    code, out = invoke(["export", "--out", str(tmp_path / "out")], _env(path, "constrained"))
    assert code == 0, out
    written = sorted((tmp_path / "out").glob("*.json"))
    assert [p.name for p in written] == ["best_params.json", "hpo_results.json"]
    results = {p.name: _strict(p.read_text()) for p in written}
    assert results["best_params.json"]["best_trial_number"] == 3
    scores = {t["number"]: t["score"] for t in results["hpo_results.json"]["all_trials"]}
    assert scores[2] is None and scores[4] is None  # +inf and -inf are null
    pareto = _journal_copy(tmp_path, "pareto")
    code, out = invoke(["status", "--json", "--no-slurm"], _env(pareto, "pareto"))
    assert code == 0, out
    front = _strict(out)["pareto"]
    assert [p["number"] for p in front] == [t.number for t in load_study(pareto, "pareto").best_trials]
    assert front[-1]["values"] == [3.0, None]


def _glue_torn_record(path: Path) -> int:
    """Tear a user-attribute record in the middle and glue the next record onto it.
    Returns the byte offset of the damaged line."""
    lines = path.read_bytes().split(b"\n")
    k = next(i for i, line in enumerate(lines) if line.startswith(b'{"op_code":8,') and i > 5)
    offset = sum(len(line) + 1 for line in lines[:k])
    lines[k] = lines[k][:30] + lines.pop(k + 1)
    path.write_bytes(b"\n".join(lines))
    return offset


def test_non_finite_metrics_print_as_null_in_every_json_output(tmp_path: Path) -> None:
    """A metric an objective set to NaN or an infinity (Optuna stores them): strict JSON
    has neither, so ``hpo best --format json`` and ``hpo status --json`` print null."""
    path = tmp_path / "toy.journal"
    study = optuna.create_study(study_name="toy", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path))))
    for value in (1.0, 2.0):
        trial = study.ask()
        trial.suggest_float("x", -1, 1)
        trial.set_user_attr("ratio", float("nan"))
        trial.set_user_attr("peak", float("-inf"))
        study.tell(trial, value)
    code, out = invoke(["best", "--format", "json"], _env(path, "toy"))
    assert code == 0, out
    assert _strict(out)["metrics"] == {"ratio": None, "peak": None}
    code, out = invoke(["status", "--json", "--no-slurm"], _env(path, "toy"))
    assert code == 0, out
    assert _strict(out)["best"]["number"] == 0


@pytest.mark.parametrize("command", [["status", "--json", "--no-slurm"], ["best"], ["export"]])
def test_mid_file_damage_is_refused_by_status_best_and_export(tmp_path: Path, command: list[str]) -> None:
    path = _journal_copy(tmp_path, "constrained")
    offset = _glue_torn_record(path)
    with pytest.raises(ValueError):
        load_study(path, "constrained")  # plain Optuna refuses it too
    if command == ["export"]:
        command = ["export", "--out", str(tmp_path / "out")]
    code, out = invoke(command, _env(path, "constrained"))
    assert code == 3, out
    assert f"byte {offset}" in out and "hpo doctor" in out


def test_unknown_op_code_is_a_newer_optuna_not_damage(tmp_path: Path) -> None:
    path = _journal_copy(tmp_path, "plain")
    lines = path.read_bytes().split(b"\n")
    offset = sum(len(line) + 1 for line in lines[:10])
    lines.insert(10, b'{"op_code":99,"worker_id":"future-1","trial_id":0,"anything":[1,2]}')
    path.write_bytes(b"\n".join(lines))
    before = path.read_bytes()
    for command in (["status", "--json", "--no-slurm"], ["best"], ["doctor"], ["repair", "--yes"]):
        code, out = invoke(command, _env(path, "plain"))
        assert code == 3, (command, out)
        assert f"newer Optuna (op code 99 at byte {offset}" in out and "upgrade optuna" in out, (command, out)
        assert "damaged" not in out and "newer Optuna" in out.splitlines()[-1], (command, out)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("plain.journal.*"))  # no backup, no quarantine: nothing written


def test_repair_refuses_to_rewrite_what_optuna_loads(tmp_path: Path) -> None:
    path = _journal_copy(tmp_path, "plain")
    lines = path.read_bytes().split(b"\n")
    # A record for a trial that does not exist: Optuna's replay skips it before reading
    # its fields; hpo's plan would drop it (it names a trial never created).
    lines.insert(10, b'{"op_code":8,"worker_id":"w","trial_id":9999}')
    path.write_bytes(b"\n".join(lines))
    before = path.read_bytes()
    load_study(path, "plain")
    code, out = invoke(["repair", "--yes"], _env(path, "plain"))
    assert code == 3 and "Optuna loads this journal as it is" in out and "nothing was rewritten" in out
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("plain.journal.*"))


def test_the_record_shapes_are_the_ones_this_optuna_writes() -> None:
    """hpo reads records by their fields (hpo.journal.format.FIELDS_OF): every operation,
    written by the installed Optuna, has exactly those fields first, in that order."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import BaseJournalBackend

    from hpo.journal.format import FIELDS_OF, Op

    class Capture(BaseJournalBackend):
        def __init__(self) -> None:
            self.logs: list[dict[str, Any]] = []

        def read_logs(self, log_number_from: int) -> Any:
            yield from self.logs[log_number_from:]

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            self.logs.extend(logs)

    backend = Capture()
    study = optuna.create_study(storage=JournalStorage(backend), study_name="shapes")
    study.set_user_attr("a", 1)
    study._storage.set_study_system_attr(study._study_id, "b", 2)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.report(0.5, 1)
    trial.set_user_attr("c", 3)
    trial.storage.set_trial_system_attr(trial._trial_id, "d", 4)
    study.tell(trial, 0.25)
    optuna.delete_study(study_name="shapes", storage=study._storage)
    written = {log["op_code"]: list(log) for log in backend.logs}
    assert set(written) == set(FIELDS_OF) and set(FIELDS_OF) == {int(op) for op in Op} - {int(Op.DISCARD_TRIALS)}
    for op, keys in written.items():
        assert keys[:2 + len(FIELDS_OF[op])] == ["op_code", "worker_id", *FIELDS_OF[op]], Op(op).name

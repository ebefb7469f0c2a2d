"""Damage in real Optuna journals: what plain Optuna does with it, and what hpo.journal.repair does.

Every journal here is written by Optuna itself; damage is then made with the
bytes a crash leaves (torn line, NUL run, garbage line, overwritten bytes).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from hpo.errors import StorageError
from hpo.journal.backend import GuardedFileBackend, repair_tail
from hpo.journal.filesystem import SHARED_HINT, filesystem_of, filesystem_warning
from hpo.journal.repair import REPAIRED_ATTR, doctor, repair
from hpo.journal.scan import scan
from hpo.system.lock import OwnerLock

optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDY = "toy"
N_TRIALS = 10


def _storage(path: Path, guarded: bool = False) -> JournalStorage:
    backend = GuardedFileBackend if guarded else JournalFileBackend
    return JournalStorage(backend(str(path), lock_obj=OwnerLock(str(path))))


def _objective(trial: optuna.Trial) -> float:
    trial.set_user_attr("number_seen", trial.number)
    return trial.suggest_float("x", 0, 1)


def _build(path: Path) -> None:
    study = optuna.create_study(study_name=STUDY, storage=_storage(path))
    study.set_user_attr("owner", "tests")
    study.enqueue_trial({"x": 0.25})  # a WAITING creation with fixed params, as warm starts write
    study.optimize(_objective, n_trials=N_TRIALS)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("pristine") / "study.journal"
    _build(path)
    return path.read_bytes()


@pytest.fixture
def journal(tmp_path: Path, pristine: bytes) -> Path:
    path = tmp_path / "study.journal"
    path.write_bytes(pristine)
    return path


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1]


def _offset_of_line(data: bytes, index: int) -> int:
    return sum(len(line) + 1 for line in _lines(data)[:index])


def _load(path: Path) -> optuna.Study:
    """Plain Optuna, as a user or optuna-dashboard would read it."""
    return optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(path))))


def _summary(path: Path) -> list[tuple[Any, ...]]:
    return [(t.number, t.state, t.values, t.params, t.user_attrs) for t in _load(path).trials]


def _siblings(path: Path, kind: str) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.{kind}-*"))


def _overwrite(data: bytes, line_index: int, at: int, n: int) -> bytes:
    lines = _lines(data)
    line = bytearray(lines[line_index])
    line[at : at + n] = b"#" * n
    lines[line_index] = bytes(line)
    return b"\n".join(lines) + b"\n"


def _index_of(data: bytes, op_code: int, nth: int) -> int:
    found = [i for i, line in enumerate(_lines(data)) if json.loads(line)["op_code"] == op_code]
    return found[nth]


# -- a clean journal ----------------------------------------------------------------------------


def test_clean_journal_is_left_byte_identical(journal: Path, pristine: bytes) -> None:
    result = scan(journal)
    assert result.clean and result.records == len(_lines(pristine)) and result.valid_end == len(pristine)
    lock = OwnerLock(str(journal))
    assert repair_tail(journal, lock) is None
    outcome = repair(journal, lock)
    assert not outcome.changed and outcome.trials == N_TRIALS
    report = doctor(journal)
    assert not report.damaged and report.optuna_error is None and "damage: none" in report.render()
    assert journal.read_bytes() == pristine
    assert not _siblings(journal, "bak") and not _siblings(journal, "tail") and not _siblings(journal, "quarantine")


# -- damaged tails: cut online -------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["torn", "nul", "garbage"])
def test_damaged_tail_is_cut_with_a_backup(journal: Path, pristine: bytes, damage: str) -> None:
    last = _offset_of_line(pristine, len(_lines(pristine)) - 1)
    if damage == "torn":  # the last record's writer died mid-append
        damaged, expect_end = pristine[: last + 50], last
    elif damage == "nul":  # a write whose data never reached the disk
        damaged, expect_end = pristine + b"\0" * 100, len(pristine)
    else:
        damaged, expect_end = pristine + b"garbage\n", len(pristine)
    journal.write_bytes(damaged)
    _load(journal)  # plain Optuna still skips a bad last line...

    result = scan(journal)
    assert result.tail is not None and not result.middle
    assert result.tail.offset == expect_end and result.tail.line == len(_lines(pristine[:expect_end])) + 1

    cut = repair_tail(journal, OwnerLock(str(journal)))
    assert cut is not None and cut.offset == expect_end and cut.length == len(damaged) - expect_end
    assert journal.read_bytes() == damaged[:expect_end]
    assert Path(cut.backup).read_bytes() == damaged[expect_end:]
    assert re.fullmatch(r"study\.journal\.tail-\d{8}T\d{6}\.\d{6}Z\.bak", Path(cut.backup).name), cut.backup
    line = len(_lines(pristine[:expect_end])) + 1
    assert (cut.line, cut.reason) == (line, result.tail.reason)
    assert cut.message() == (f"cut {len(damaged) - expect_end} damaged byte(s) from the end of {journal} "
                             f"(byte {expect_end}, line {line}: {cut.reason}); saved in {cut.backup}")
    assert repair_tail(journal, OwnerLock(str(journal))) is None  # idempotent
    assert journal.read_bytes() == damaged[:expect_end]

    journal.write_bytes(damaged)  # the quick variant reads only the end of the file
    quick = repair_tail(journal, OwnerLock(str(journal)), check_middle=False)
    assert quick is not None and (quick.offset, quick.length) == (cut.offset, cut.length)
    assert journal.read_bytes() == damaged[:expect_end]


def _glue(journal: Path, pristine: bytes) -> int:
    """Tear the last line, then let two more Optuna storages write. Returns the tear offset."""
    last = _offset_of_line(pristine, len(_lines(pristine)) - 1)
    journal.write_bytes(pristine[:-40])  # the torn record still names its trial
    # The next writer's record is glued onto the torn one. Optuna skips the glued
    # line while it is last, so this writer does not even see its own new trial.
    with pytest.raises(AttributeError):
        _load(journal).optimize(_objective, n_trials=1)
    # A third writer appends after the glued line: from now on every read fails.
    with pytest.raises(json.JSONDecodeError):
        _load(journal).optimize(_objective, n_trials=1)
    return last


def test_glued_tail_breaks_plain_optuna_and_repair_fixes_it(journal: Path, pristine: bytes) -> None:
    tear = _glue(journal, pristine)
    with pytest.raises(json.JSONDecodeError):
        _load(journal)
    line = len(_lines(pristine))
    result = scan(journal)
    assert [(d.offset, d.line) for d in result.middle] == [(tear, line)]
    with pytest.raises(StorageError, match=rf"^{journal}: damaged journal record at byte {tear} \(line {line}\)"
                                           r".*Run `hpo doctor`.*run `hpo repair`"):
        repair_tail(journal, OwnerLock(str(journal)))

    damaged = journal.read_bytes()
    outcome = repair(journal, OwnerLock(str(journal)))
    assert outcome.changed
    quarantined = [json.loads(line) for line in Path(outcome.quarantine or "").read_text().splitlines()]
    torn = pristine[tear:-40]  # the torn completion, then the next writer's creation glued onto it
    glued = damaged[tear + len(torn):damaged.index(b"\n", tear)]
    assert [(q["offset"], q["line"], q["reason"], base64.b64decode(q["base64"])) for q in quarantined] == [
        (tear, line, "torn record (the next record was glued onto it)", torn),
        (tear + len(torn), line, "creation glued onto a torn record: no reader ever applied it", glued)]
    assert json.loads(glued)["op_code"] == 4  # CREATE_TRIAL
    assert Path(outcome.backup or "").read_bytes() == damaged
    study = _load(journal)  # loads again; the torn completion is lost, so that trial is RUNNING
    assert len(study.trials) == N_TRIALS + 1
    assert study.trials[N_TRIALS - 1].state == optuna.trial.TrialState.RUNNING
    assert [(a.study, a.number) for a in outcome.affected] == [(STUDY, N_TRIALS - 1)]
    study.optimize(_objective, n_trials=2)  # and takes new trials
    assert scan(journal).clean and len(_load(journal).trials) == N_TRIALS + 3


def test_repair_tail_before_the_next_append_prevents_the_glue(journal: Path, pristine: bytes) -> None:
    last = _offset_of_line(pristine, len(_lines(pristine)) - 1)
    journal.write_bytes(pristine[: last + 50])
    assert repair_tail(journal, OwnerLock(str(journal))) is not None
    study = _load(journal)
    study.optimize(_objective, n_trials=2)
    study.optimize(_objective, n_trials=1)
    assert len(_load(journal).trials) == N_TRIALS + 3 and scan(journal).clean


def test_guarded_backend_cuts_a_torn_tail_before_appending(journal: Path, pristine: bytes) -> None:
    last = _offset_of_line(pristine, len(_lines(pristine)) - 1)
    journal.write_bytes(pristine[: last + 50])
    storage = _storage(journal, guarded=True)
    optuna.load_study(study_name=STUDY, storage=storage).optimize(_objective, n_trials=3)
    assert scan(journal).clean and len(_load(journal).trials) == N_TRIALS + 3
    (backup,) = _siblings(journal, "tail")
    assert backup.read_bytes() == pristine[last : last + 50]


# -- damage in the middle: offline repair -------------------------------------------------------


def test_overwritten_creation_is_restored_with_ids_and_numbers_kept(journal: Path, pristine: bytes) -> None:
    index = _index_of(pristine, 4, 4)  # CREATE_TRIAL of trial #4
    offset = _offset_of_line(pristine, index)
    damaged = _overwrite(pristine, index, 0, 12)  # op_code and all: unknown record
    journal.write_bytes(damaged)
    with pytest.raises(json.JSONDecodeError):
        _load(journal)

    result = scan(journal)
    assert [(d.offset, d.line) for d in result.middle] == [(offset, index + 1)]
    with pytest.raises(StorageError, match=rf"{journal}: damaged journal record at byte {offset} \(line {index + 1}\)"):
        repair_tail(journal, OwnerLock(str(journal)))

    report = doctor(journal)
    assert report.optuna_error is not None and [(a.study, a.number) for a in report.affected] == [(STUDY, 4)]
    assert f"byte {offset}" in report.render() and "hpo repair" in report.render()
    assert journal.read_bytes() == damaged  # doctor only reads

    outcome = repair(journal, OwnerLock(str(journal)))
    assert [(a.study, a.number) for a in outcome.affected] == [(STUDY, 4)]
    assert Path(outcome.backup or "").read_bytes() == damaged
    # Every trial keeps its number, params, value and attributes: only the creation record was lost.
    assert _summary(journal) == _summary_of_bytes(journal.parent / "clean.journal", pristine)
    assert REPAIRED_ATTR in _load(journal).trials[4].system_attrs
    assert scan(journal).clean
    assert not repair(journal, OwnerLock(str(journal))).changed  # idempotent


def test_overwritten_study_creation_is_restored_under_its_name(journal: Path, pristine: bytes) -> None:
    journal.write_bytes(_overwrite(pristine, 0, 0, 40))  # CREATE_STUDY: op_code and worker_id gone
    with pytest.raises(json.JSONDecodeError):
        _load(journal)
    outcome = repair(journal, OwnerLock(str(journal)))
    assert [f.action for f in outcome.findings] == ["placeholder"]
    assert _summary(journal) == _summary_of_bytes(journal.parent / "clean.journal", pristine)
    assert _load(journal).user_attrs == {"owner": "tests"}


def test_too_much_garbage_is_not_cut_online(tmp_path: Path, journal: Path, pristine: bytes) -> None:
    journal.write_bytes(pristine + (b"garbage " * 16 + b"\n") * 9000)  # 1.2 MB: no torn write looks like that
    with pytest.raises(StorageError, match="too many for a torn write"):
        repair_tail(journal, OwnerLock(str(journal)))
    with pytest.raises(StorageError, match="too many for a torn write"):
        GuardedFileBackend(str(journal), lock_obj=OwnerLock(str(journal))).append_logs([{"op_code": 10}])
    not_a_journal = tmp_path / "data.csv"
    not_a_journal.write_bytes(b"a,b,c\n1,2,3\n" * 1000)
    with pytest.raises(StorageError, match="not an Optuna journal"):
        repair_tail(not_a_journal, OwnerLock(str(not_a_journal)))
    assert not_a_journal.stat().st_size == 12_000 and not _siblings(journal, "tail")


def _summary_of_bytes(path: Path, data: bytes) -> list[tuple[Any, ...]]:
    path.write_bytes(data)
    return _summary(path)


def test_overwritten_update_loses_only_that_update(journal: Path, pristine: bytes) -> None:
    index = _index_of(pristine, 6, 6)  # a SET_TRIAL_STATE_VALUES: find one that completes a trial
    while json.loads(_lines(pristine)[index])["state"] != 1:
        index += 1
    trial_id = json.loads(_lines(pristine)[index])["trial_id"]
    at = _lines(pristine)[index].index(b'"state"')
    journal.write_bytes(_overwrite(pristine, index, at, 12))
    with pytest.raises(json.JSONDecodeError):
        _load(journal)

    outcome = repair(journal, OwnerLock(str(journal)))
    assert [a.trial_id for a in outcome.affected] == [trial_id]
    after, before = _summary(journal), _summary_of_bytes(journal.parent / "clean.journal", pristine)
    changed = [n for n, (a, b) in enumerate(zip(after, before)) if a != b]
    assert changed == [trial_id] and after[trial_id][1] == optuna.trial.TrialState.RUNNING


def test_record_optuna_cannot_replay_is_quarantined(journal: Path, pristine: bytes) -> None:
    lines = _lines(pristine)
    index = _index_of(pristine, 5, 2)  # SET_TRIAL_PARAM: valid JSON without a key Optuna reads
    record = json.loads(lines[index])
    del record["param_value_internal"]
    lines[index] = json.dumps(record, separators=(",", ":")).encode()
    journal.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(KeyError):
        _load(journal)
    (damage,) = scan(journal).middle
    assert (damage.offset, damage.line) == (_offset_of_line(pristine, index), index + 1)
    assert damage.reason == "Optuna cannot replay it (KeyError: 'param_value_internal')"
    outcome = repair(journal, OwnerLock(str(journal)))
    assert [a.trial_id for a in outcome.affected] == [record["trial_id"]]
    quarantined = [json.loads(q) for q in Path(outcome.quarantine or "").read_text().splitlines()]
    assert [(q["line"], base64.b64decode(q["base64"])) for q in quarantined] == [(index + 1, lines[index])]
    assert _load(journal).trials[record["trial_id"]].params == {}


def _without(data: bytes, index: int, key: str) -> bytes:
    lines = _lines(data)
    record = json.loads(lines[index])
    del record[key]
    lines[index] = json.dumps(record, separators=(",", ":")).encode()
    return b"\n".join(lines) + b"\n"


def _optuna_loads(path: Path) -> bool:
    try:
        storage = JournalStorage(JournalFileBackend(str(path)))
        for study in storage.get_all_studies():
            storage.get_all_trials(study._study_id, deepcopy=False)
    except Exception:
        return False
    return True


def test_scan_calls_a_record_damage_exactly_when_optuna_refuses_it(journal: Path, pristine: bytes) -> None:
    """Every key of every record removed in turn: hpo's verdict is Optuna's, record by record.

    Some removals Optuna never notices (a record for a trial already finished is
    skipped before its fields are read); hpo must not call those damage either."""
    lines = _lines(pristine)
    verdicts = {True: 0, False: 0}
    for index, line in enumerate(lines):
        for key in json.loads(line):
            if key == "op_code":
                continue
            journal.write_bytes(_without(pristine, index, key))
            loads, result = _optuna_loads(journal), scan(journal)
            assert result.clean == loads, (index, key, result.middle[:1])
            assert [d.line for d in result.middle] == ([] if loads else [index + 1]), (index, key)
            verdicts[loads] += 1
    assert verdicts[True] > 0 and verdicts[False] > 0  # both kinds were met


def test_repaired_journal_is_one_optuna_loads_whatever_key_was_lost(journal: Path, pristine: bytes) -> None:
    lines = _lines(pristine)
    for index in range(0, len(lines), 3):
        for key in json.loads(lines[index]):
            if key == "op_code":
                continue
            journal.write_bytes(_without(pristine, index, key))
            if _optuna_loads(journal):
                continue
            repair(journal, OwnerLock(str(journal)))
            assert _optuna_loads(journal), (index, key)
            assert scan(journal).clean
            for sibling in journal.parent.glob(f"{journal.name}.*"):
                sibling.unlink()


def test_lost_creation_in_a_two_study_journal_goes_to_its_study(tmp_path: Path) -> None:
    path = tmp_path / "two.journal"
    a = optuna.create_study(study_name="a", storage=_storage(path))
    b = optuna.create_study(study_name="b", storage=_storage(path))  # another worker id
    for _ in range(6):
        for study in (a, b):
            trial = study.ask()
            study.tell(trial, trial.suggest_float("x", 0, 1))
    pristine = path.read_bytes()
    index = _index_of(pristine, 4, 7)  # a creation of study b
    assert json.loads(_lines(pristine)[index])["study_id"] == 1
    path.write_bytes(_overwrite(pristine, index, 0, 120))  # op_code, worker_id and study_id gone

    outcome = repair(path, OwnerLock(str(path)))
    assert [(x.study, x.number) for x in outcome.affected] == [("b", 3)]
    clean = tmp_path / "clean.journal"
    clean.write_bytes(pristine)
    for name in ("a", "b"):
        got = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))
        want = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(clean))))
        assert [(t.number, t.state, t.values, t.params) for t in got.trials] == \
               [(t.number, t.state, t.values, t.params) for t in want.trials]


# -- filesystem ------------------------------------------------------------------------------------


def test_node_local_filesystem_is_warned_about(tmp_path: Path) -> None:
    """Which mounts are node-local: by filesystem type, and by a scratch path when the type
    is unknown (a fake ``/proc/mounts``, its octal-escaped spaces included)."""
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        "tmpfs /dev/shm tmpfs rw 0 0\n"
        "server:/export /shared nfs4 rw 0 0\n"
        "server:/export/b /shared/with\\040space lustre rw 0 0\n"
        "overlay /containers overlay rw 0 0\n"
        "/dev/vdb /data xfs rw 0 0\n"
        "cache /scratch-local weirdfs rw 0 0\n"
        "cache2 /weird weirdfs rw 0 0\n"
        "host0 /mnt/host 9p rw 0 0\n"
    )
    expected = {  # directory: (filesystem type, mount point, node-local: None when unknown)
        "/shared/studies": ("nfs4", "/shared", False), "/shared/with space/x": ("lustre", "/shared/with space", False),
        "/dev/shm/j": ("tmpfs", "/dev/shm", True), "/home/x": ("ext4", "/", True),
        "/containers/j": ("overlay", "/containers", True), "/data/j": ("xfs", "/data", True),
        "/scratch-local/j": ("weirdfs", "/scratch-local", True), "/weird/j": ("weirdfs", "/weird", None),
        "/mnt/host/j": ("9p", "/mnt/host", True)}
    for directory, (fstype, point, local) in expected.items():
        mount = filesystem_of(directory, str(mounts))
        assert mount is not None and (mount.fstype, mount.mount_point, mount.node_local) == (fstype, point, local)
        # Record locks without a proof: only where the type says one kernel sees every opener
        # (a scratch path of an unknown type is node-local by convention, not by proof).
        # (a 9p share may be a VM host's folder, seen by other guests too).
        assert mount.one_kernel == (local is True and fstype not in ("weirdfs", "9p")), directory
        assert filesystem_warning(mount) == (None if not local else (
            f"{directory} is on {fstype} (mounted at {point}), a node-local filesystem: fine for workers on this "
            f"node only; {SHARED_HINT}")), directory


@pytest.mark.parametrize(("fstype", "warned"), [("ext4", True), ("xfs", True), ("tmpfs", True), ("overlay", True),
                                                ("nfs4", False), ("lustre", False)])
def test_doctor_warns_when_the_journal_is_on_a_node_local_filesystem(tmp_path: Path, fstype: str,
                                                                      warned: bool) -> None:
    folder = tmp_path / "journal"
    folder.mkdir()
    _build(folder / "study.journal")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nsrc {folder} {fstype} rw 0 0\n")
    warnings = [line for line in doctor(folder / "study.journal", str(mounts)).render().splitlines()
                if line.startswith("WARNING")]
    assert warnings == ([f"WARNING: {folder} is on {fstype} (mounted at {folder}), a node-local filesystem: fine "
                         f"for workers on this node only; {SHARED_HINT}"] if warned else [])

"""The parts of hpo that a weakly coherent network filesystem (GlusterFS) can break,
each tested with two client mounts of ONE volume: the read barrier behind the exact
budget, the slot check against a trial another node just started, transient errors
(ESTALE, EIO) in the journal path, and the lag warning of ``hpo doctor``. The whole
2-node study, repeated 20 times per mode on the dev cluster's nodes, is
``tests/test_multinode.py::test_exact_budget_two_nodes``.

Mounts come from the environment (two client mounts of the same volume):
``HPO_TEST_SHARED_A``/``HPO_TEST_SHARED_B`` (default GlusterFS mode: another client's
append is seen ~1 s late) and ``HPO_TEST_SHARED_STRICT_A``/``_B`` (stat-prefetch and
quick-read off, ``attribute-timeout=0,entry-timeout=0``), else the dev cluster's
(``/shared`` and node n1's own mount). Without either those tests fail (the README's
set-up starts the cluster); they are marked ``cluster``. The rest (retries, the barrier
read, mount visibility) run on local disk with the other tests.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
from conftest import TOY_CONFIG, clean_env, load_study, missing

# The tests on the dev cluster's GlusterFS volume (those that call _mounts) are marked
# cluster: with the SLURM and multi-node tests they run alone, after the others (their
# timing-sensitive faults must not share the CPUs).


def _mounts(prefix: str) -> tuple[Path, Path]:
    """From the environment, else the dev cluster's two client mounts of the volume."""
    from multinode import client_pair

    pair = client_pair("strict" if "STRICT" in prefix else "default")
    a = os.environ.get(f"{prefix}_A") or (str(pair[0]) if pair else None)
    b = os.environ.get(f"{prefix}_B") or (str(pair[1]) if pair else None)
    if not (a and b and os.path.isdir(a) and os.path.isdir(b)):
        missing(f"{prefix}_A/_B: no two client mounts of one shared volume given ({a!r}, {b!r})",
                "bash slurm/dev-cluster/cluster.sh start --nodes 3 (mounts /shared and each node's own)")
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("unshare as root is needed for the fake nodes")
    return Path(a), Path(b)


# ---------------------------------------------------------------------------------------
# the parts, on local disk and (when given) on the shared mounts
# ---------------------------------------------------------------------------------------

def _optuna_journal(path: Path, trials: int) -> None:
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="toy", storage=storage, load_if_exists=True)
    for _ in range(trials):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)


@pytest.mark.cluster
def test_after_its_own_append_a_node_sees_every_earlier_append() -> None:
    """The cause of the 61st trial: on default GlusterFS a node reads another node's
    append ~1 s late. After an append of its own, hpo's backend reads until it sees
    that append, so the read holds everything appended before, at once."""
    import optuna

    from hpo.journal.backend import GuardedFileBackend
    from hpo.system.lock import OwnerLock

    mount_a, mount_b = _mounts("HPO_TEST_SHARED")
    run = f"hpo-test-{uuid.uuid4().hex[:10]}"
    (mount_a / run).mkdir()
    try:
        _optuna_journal(mount_a / run / "j.journal", 1)
        path_b = str(mount_b / run / "j.journal")
        backend = GuardedFileBackend(path_b, lock_obj=OwnerLock(path_b))
        assert backend.needs_barrier
        reader = optuna.storages.JournalStorage(backend)
        study_id = reader.get_study_id_from_name("toy")
        assert len(reader.get_all_trials(study_id)) == 1  # this client's caches now hold one trial
        for n in range(2, 7):
            _optuna_journal(mount_a / run / "j.journal", 1)  # another client appends
            reader.set_study_system_attr(study_id, "hpo:view", n)  # our append, then our read
            assert len(reader.get_all_trials(study_id)) == n  # no sleep
    finally:
        shutil.rmtree(mount_a / run)


@pytest.mark.cluster
def test_slot_check_sees_a_trial_another_node_just_started() -> None:
    """MAX_TRIALS=3: node 1 has 2 finished trials and starts the 3rd; node 2 asks a
    moment later (its client's caches still show 2). It must find no room."""
    import optuna
    from optuna.trial import TrialState

    from hpo.config.study import load_launch
    from hpo.study.shared import open_study

    mount_a, mount_b = _mounts("HPO_TEST_SHARED")
    run = f"hpo-test-{uuid.uuid4().hex[:10]}"
    (mount_a / run).mkdir()
    try:
        (mount_a / run / "toy.yaml").write_text(TOY_CONFIG.format(objective="quadratic"))
        env = {"HPO_CONFIG": str(mount_b / run / "toy.yaml"), "JOURNAL_DIR": str(mount_b / run),
               "STUDY_NAME": "toy", "MAX_TRIALS": "3", "OPTUNA_SAMPLER": "random", "OPTUNA_PRUNER": "none"}
        settings, config = load_launch({}, env).one()
        shared = open_study(settings.spec, config)
        node1 = optuna.load_study(study_name="toy", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(mount_a / run / "toy.journal"))))
        for _ in range(2):
            node1.optimize(lambda t: t.suggest_float("x", -5, 5), n_trials=1)
        time.sleep(1.5)  # node 2 sees those two at the latest now
        assert shared.counts()[TrialState.COMPLETE] == 2  # and caches that view
        node1.ask()  # the 3rd and last slot, taken on node 1
        trial, done = shared.ask_within_budget(lambda number: {})
        assert (trial, done) == (None, False)
        counts = shared.counts()
        assert (counts[TrialState.COMPLETE], counts[TrialState.RUNNING]) == (2, 1)
    finally:
        shutil.rmtree(mount_a / run)


@pytest.mark.cluster
def test_doctor_names_a_lagging_mount(tmp_path: Path) -> None:
    """`hpo doctor` says when the journal's mount shows other nodes' writes late."""
    from conftest import run_hpo

    mount_a, _ = _mounts("HPO_TEST_SHARED")
    run = f"hpo-test-{uuid.uuid4().hex[:10]}"
    (mount_a / run).mkdir()
    try:
        _optuna_journal(mount_a / run / "toy.journal", 1)
        env = clean_env(JOURNAL_DIR=str(mount_a / run), STUDY_NAME="toy")
        result = run_hpo(["doctor"], cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert f"WARNING: {mount_a} (fuse.glusterfs) is GlusterFS" in result.stdout
        assert "appear here" in result.stdout and "late" in result.stdout
    finally:
        shutil.rmtree(mount_a / run)


def test_transient_errors_are_retried_then_named(tmp_path: Path) -> None:
    import errno as errnos

    from hpo.errors import StorageError
    from hpo.journal.coherence import retry_transient

    answers = [errnos.ESTALE, errnos.EIO, errnos.ENOENT]

    def flaky() -> str:
        if answers:
            code = answers.pop(0)
            raise OSError(code, os.strerror(code))
        return "read"

    slept: list[float] = []
    assert retry_transient("reading the journal", "j", flaky, sleeps=(0.1,) * 3, sleep=slept.append) == "read"
    assert slept == [0.1, 0.1, 0.1]

    def gone() -> str:
        return (tmp_path / "missing").read_text()

    with pytest.raises(StorageError, match=r"missing: reading the journal failed 3 times .*ENOENT"):
        retry_transient("reading the journal", str(tmp_path / "missing"), gone, sleeps=(0, 0), sleep=slept.append)

    def denied() -> str:
        raise PermissionError(errnos.EACCES, "Permission denied")

    with pytest.raises(PermissionError):  # not transient: no retry, no rewording
        retry_transient("reading the journal", "j", denied, sleeps=(0,), sleep=slept.append)


def test_a_folder_another_node_is_creating_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GlusterFS: a mkdir that loses the race to another client can answer EEXIST while
    the folder does not look like one yet; a worker crashed on ``runs/`` that way. The
    next tries succeed; a name that stays a file is still refused."""
    from hpo.system import files

    real, answers = Path.mkdir, [FileExistsError(17, "File exists")] * 2

    def racing(self: Path, *args: object, **kwargs: object) -> None:
        if answers:
            raise answers.pop()
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as patch:
        patch.setattr(Path, "mkdir", racing)
        files.make_dirs(tmp_path / "runs" / "toy")
    assert (tmp_path / "runs" / "toy").is_dir() and answers == []
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(files, "MKDIR_RACE_SECONDS", 0.2)
    with pytest.raises(FileExistsError):
        files.make_dirs(tmp_path / "a-file")


def test_guarded_backend_with_barrier_reads_like_optuna(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the read barrier on, the backend replays the same study as plain Optuna and
    leaves an append in progress (no newline yet) for the next read."""
    import optuna

    from hpo.journal import backend
    from hpo.system.lock import OwnerLock

    path = tmp_path / "j.journal"
    _optuna_journal(path, 7)
    monkeypatch.setattr(backend, "needs_read_barrier", lambda p: True)
    ours = optuna.storages.JournalStorage(backend.GuardedFileBackend(str(path), lock_obj=OwnerLock(str(path))))
    study_id = ours.get_study_id_from_name("toy")
    assert [t.params for t in ours.get_all_trials(study_id)] == [t.params for t in load_study(path, "toy").trials]
    ours.set_study_system_attr(study_id, "hpo:view", 1.0)  # an append of ours, read back
    with path.open("ab") as f:
        f.write(b'{"op_code":4,"worker_id":"x","study_id":0')  # half a record
    assert len(ours.get_all_trials(study_id)) == 7
    with path.open("ab") as f:
        f.write(b',"datetime_start":"2026-01-01T00:00:00.000000"}\n')
    assert len(ours.get_all_trials(study_id)) == 8
    assert len(load_study(path, "toy").trials) == 8


def test_journal_survives_estale_and_eio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ESTALE on a read and EIO on an fsync (after the bytes landed) are ridden out:
    the study goes on, and the record that landed is not written twice."""
    import errno as errnos

    import optuna

    from hpo.journal import backend
    from hpo.system.lock import OwnerLock

    path = tmp_path / "j.journal"
    _optuna_journal(path, 3)
    storage = optuna.storages.JournalStorage(backend.GuardedFileBackend(str(path), lock_obj=OwnerLock(str(path))))
    study_id = storage.get_study_id_from_name("toy")
    real_read, real_fsync = backend.read_past, os.fsync
    faults = {"read": 2, "fsync": 1}

    def flaky_read(*args: object, **kwargs: object) -> bytes:
        if faults["read"]:
            faults["read"] -= 1
            raise OSError(errnos.ESTALE, "Stale file handle")
        return real_read(*args, **kwargs)  # type: ignore[arg-type]

    def flaky_fsync(fd: int) -> None:
        real_fsync(fd)
        if faults["fsync"]:
            faults["fsync"] -= 1
            raise OSError(errnos.EIO, "Input/output error")

    monkeypatch.setattr(backend, "read_past", flaky_read)
    monkeypatch.setattr(os, "fsync", flaky_fsync)
    storage.set_study_user_attr(study_id, "note", "once")  # EIO after landing, then ESTALE twice on the read back
    monkeypatch.undo()
    assert faults == {"read": 0, "fsync": 0}
    assert path.read_bytes().count(b'"note"') == 1
    assert load_study(path, "toy").user_attrs == {"note": "once"}
    assert len(load_study(path, "toy").trials) == 3


def test_barrier_read_waits_for_its_own_append(caplog: pytest.LogCaptureFixture) -> None:
    from hpo.journal.coherence import read_past

    views = [b"old\n", b"old\nother\n", b"old\nother\nours\n"]  # what a lagging client returns, read by read
    reads: list[int] = []

    def read(path: str, offset: int) -> bytes:
        reads.append(offset)
        return views[min(len(reads) - 1, 2)][offset:]

    assert read_past("j", 4, (15, b"ours\n"), read=read, sleep=lambda s: None) == b"other\nours\n"
    assert reads == [4, 4, 4]
    reads.clear()
    got = read_past("j", 0, (99, b"never\n"), read=read, timeout=0.0, sleep=lambda s: None)
    assert got == b"old\n" and "does not see its own append" in caplog.text


def test_visibility_of_mounts() -> None:
    from hpo.journal.filesystem import visibility

    strict = visibility("fuse.glusterfs", "/shared", ["/usr/sbin/glusterfs", "--attribute-timeout=0", "/shared"])
    default = visibility("fuse.glusterfs", "/shared", ["/usr/sbin/glusterfs", "--process-name", "fuse", "/shared"])
    hidden = visibility("fuse.glusterfs", "/shared", None)
    assert strict.read_barrier and strict.warning("/shared", "fuse.glusterfs", 60) is None
    warning = default.warning("/shared", "fuse.glusterfs", 60)
    assert default.lag_seconds == 1.0 and warning and "~1 s late" in warning and "HPO_STALE_SECONDS (now 60 s)" in warning
    assert hidden.lag_seconds is None and "unknown time" in (hidden.warning("/shared", "fuse.glusterfs", 60) or "")
    for coherent in ("nfs4", "lustre", "gpfs", "ext4", "fuse.fuse-overlayfs"):
        assert not visibility(coherent, "/x", None).read_barrier
        assert visibility(coherent, "/x", None).warning("/x", coherent, 60) is None


RECORD_JOBS = """
import sys
from pathlib import Path
from hpo.system.slurm import record_jobs
path, who = Path(sys.argv[1]), sys.argv[2]
for i in range(150):
    record_jobs(path, [f"{who}{i:04d}"])
"""


@pytest.mark.cluster
def test_jobs_file_recorded_from_two_clients_at_once_keeps_every_line() -> None:
    """The .jobs file: two clients recording at the same moment (through the file's lock)
    keep every job id, each on its own line, once."""
    import subprocess
    import sys

    mount_a, mount_b = _mounts("HPO_TEST_SHARED")
    run = f"hpo-test-{uuid.uuid4().hex[:10]}"
    (mount_a / run).mkdir()
    try:
        deadline = time.monotonic() + 10
        while not (mount_b / run).is_dir():
            assert time.monotonic() < deadline, "the other client never saw the folder"
            time.sleep(0.1)
        procs = [subprocess.Popen([sys.executable, "-c", RECORD_JOBS, str(mount / run / "toy.jobs"), who],
                                  env=clean_env(), stderr=subprocess.PIPE, text=True)
                 for mount, who in ((mount_a, "a"), (mount_b, "b"))]
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        time.sleep(1.5)  # the last appends reach mount A's view
        lines = (mount_a / run / "toy.jobs").read_text().splitlines()
        expected = {f"{who}{i:04d}" for who in "ab" for i in range(150)}
        assert len(lines) == 300 and set(lines) == expected, [x for x in lines if x not in expected][:5]
    finally:
        shutil.rmtree(mount_a / run, ignore_errors=True)

"""The journal's record lock (hpo.system.kernel_lock.KernelLock) and the rules that pick a
journal's lock (hpo.journal.locking): real processes on local disk here; across GlusterFS
clients and nodes in tests/test_multinode.py and test_lock_nodes.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import load_study, run_hpo, tree
from hpo.errors import LockWaitAborted, StorageError, UsageError
from hpo.journal.backend import GuardedFileBackend
from hpo.journal.filesystem import filesystem_of
from hpo.journal.locking import PROOF_NAME, _adopt_record_lock, journal_lock, kernel_lock_file, lock_kind
from hpo.system.kernel_lock import KernelLock, kernel_holder
from hpo.system.lock import LockTimeout, make_lock

HOLDER = """
import os, sys, time
from hpo.system.kernel_lock import KernelLock
lock = KernelLock(sys.argv[1])
lock.acquire()
if sys.argv[2] == "fork":  # a child that outlives us, holding an inherited descriptor
    if os.fork() == 0:
        time.sleep(30)
        os._exit(0)
print("held", flush=True)
if sys.argv[2] == "release":
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
    sys.stdin.readline()
elif sys.argv[2] == "fork":
    os._exit(0)  # dies holding it
else:
    time.sleep(60)  # killed holding it
"""


def holder(path: Path, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_another_process_is_refused_while_held_and_named(tmp_path: Path) -> None:
    journal = tmp_path / "s.journal"
    proc = holder(journal, "release")
    try:
        with pytest.raises(LockTimeout, match=rf"held by pid {proc.pid} on \S+ since"):
            KernelLock(journal).acquire(timeout=0.3)
        assert kernel_holder(str(journal))["pid"] == proc.pid  # type: ignore[index]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "released\n"
        lock = KernelLock(journal)
        assert lock.acquire(timeout=5)
        assert kernel_holder(str(journal))["pid"] == os.getpid()  # type: ignore[index]
        lock.release()
        assert kernel_holder(str(journal)) is None
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("death", ["kill", "fork"])
def test_a_dead_holder_lets_go_at_once_even_with_a_forked_child_alive(tmp_path: Path, death: str) -> None:
    """SIGKILLed mid-hold, or exiting while a forked child (a DataLoader worker) lives on:
    the next process takes the lock without a grace period, and nothing is left behind."""
    journal = tmp_path / "s.journal"
    proc = holder(journal, death)
    if death == "kill":
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = KernelLock(journal)
    assert lock.acquire(timeout=5)  # a file lock of a dead process on another host: 10 s grace
    lock.release()
    subprocess.run(["pkill", "-f", f"{journal}"], check=False)  # the forked child, if any


def test_two_lock_objects_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    """Open-file-description locks: a second object (a reader, another storage) neither
    shares the first's hold nor drops it when its descriptor closes."""
    journal = tmp_path / "s.journal"
    first, second = KernelLock(journal), KernelLock(journal)
    first.acquire()
    with pytest.raises(LockTimeout):
        second.acquire(timeout=0.2)
    os.close(os.open(first.lock_file, os.O_RDONLY))  # POSIX F_SETLK would drop first's lock here
    with pytest.raises(LockTimeout):
        second.acquire(timeout=0.2)
    first.release()
    assert second.acquire(timeout=5)
    second.release()


def test_threads_take_turns_and_the_holder_may_reenter(tmp_path: Path) -> None:
    journal = tmp_path / "s.journal"
    lock, counter = KernelLock(journal), tmp_path / "counter"
    counter.write_text("0")

    def bump() -> None:
        for _ in range(50):
            with lock:
                with lock:  # reentrant, as Optuna's storage takes it inside hpo's budget check
                    counter.write_text(str(int(counter.read_text()) + 1))

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text() == "400"


def test_a_worker_told_to_stop_leaves_a_long_wait(tmp_path: Path) -> None:
    journal = tmp_path / "s.journal"
    proc = holder(journal, "sleep")
    try:
        stop = threading.Event()
        lock = KernelLock(journal, should_stop=stop.is_set)
        threading.Timer(0.2, stop.set).start()
        with pytest.raises(LockWaitAborted, match="asked to stop"):
            lock.acquire()
    finally:
        proc.kill()
        proc.wait()
    assert lock.acquire(timeout=5)  # the abandoned wait left nothing held
    lock.release()


def test_a_child_forked_during_a_wait_does_not_keep_the_lock(tmp_path: Path) -> None:
    """A DataLoader forked while another thread waits for the lock: the wait's descriptor
    is copied into the child; when the lock is granted and released, nothing stays held."""
    journal = tmp_path / "s.journal"
    first, waiter, third = KernelLock(journal), KernelLock(journal), KernelLock(journal)
    first.acquire()
    granted, done = threading.Event(), threading.Event()

    def wait_then_release() -> None:
        with waiter:
            granted.set()
            done.wait(10)

    thread = threading.Thread(target=wait_then_release)
    thread.start()
    deadline = time.monotonic() + 10
    def waiting() -> bool:
        return any(t.name == "hpo-kernel-lock-wait" for t in threading.enumerate())

    while not waiting() and time.monotonic() < deadline:  # the wait is in flight, on its own descriptor
        time.sleep(0.01)
    assert waiting()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only sleeps
        time.sleep(20)
        os._exit(0)
    try:
        first.release()
        assert granted.wait(10)
        done.set()
        thread.join(10)
        assert third.acquire(timeout=5)  # the child's copy holds nothing
        third.release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_an_interrupt_during_a_wait_leaves_nothing_held(tmp_path: Path) -> None:
    """A second Ctrl-C lands while the worker waits: the wait ends with KeyboardInterrupt,
    and the lock, granted later to the abandoned wait, is let go."""
    journal = tmp_path / "s.journal"
    proc = holder(journal, "release")
    lock = KernelLock(journal)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            lock.acquire()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "released\n"
        assert lock.acquire(timeout=5)
        lock.release()
    finally:
        proc.kill()
        proc.wait()


# -- which lock a journal uses ---------------------------------------------------------------


def prove(cwd: Path, env: dict[str, str]) -> None:
    result = run_hpo(["doctor", "--prove-lock"], cwd, env)
    assert result.returncode == 0, result.stderr
    assert "record locks are honoured in" in result.stdout


def test_prove_lock_on_local_disk_writes_the_proof(toy: Any) -> None:
    cwd, env = toy()
    prove(cwd, env)
    proof = json.loads((cwd / "optuna_journal" / PROOF_NAME).read_text())
    assert (proof["verdict"], proof["refused_while_held"], len(proof["clients"])) == ("honoured", 6, 1)


@pytest.mark.parametrize("proved", [False, True])
def test_a_new_journal_on_local_disk_takes_the_record_lock_with_an_exact_budget(toy: Any, proved: bool) -> None:
    """One kernel arbitrates a local disk's record locks: nothing to prove there (a proof
    changes nothing), and no lock file is created and removed per append."""
    cwd, env = toy(MAX_TRIALS="9", OPTUNA_PRUNER="none", TOY_STEP_SECONDS="0.01", HPO_FLUSH_SECONDS="0.02")
    if proved:
        prove(cwd, env)
    result = run_hpo(["run", "--workers", "3"], cwd, env)
    assert result.returncode == 0, result.stderr
    journal = cwd / "optuna_journal" / "toy.journal"
    assert Path(f"{journal}.flock").exists() and not Path(f"{journal}.lock").exists()
    assert (cwd / "optuna_journal" / PROOF_NAME).exists() == proved
    assert Counter(t.state.name for t in load_study(journal, "toy").trials) == Counter({"COMPLETE": 9})
    doctor = run_hpo(["doctor"], cwd, env)
    assert "journal (record lock): free" in doctor.stdout


def test_off_a_local_disk_the_record_lock_needs_a_proof(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder seen through NFS (a local disk the server exports): a new journal takes the
    lock file; insisting on the record lock, or following a journal the server's own node
    started with it, is refused (exit 2) until record locks are proved there."""
    from hpo.journal import locking
    from hpo.journal.filesystem import Mount

    monkeypatch.setattr(locking, "filesystem_of", lambda directory, *a: Mount(str(directory), "/srv", "nfs4", "srv:/"))
    journal = tmp_path / "s.journal"
    assert lock_kind(journal, "auto") == "file"
    with pytest.raises(UsageError, match=r"HPO_JOURNAL_LOCK='fcntl', but .* has no hpo-lock-proof.json"):
        lock_kind(journal, "fcntl")
    kernel_lock_file(journal).touch()  # started with the record lock on the server's own disk
    with pytest.raises(UsageError, match=r"uses the record lock .* on nfs4 with no hpo-lock-proof.json: record locks "
                                         r"may not be honoured between this node and the one that started it"):
        lock_kind(journal, "auto")
    (tmp_path / PROOF_NAME).write_text(json.dumps({"verdict": "honoured", "fstype": "nfs4"}))
    assert lock_kind(journal, "auto") == "fcntl"


def test_the_lock_file_stays_on_local_disk_when_asked(toy: Any) -> None:
    cwd, env = toy(MAX_TRIALS="2", HPO_JOURNAL_LOCK="file")
    assert run_hpo(["worker"], cwd, env).returncode == 0
    journal = cwd / "optuna_journal" / "toy.journal"
    assert not Path(f"{journal}.flock").exists() and Counter(t.state.name for t in load_study(
        journal, "toy").trials) == Counter({"COMPLETE": 2})
    result = run_hpo(["worker"], cwd, {**env, "HPO_JOURNAL_LOCK": "auto", "MAX_TRIALS": "3"})
    assert result.returncode == 0 and not Path(f"{journal}.flock").exists()  # auto follows the journal


@pytest.mark.parametrize(("proof", "first", "then", "message"), [
    (True, "auto", "file", "HPO_JOURNAL_LOCK='file', but {dir}/toy.journal was started with the record lock "
                           "({dir}/toy.journal.flock): every writer of one journal must use the same lock; valid "
                           "here: auto, fcntl"),
    (True, "file", "fcntl", "HPO_JOURNAL_LOCK='fcntl', but {dir}/toy.journal was started with the lock file: every "
                            "writer of one journal must use the same lock; valid here: auto, file"),
])
@pytest.mark.parametrize("command", ["run", "worker"])
def test_a_worker_whose_lock_contradicts_its_journal_is_refused_and_writes_nothing(
        toy: Any, proof: bool, first: str | None, then: str, message: str, command: str) -> None:
    cwd, env = toy(MAX_TRIALS="1")
    if proof:
        prove(cwd, env)
    if first is not None:
        assert run_hpo(["worker"], cwd, {**env, "HPO_JOURNAL_LOCK": first}).returncode == 0
    before = tree(cwd)
    result = run_hpo([command], cwd, {**env, "HPO_JOURNAL_LOCK": then, "MAX_TRIALS": "2"})
    assert result.returncode == 2, result.stderr
    assert message.format(dir="optuna_journal") in result.stderr
    assert tree(cwd) == before


def test_two_workers_starting_one_journal_with_different_locks_do_not_both_write(tmp_path: Path) -> None:
    """Worker B chose the lock file for a new journal; worker A, with a proof, then made it
    record-locked before B's first append: B's append is refused and writes nothing. And
    a journal started with the lock file meanwhile is not turned record-locked."""
    journal = tmp_path / "s.journal"
    b = GuardedFileBackend(str(journal), lock_obj=make_lock(journal))  # chose "file": journal new, no proof
    (tmp_path / PROOF_NAME).write_text(json.dumps({"verdict": "honoured", "fstype": filesystem_of(tmp_path).fstype}))
    assert isinstance(journal_lock(journal), KernelLock)  # A: record lock, .flock created
    with pytest.raises(StorageError, match=r"was started with the record lock .* every writer of one journal"):
        b.append_logs([{"op_code": 0, "worker_id": "b", "study_name": "s", "directions": [1]}])
    assert journal.read_bytes() == b""
    # The other order: B's first append landed before A looks; A keeps the lock file.
    other = tmp_path / "t.journal"
    GuardedFileBackend(str(other), lock_obj=make_lock(other)).append_logs(
        [{"op_code": 0, "worker_id": "b", "study_name": "s", "directions": [1]}])
    assert _adopt_record_lock(other, "auto", None) == "file" and not kernel_lock_file(other).exists()
    with pytest.raises(UsageError, match="HPO_JOURNAL_LOCK='fcntl', but .* was started meanwhile with the lock file"):
        _adopt_record_lock(other, "fcntl", None)


def test_a_bad_lock_setting_names_the_valid_ones(toy: Any) -> None:
    cwd, env = toy()
    result = run_hpo(["worker"], cwd, {**env, "HPO_JOURNAL_LOCK": "flock"})
    assert result.returncode == 2
    assert "HPO_JOURNAL_LOCK='flock' is not valid; valid: auto, file, fcntl" in result.stderr
    assert tree(cwd) == ["toy.yaml"]


@pytest.mark.cluster
def test_prove_lock_refuses_a_shared_folder_without_a_second_client(toy: Any) -> None:
    """A network folder proved through one client proves nothing for other nodes; through
    two client mounts of the dev cluster's volume it is proved."""
    from multinode import client_pair, require_multinode

    require_multinode(1)
    pair = client_pair("default")
    assert pair is not None
    cwd, env = toy()
    shared = pair[0] / f"prove-{os.getpid()}-{time.time_ns()}"
    try:
        # Unproved, a network folder keeps the lock file, and insisting on the record lock is refused.
        result = run_hpo(["worker"], cwd, {**env, "JOURNAL_DIR": str(shared), "HPO_JOURNAL_LOCK": "fcntl"})
        assert result.returncode == 2
        assert (f"HPO_JOURNAL_LOCK='fcntl', but {shared} has no hpo-lock-proof.json proving that record locks are "
                "honoured across nodes there; run `hpo doctor --prove-lock`") in result.stderr
        assert not (shared / "toy.journal").exists() and tree(cwd) == ["toy.yaml"]
        assert lock_kind(shared / "toy.journal", "auto") == "file"
        result = run_hpo(["doctor", "--prove-lock"], cwd, {**env, "JOURNAL_DIR": str(shared)})
        assert result.returncode == 2
        assert "is on fuse.glusterfs, shared between nodes: prove it from two nodes" in result.stderr
        via = pair[1] / shared.relative_to(pair[0])
        result = run_hpo(["doctor", "--prove-lock", "--via", str(via)], cwd, {**env, "JOURNAL_DIR": str(shared)})
        assert result.returncode == 0, result.stderr
        proof = json.loads((shared / PROOF_NAME).read_text())
        assert (proof["fstype"], len(proof["clients"])) == ("fuse.glusterfs", 2)
    finally:
        subprocess.run(["rm", "-rf", str(shared)], check=False)

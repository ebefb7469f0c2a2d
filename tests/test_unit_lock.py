"""The owner lock (hpo/system/lock.py) in process, on real lock files in ``tmp_path``: who
owns a lock, when a holder is judged gone and its lock broken, the fence before a write,
release that never removes another's lock, and what ``hpo doctor`` says of a lock. Another
host's holder is a file naming another host; the clock of the grace period is faked, so no
test waits for a grace period. A bug here lets two workers write the journal at once."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable

import pytest

from hpo.errors import LockWaitAborted, StorageError
from hpo.system import lock as L
from hpo.system.lock import LockLost, LockTimeout, OwnerLock, describe_holder, describe_lock, held, holder, make_lock

HOST = socket.gethostname()


class Clock:
    """The lock module's monotonic clock and sleep: a sleep moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(L, "time", types.SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep, time=time.time))
    return fake


def plant(path: Path, owner: dict[str, Any] | None = None, raw: bytes | None = None) -> Path:
    """A lock file for ``path``, as another holder left it."""
    lock_file = Path(f"{path}.lock")
    lock_file.write_bytes(raw if raw is not None else json.dumps(owner).encode())
    return lock_file


def elsewhere(token: str = "t" * 32, pid: int = 7) -> dict[str, Any]:
    return {"host": "node-b", "pid": pid, "token": token, "acquired_at": "2026-01-01T00:00:00.000+00:00"}


def uncertain(lock: OwnerLock) -> None:
    """Our hold was confirmed a refresh period ago: the fence reads the lock file again
    (a hold confirmed just now is certain without that read)."""
    lock._confirmed_at -= lock.refresh_seconds


def stalled(lock: OwnerLock) -> None:
    """We stalled for a grace period since our hold was confirmed (only then can another
    process have broken it): release takes the careful path, not one unlink."""
    lock._confirmed_at -= lock.grace_seconds


def files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.fixture
def alive(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """This host's process table, faked: the pids in the set are alive."""
    pids: set[int] = set()
    monkeypatch.setattr(L, "process_alive", lambda pid, start=None: pid in pids)
    return pids


# -- what a look at a lock file sees -----------------------------------------------------------
def test_a_look_reads_an_owner_record(tmp_path: Path) -> None:
    lock_file = plant(tmp_path / "j", elsewhere())
    seen = L._look(str(lock_file))
    assert seen is not None and seen.owner() == elsewhere() and seen.token() == "t" * 32 and seen.kind == "hpo"
    st = os.stat(lock_file)
    assert (seen.ino, seen.mtime_ns, seen.link) == (st.st_ino, st.st_mtime_ns, None)
    assert seen.identity == (st.st_ino, lock_file.read_bytes(), None)
    assert seen.state == (st.st_ino, st.st_mtime_ns, lock_file.read_bytes(), None)
    assert L._look(str(tmp_path / "none.lock")) is None


def test_a_look_reads_a_long_record_whole(tmp_path: Path) -> None:
    owner = {**elsewhere(), "note": "x" * 10_000}
    seen = L._look(str(plant(tmp_path / "j", owner)))
    assert seen is not None and seen.owner() == owner


def test_a_look_sees_optunas_symlink_lock_as_the_link(tmp_path: Path) -> None:
    os.symlink("journal/j", tmp_path / "j.lock")  # relative: dangles from here
    seen = L._look(str(tmp_path / "j.lock"))
    assert seen is not None and (seen.link, seen.content, seen.kind) == ("journal/j", b"", "optuna-symlink")
    assert seen.owner() is None and seen.token() is None
    assert seen.ino == os.lstat(tmp_path / "j.lock").st_ino


def test_a_symlink_to_an_hpo_record_is_still_a_foreign_lock(tmp_path: Path) -> None:
    (tmp_path / "target").write_text(json.dumps(elsewhere()))
    os.symlink(str(tmp_path / "target"), tmp_path / "j.lock")
    seen = L._look(str(tmp_path / "j.lock"))
    assert seen is not None and seen.kind == "optuna-symlink" and seen.owner() is None


@pytest.mark.parametrize(("raw", "kind"), [
    (b"", "empty-file"), (b"garbage", "unknown-file"), (b"[1, 2]", "unknown-file"),
    (json.dumps({"host": "h", "pid": "7", "token": "t"}).encode(), "unknown-file"),
    (json.dumps({"host": 3, "pid": 7, "token": "t"}).encode(), "unknown-file"),
    (json.dumps({"host": "h", "pid": 7, "token": None}).encode(), "unknown-file"),
    (json.dumps({"host": "h", "pid": 7}).encode(), "unknown-file"),
    (json.dumps({"pid": 7, "token": "t"}).encode(), "unknown-file"),
    (json.dumps({"host": "h", "pid": 7, "token": "t"}).encode(), "hpo"),
])
def test_only_a_whole_owner_record_names_an_owner(tmp_path: Path, raw: bytes, kind: str) -> None:
    seen = L._look(str(plant(tmp_path / "j", raw=raw)))
    assert seen is not None and seen.kind == kind
    assert (seen.owner() is not None) == (kind == "hpo")
    assert seen.token() == ("t" if kind == "hpo" else None)


def test_a_look_link_of_a_vanished_or_replaced_link_is_none(tmp_path: Path) -> None:
    assert L._look_link(str(tmp_path / "gone")) is None
    (tmp_path / "plain").write_text("")
    assert L._look_link(str(tmp_path / "plain")) is None  # readlink: EINVAL


def test_a_look_link_raises_other_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    os.symlink("x", tmp_path / "l")
    monkeypatch.setattr(L.os, "readlink", lambda p: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError) as err:
        L._look_link(str(tmp_path / "l"))
    assert err.value.errno == errno.EIO


def test_a_look_through_a_file_in_the_path_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        L._look(str(tmp_path / "f" / "x.lock"))


@pytest.mark.parametrize(("owner", "text"), [
    (None, "an unknown holder (empty or foreign lock file)"),
    ({"pid": 7, "host": "n1", "acquired_at": "noon"}, "pid 7 on n1 (since noon)"),
    ({"pid": 7, "host": "n1"}, "pid 7 on n1 (since ?)"),
])
def test_a_holder_is_described_by_pid_host_and_time(owner: dict[str, Any] | None, text: str) -> None:
    assert L._describe(owner) == text


# -- retrying a volatile error -----------------------------------------------------------------
def test_volatile_errors_are_retried_until_the_action_succeeds(clock: Clock) -> None:
    calls: list[int] = []

    def action() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise OSError([errno.ESTALE, errno.EIO, errno.ENOENT][len(calls) - 1], "changed under us")
        return "done"

    assert L._retry_volatile(action, 5.0) == "done"
    assert clock.sleeps == [0.001, 0.002, 0.004]


def test_the_sleep_between_retries_doubles_up_to_fifty_ms(clock: Clock) -> None:
    with pytest.raises(OSError):
        L._retry_volatile(lambda: (_ for _ in ()).throw(OSError(errno.ESTALE, "stale")), 0.3)
    assert clock.sleeps[:7] == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05] and max(clock.sleeps) == 0.05
    assert clock.now - 1000.0 == pytest.approx(sum(clock.sleeps)) and 0.3 <= sum(clock.sleeps) < 0.36


def test_other_errors_are_raised_at_once(clock: Clock) -> None:
    with pytest.raises(PermissionError):
        L._retry_volatile(lambda: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")), 5.0)
    assert clock.sleeps == []


def test_a_volatile_error_past_the_deadline_is_raised(clock: Clock) -> None:
    with pytest.raises(OSError) as err:
        L._retry_volatile(lambda: (_ for _ in ()).throw(OSError(errno.EIO, "io")), 0.0)
    assert err.value.errno == errno.EIO and clock.sleeps == []


def test_a_moved_file_that_looks_gone_is_looked_at_again(tmp_path: Path, clock: Clock,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    tomb = plant(tmp_path / "j", elsewhere())
    real, looks = L._look, []
    monkeypatch.setattr(L, "_look", lambda p: (looks.append(p), None if len(looks) < 3 else real(p))[1])
    assert L._look_moved(str(tomb), 5.0).owner() == elsewhere() and len(looks) == 3


def test_a_moved_file_that_stays_gone_raises(tmp_path: Path, clock: Clock) -> None:
    with pytest.raises(FileNotFoundError):
        L._look_moved(str(tmp_path / "never"), 0.01)


def test_unlink_quietly_removes_or_finds_it_removed(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("")
    L._unlink_quietly(str(tmp_path / "t"))
    L._unlink_quietly(str(tmp_path / "t"))
    assert files(tmp_path) == []


def test_unlink_quietly_retries_a_false_enoent(tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t").write_text("")
    real, calls = os.unlink, []

    def unlink(path: str) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise FileNotFoundError(errno.ENOENT, "false")
        real(path)

    monkeypatch.setattr(L.os, "unlink", unlink)
    L._unlink_quietly(str(tmp_path / "t"))
    assert len(calls) == 2 and files(tmp_path) == []


# -- the lock's own parameters -----------------------------------------------------------------
@pytest.mark.parametrize(("grace", "refresh", "message"), [
    (0, 1, "grace_seconds and refresh_seconds must be positive"),
    (-1, 1, "grace_seconds and refresh_seconds must be positive"),
    (10, 0, "grace_seconds and refresh_seconds must be positive"),
    (10, -1, "grace_seconds and refresh_seconds must be positive"),
    (2.9, 1, "refresh_seconds=1 must be at most a third of grace_seconds=2.9"),
])
def test_bad_lock_parameters_are_refused(tmp_path: Path, grace: float, refresh: float, message: str) -> None:
    with pytest.raises(ValueError) as err:
        OwnerLock(tmp_path / "j", grace_seconds=grace, refresh_seconds=refresh)
    assert str(err.value) == message


def test_the_lock_file_and_the_defaults(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j", grace_seconds=3, refresh_seconds=1)  # exactly a third
    assert lock.lock_file == str(tmp_path / "j.lock")
    default = OwnerLock(tmp_path / "j")
    assert (default.grace_seconds, default.refresh_seconds, default.should_stop) == (10.0, 1.0, None)
    stop = lambda: True  # noqa: E731
    made = make_lock(tmp_path / "s", should_stop=stop)
    assert (made.lock_file, made.grace_seconds, made.refresh_seconds, made.should_stop) == (
        str(tmp_path / "s.lock"), 10.0, 1.0, stop)


# -- taking and giving back --------------------------------------------------------------------
def test_a_held_lock_file_names_its_owner(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j")
    assert lock.acquire() is True
    try:
        record = json.loads((tmp_path / "j.lock").read_text())
        assert (record["host"], record["pid"], record["token"]) == (HOST, os.getpid(), lock._token)
        assert record["start"] == L.proc_stat(os.getpid())[1]  # type: ignore[index]
        assert len(record["token"]) == 32 and record["acquired_at"].endswith("+00:00")
        assert record["token"] in L._HELD_TOKENS
    finally:
        lock.release()
    assert files(tmp_path) == [] and record["token"] not in L._HELD_TOKENS and lock._token is None


def test_the_lock_is_reentrant_in_its_thread(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j")
    with lock:
        token = lock._token
        with held(lock):
            assert lock._depth == 2 and lock._token == token
        assert (tmp_path / "j.lock").exists() and lock._depth == 1
    assert not (tmp_path / "j.lock").exists() and lock._depth == 0 and lock._owner_thread is None


def test_held_gives_the_lock_back_when_the_block_raises(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j")
    with pytest.raises(KeyError):
        with held(lock):
            raise KeyError("x")
    assert files(tmp_path) == []
    lock.acquire()  # free again
    lock.release()


def test_another_thread_waits_and_may_not_release(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j")
    out: dict[str, Any] = {}

    def other() -> None:
        try:
            lock.release()
        except RuntimeError as exc:
            out["release"] = str(exc)
        try:
            lock.acquire(timeout=0.05)
        except LockTimeout as exc:
            out["acquire"] = str(exc)
        try:
            lock.fence()
        except RuntimeError as exc:
            out["fence"] = str(exc)

    with lock:
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    lock_file = str(tmp_path / "j.lock")
    assert out == {"release": f"{lock_file}: release() by a thread that does not hold it",
                   "acquire": f"{lock_file}: not acquired in 0.05 s (held by another thread of this process)",
                   "fence": f"{lock_file}: fence() by a thread that does not hold it"}


def test_release_or_fence_of_a_lock_not_held_is_an_error(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j")
    with pytest.raises(RuntimeError, match="release\\(\\) by a thread"):
        lock.release()
    with pytest.raises(RuntimeError, match="fence\\(\\) by a thread"):
        lock.fence()


def test_a_lock_that_cannot_be_created_is_a_storage_error(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "missing" / "j")
    with pytest.raises(StorageError) as err:
        lock.acquire()
    assert str(err.value) == f"cannot create lock file {tmp_path / 'missing' / 'j.lock'}: No such file or directory"
    assert lock._depth == 0
    assert not L._HELD_TOKENS & {lock._token or ""}
    (tmp_path / "missing").mkdir()
    with lock:  # the thread lock was given back
        pass


def test_a_failed_acquire_gives_back_its_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = OwnerLock(tmp_path / "j")
    before = set(L._HELD_TOKENS)
    monkeypatch.setattr(lock, "_wait_and_create", lambda token, deadline: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        lock.acquire()
    assert L._HELD_TOKENS == before


@pytest.mark.parametrize(("err", "left"), [(errno.ENOSPC, []), (errno.ESTALE, ["j.lock"])])
def test_a_write_error_removes_the_lock_file_unless_it_may_have_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        err: int, left: list[str]) -> None:
    """Disk full: no ownerless lock is left. A volatile error: the file may be another's
    now, so it stays, and the caller looks at it again."""
    lock = OwnerLock(tmp_path / "j")
    lock._identity()
    monkeypatch.setattr(L.os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(err, os.strerror(err))))
    with pytest.raises((OSError, StorageError)) as raised:
        lock._try_create(lock.lock_file, "tok")
    assert files(tmp_path) == left
    if err == errno.ENOSPC:
        assert raised.type is StorageError
        assert str(raised.value) == f"cannot write lock file {lock.lock_file}: {os.strerror(err)}"
    else:
        assert raised.value.errno == err and not isinstance(raised.value, StorageError)


def test_a_close_error_after_the_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = OwnerLock(tmp_path / "j")
    lock._identity()
    real = os.close
    errors = [OSError(errno.EIO, "I/O"), OSError(errno.EDQUOT, "Quota")]

    def close(fd: int) -> None:
        real(fd)
        raise errors.pop(0)

    monkeypatch.setattr(L.os, "close", close)
    with pytest.raises(OSError) as volatile:
        lock._try_create(lock.lock_file, "a")
    assert volatile.value.errno == errno.EIO and not isinstance(volatile.value, StorageError)
    with pytest.raises(StorageError) as err:
        lock._try_create(str(tmp_path / "k.lock"), "b")
    assert str(err.value) == f"cannot write lock file {tmp_path / 'k.lock'}: Quota"


def test_a_volatile_create_error_in_an_existing_folder_is_looked_at_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = OwnerLock(tmp_path / "j")
    monkeypatch.setattr(L.os, "open", lambda *a: (_ for _ in ()).throw(OSError(errno.ESTALE, "Stale")))
    with pytest.raises(OSError) as err:
        lock._try_create(lock.lock_file, "t")
    assert err.value.errno == errno.ESTALE and not isinstance(err.value, StorageError)
    with pytest.raises(StorageError):
        lock._try_create(str(tmp_path / "nofolder" / "j.lock"), "t")


def test_a_create_that_reported_a_failure_but_landed_is_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = OwnerLock(tmp_path / "j")
    real = lock._try_create

    def try_create(path: str, token: str) -> bool:
        created = real(path, token)
        if created:  # NFS: the create landed, the reply was lost
            raise OSError(errno.EIO, "reported failed")
        return created

    monkeypatch.setattr(lock, "_try_create", try_create)
    with lock:
        assert holder(str(tmp_path / "j"))["token"] == lock._token  # type: ignore[index]
    assert files(tmp_path) == []


# -- judging a holder --------------------------------------------------------------------------
def test_a_live_holder_on_this_host_is_never_broken(tmp_path: Path, alive: set[int], clock: Clock) -> None:
    alive.add(4242)
    plant(tmp_path / "j", {"host": HOST, "pid": 4242, "token": "x", "start": 99})
    with pytest.raises(LockTimeout) as err:
        OwnerLock(tmp_path / "j", grace_seconds=1, refresh_seconds=0.2).acquire(timeout=100)
    assert str(err.value).startswith(f"{tmp_path / 'j.lock'}: not acquired in 100.0 s; held by pid 4242 on {HOST} ")
    assert json.loads((tmp_path / "j.lock").read_text())["pid"] == 4242


def test_a_dead_holder_on_this_host_is_broken_at_once(tmp_path: Path, alive: set[int], clock: Clock,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    plant(tmp_path / "j", {"host": HOST, "pid": 4242, "token": "x", "start": 99})
    lock = OwnerLock(tmp_path / "j", grace_seconds=1, refresh_seconds=0.2)
    with lock:
        assert holder(str(tmp_path / "j"))["token"] == lock._token  # type: ignore[index]
        assert clock.now == 1000.0  # no wait
    assert files(tmp_path) == []
    assert any(r.levelname == "WARNING" and "its holder, pid 4242 on this host, is gone" in r.message
               for r in caplog.records)


def test_the_holders_start_time_is_asked_of_the_process_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[int, Any]] = []
    monkeypatch.setattr(L, "process_alive", lambda pid, start=None: asked.append((pid, start)) or True)
    lock = OwnerLock(tmp_path / "j")
    lock._identity()
    seen = L._look(str(plant(tmp_path / "j", {"host": HOST, "pid": 4242, "token": "x", "start": 99})))
    assert lock._stale_reason(lock.lock_file, seen) is None  # type: ignore[arg-type]
    assert asked == [(4242, 99)]


def test_a_lock_left_by_an_earlier_process_with_our_pid_is_broken(tmp_path: Path, clock: Clock) -> None:
    plant(tmp_path / "j", {"host": HOST, "pid": os.getpid(), "token": "not-held-by-us"})
    lock = OwnerLock(tmp_path / "j", grace_seconds=1, refresh_seconds=0.2)
    lock._identity()
    seen = L._look(lock.lock_file)
    assert lock._stale_reason(lock.lock_file, seen) == "left by an earlier process with our pid"  # type: ignore[arg-type]
    with lock:
        assert clock.now == 1000.0


def test_our_own_held_lock_never_looks_stale(tmp_path: Path) -> None:
    mine = OwnerLock(tmp_path / "j")
    with mine:
        judge = OwnerLock(tmp_path / "j")
        judge._identity()
        assert judge._stale_reason(judge.lock_file, L._look(judge.lock_file)) is None  # type: ignore[arg-type]


def test_another_hosts_lock_is_broken_after_grace_of_our_clock(tmp_path: Path, clock: Clock) -> None:
    lock_file = plant(tmp_path / "j", elsewhere())
    judge = OwnerLock(tmp_path / "j", grace_seconds=3, refresh_seconds=1)
    judge._identity()
    seen = L._look(str(lock_file))
    assert judge._stale_reason(str(lock_file), seen) is None  # type: ignore[arg-type]  # first sight
    clock.now += 2.9
    assert judge._stale_reason(str(lock_file), seen) is None  # type: ignore[arg-type]
    clock.now += 0.1
    assert judge._stale_reason(str(lock_file), seen) == "unchanged for 3.0 s (grace 3 s)"  # type: ignore[arg-type]


def test_a_refreshed_lock_of_another_host_starts_its_grace_again(tmp_path: Path, clock: Clock) -> None:
    lock_file = plant(tmp_path / "j", elsewhere())
    judge = OwnerLock(tmp_path / "j", grace_seconds=3, refresh_seconds=1)
    judge._identity()
    assert judge._stale_reason(str(lock_file), L._look(str(lock_file))) is None  # type: ignore[arg-type]
    clock.now += 2
    os.utime(lock_file, ns=(0, os.stat(lock_file).st_mtime_ns + 1_000_000))
    refreshed = L._look(str(lock_file))
    assert judge._stale_reason(str(lock_file), refreshed) is None  # type: ignore[arg-type]
    clock.now += 2
    assert judge._stale_reason(str(lock_file), refreshed) is None  # type: ignore[arg-type]
    clock.now += 1
    assert judge._stale_reason(str(lock_file), refreshed) is not None  # type: ignore[arg-type]


def test_acquire_breaks_another_hosts_silent_lock_after_grace(tmp_path: Path, clock: Clock,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hpo")
    plant(tmp_path / "j", elsewhere())
    lock = OwnerLock(tmp_path / "j", grace_seconds=3, refresh_seconds=1)
    with lock:
        waited = clock.now - 1000.0
        assert 3.0 <= waited < 3.1  # the grace period, then at most one more sleep
        assert holder(str(tmp_path / "j"))["token"] == lock._token  # type: ignore[index]
    assert files(tmp_path) == []
    assert f"broke stale lock {tmp_path / 'j.lock'} held by pid 7 on node-b (since 2026-01-01T00:00:00.000+00:00): " \
           "unchanged for 3.0 s (grace 3 s)" in caplog.messages
    assert any(m.startswith(f"waiting 1 s for {tmp_path / 'j.lock'}: held by pid 7 on node-b") for m in caplog.messages)
    assert max(clock.sleeps) == 0.05 and clock.sleeps[0] == 0.001


def test_a_long_wait_is_logged_once_then_every_ten_seconds(tmp_path: Path, clock: Clock,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hpo.system.lock")
    plant(tmp_path / "j", elsewhere())
    with pytest.raises(LockTimeout):
        OwnerLock(tmp_path / "j", grace_seconds=60, refresh_seconds=1).acquire(timeout=25)
    waits = [(r.levelname, r.message.split(" for ")[0]) for r in caplog.records if r.message.startswith("waiting")]
    assert waits == [("INFO", "waiting 1 s"), ("WARNING", "waiting 11 s"), ("WARNING", "waiting 21 s")]
    first = next(r.message for r in caplog.records if r.message.startswith("waiting"))
    assert first.startswith(f"waiting 1 s for {tmp_path / 'j.lock'}: held by pid 7 on node-b (refreshed ")


def test_a_timeout_names_the_holder(tmp_path: Path, clock: Clock) -> None:
    plant(tmp_path / "j", elsewhere())
    with pytest.raises(LockTimeout) as err:
        OwnerLock(tmp_path / "j", grace_seconds=60, refresh_seconds=1).acquire(timeout=2)
    assert str(err.value) == (f"{tmp_path / 'j.lock'}: not acquired in 2.0 s; held by pid 7 on node-b (refreshed "
                              f"{describe_holder(holder(str(tmp_path / 'j'))).split('refreshed ')[1]}")


@pytest.mark.parametrize("raw", [b"", b"not json"])
def test_a_foreign_or_half_written_lock_is_broken_after_grace(tmp_path: Path, clock: Clock, raw: bytes) -> None:
    plant(tmp_path / "j", raw=raw)
    with OwnerLock(tmp_path / "j", grace_seconds=2, refresh_seconds=0.5):
        assert 2.0 <= clock.now - 1000.0 < 2.1


def test_a_lock_released_while_we_look_is_taken_at_once(tmp_path: Path, clock: Clock,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    plant(tmp_path / "j", elsewhere())
    real = L._look

    def look(path: str) -> Any:
        seen = real(path)
        if path.endswith("j.lock") and seen is not None and seen.owner() == elsewhere():
            os.unlink(path)  # its holder releases it just after our look
        return seen

    monkeypatch.setattr(L, "_look", look)
    lock = OwnerLock(tmp_path / "j", grace_seconds=3, refresh_seconds=1)
    with lock:
        assert clock.now < 1000.1


def test_a_lock_that_vanishes_on_every_look_does_not_spin(tmp_path: Path, clock: Clock,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A create that fails on a file no look can see (a negative-entry cache): sleep between tries."""
    lock = OwnerLock(tmp_path / "j", grace_seconds=3, refresh_seconds=1)
    monkeypatch.setattr(lock, "_try_create", lambda path, token: False)
    monkeypatch.setattr(L, "_look", lambda path: None)
    with pytest.raises(LockTimeout):
        lock.acquire(timeout=1)
    assert clock.sleeps[:3] == [0.001, 0.002, 0.004] and max(clock.sleeps) == 0.05 and len(clock.sleeps) < 40


def test_a_wait_that_sees_volatile_errors_goes_on(tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hpo.system.lock")
    lock = OwnerLock(tmp_path / "j", grace_seconds=3, refresh_seconds=1)
    real, calls = lock._try_create, []

    def try_create(path: str, token: str) -> bool:
        calls.append(1)
        if len(calls) < 400:
            raise OSError(errno.ESTALE, "Stale file handle")
        return real(path, token)

    monkeypatch.setattr(lock, "_try_create", try_create)
    with lock:
        pass
    assert any("(last error: [Errno 116] Stale file handle)" in r.message for r in caplog.records)


def test_a_wait_ends_on_other_errors(tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = OwnerLock(tmp_path / "j")
    monkeypatch.setattr(lock, "_try_create", lambda p, t: (_ for _ in ()).throw(OSError(errno.EACCES, "denied")))
    with pytest.raises(PermissionError):
        lock.acquire()


# -- stopping a wait ---------------------------------------------------------------------------
def test_a_stop_request_ends_a_wait_after_half_a_second(tmp_path: Path, clock: Clock) -> None:
    plant(tmp_path / "j", elsewhere())
    asked: list[float] = []
    lock = OwnerLock(tmp_path / "j", grace_seconds=60, refresh_seconds=1,
                     should_stop=lambda: asked.append(clock.now) or True)
    with pytest.raises(LockWaitAborted) as err:
        lock.acquire()
    assert str(err.value) == f"stopped waiting for {tmp_path / 'j.lock'} after 0.5 s: the process was asked to stop"
    assert asked and min(asked) - 1000.0 >= 0.5
    assert lock._depth == 0
    assert lock._thread_lock.acquire(blocking=False)  # given back


def test_no_stop_request_lets_the_wait_go_on(tmp_path: Path, clock: Clock) -> None:
    plant(tmp_path / "j", elsewhere())
    lock = OwnerLock(tmp_path / "j", grace_seconds=2, refresh_seconds=0.5, should_stop=lambda: False)
    with lock:
        assert clock.now - 1000.0 >= 2.0


def test_a_stop_request_ends_a_wait_for_another_thread(tmp_path: Path) -> None:
    stop = threading.Event()
    lock = OwnerLock(tmp_path / "j", should_stop=stop.is_set)
    out: list[BaseException] = []

    def other() -> None:
        try:
            lock.acquire()
        except BaseException as exc:  # noqa: BLE001
            out.append(exc)

    with lock:
        stop.set()
        thread = threading.Thread(target=other)
        started = time.monotonic()
        thread.start()
        thread.join(5)
        waited = time.monotonic() - started
    assert len(out) == 1 and isinstance(out[0], LockWaitAborted) and 0.5 <= waited < 2


def test_a_thread_wait_with_a_stop_callable_honours_the_timeout(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j", should_stop=lambda: False)
    out: list[str] = []

    def other() -> None:
        try:
            lock.acquire(timeout=0.1)
        except LockTimeout as exc:
            out.append(str(exc))

    with lock:
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(5)
    assert out == [f"{tmp_path / 'j.lock'}: not acquired in 0.1 s (held by another thread of this process)"]
    with lock:  # and the thread that waited holds nothing
        pass


def test_a_thread_with_a_stop_callable_takes_the_lock_when_it_is_free(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j", should_stop=lambda: False)
    assert lock.acquire(timeout=1) is True
    lock.release()


# -- the fence ---------------------------------------------------------------------------------
def test_the_fence_passes_while_the_hold_is_certain(tmp_path: Path) -> None:
    with OwnerLock(tmp_path / "j") as lock:
        lock.fence()
        lock.fence(read_lock_file=False)
        assert lock._fenced_out is False


def test_the_fence_stops_a_holder_silent_for_half_the_grace(tmp_path: Path) -> None:
    with OwnerLock(tmp_path / "j", grace_seconds=10, refresh_seconds=1) as lock:
        lock._confirmed_at = time.monotonic() - 4.9
        lock.fence(read_lock_file=False)
        lock._confirmed_at = time.monotonic() - 5.0
        with pytest.raises(LockLost) as err:
            lock.fence(read_lock_file=False)
        assert str(err.value).startswith(f"{tmp_path / 'j.lock'}: our hold was last confirmed 5.0 s ago, past half "
                                         "the grace period (10 s): another node may have broken it")
        assert lock._fenced_out is True


def test_the_fence_stops_a_holder_whose_lock_was_taken(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j")
    with lock:
        plant(tmp_path / "j", elsewhere())
        uncertain(lock)
        with pytest.raises(LockLost) as err:
            lock.fence()
        assert str(err.value) == (f"{tmp_path / 'j.lock'}: broken while we held it, now pid 7 on node-b "
                                  "(since 2026-01-01T00:00:00.000+00:00)")
        lock.fence(read_lock_file=False)  # the time check alone cannot see it
        os.unlink(tmp_path / "j.lock")
        with pytest.raises(LockLost) as gone:
            lock.fence()
        assert str(gone.value) == f"{tmp_path / 'j.lock'}: broken while we held it, now free"
        assert lock._fenced_out is True


def test_the_fence_stops_a_holder_that_cannot_read_its_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = OwnerLock(tmp_path / "j", grace_seconds=0.4, refresh_seconds=0.1)
    with lock:
        monkeypatch.setattr(L, "_look", lambda p: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        uncertain(lock)
        with pytest.raises(LockLost) as err:
            lock.fence()
        monkeypatch.undo()
        assert str(err.value) == f"{tmp_path / 'j.lock'}: cannot confirm our hold ([Errno 5] I/O error)"
        assert lock._fenced_out is True


def test_a_new_hold_clears_the_fence(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j")
    with lock:
        lock._confirmed_at = 0.0
        with pytest.raises(LockLost):
            lock.fence(read_lock_file=False)
    with lock:
        assert lock._fenced_out is False
        lock.fence()


# -- releasing ---------------------------------------------------------------------------------
def test_release_leaves_another_owners_lock_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = OwnerLock(tmp_path / "j")
    lock.acquire()
    plant(tmp_path / "j", elsewhere())
    stalled(lock)
    lock.release()
    assert json.loads((tmp_path / "j.lock").read_text()) == elsewhere() and files(tmp_path) == ["j.lock"]
    assert (f"{tmp_path / 'j.lock'} was taken over by pid 7 on node-b (since 2026-01-01T00:00:00.000+00:00) while we "
            "held it: it was broken as stale, so another process may have written at the same time") in caplog.messages


def test_release_after_the_fence_stopped_our_write_warns_only(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    lock = OwnerLock(tmp_path / "j")
    lock.acquire()
    plant(tmp_path / "j", elsewhere())
    uncertain(lock)
    with pytest.raises(LockLost):
        lock.fence()
    lock.release()
    assert [(r.levelname, r.message) for r in caplog.records if "taken over" in r.message] == [
        ("WARNING", f"{tmp_path / 'j.lock'} was taken over by pid 7 on node-b (since 2026-01-01T00:00:00.000+00:00) "
                    "while we held it (broken as stale); the fence stopped our write")]


def test_release_of_a_lock_that_vanished_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = OwnerLock(tmp_path / "j")
    lock.acquire()
    os.unlink(tmp_path / "j.lock")
    lock.release()
    assert files(tmp_path) == []
    assert (f"{tmp_path / 'j.lock'} vanished while we held it: it was broken as stale, so another process may have "
            "written at the same time") in caplog.messages


def test_release_that_moved_a_newer_lock_puts_it_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Our lock was replaced between the check and the rename: the newer one goes back."""
    lock = OwnerLock(tmp_path / "j")
    lock.acquire()
    real_rename = os.rename

    def rename(src: str, dst: str) -> None:
        if src.endswith("j.lock"):
            plant(tmp_path / "j", elsewhere())
        real_rename(src, dst)

    monkeypatch.setattr(L.os, "rename", rename)
    stalled(lock)
    lock.release()
    assert json.loads((tmp_path / "j.lock").read_text()) == elsewhere() and files(tmp_path) == ["j.lock"]
    assert any("was taken over by pid 7 on node-b" in m for m in caplog.messages)


def test_release_retries_a_false_enoent_of_its_own_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = OwnerLock(tmp_path / "j")
    lock.acquire()
    real_rename, calls = os.rename, []

    def rename(src: str, dst: str) -> None:
        calls.append(src)
        if len(calls) == 1:
            raise FileNotFoundError(errno.ENOENT, "false")
        real_rename(src, dst)

    monkeypatch.setattr(L.os, "rename", rename)
    stalled(lock)
    lock.release()
    assert len(calls) == 2 and files(tmp_path) == []


def test_put_back_never_replaces_a_newer_lock(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "tomb").write_text("old")
    (tmp_path / "j.lock").write_text("new")
    OwnerLock._put_back(str(tmp_path / "tomb"), str(tmp_path / "j.lock"))
    assert (tmp_path / "j.lock").read_text() == "new" and files(tmp_path) == ["j.lock"]
    assert f"could not put back {tmp_path / 'j.lock'}: a newer lock exists; two holders now" in caplog.messages
    (tmp_path / "tomb").write_text("old")
    os.unlink(tmp_path / "j.lock")
    OwnerLock._put_back(str(tmp_path / "tomb"), str(tmp_path / "j.lock"))
    assert (tmp_path / "j.lock").read_text() == "old" and files(tmp_path) == ["j.lock"]


# -- breaking ----------------------------------------------------------------------------------
def judged(tmp_path: Path, grace: float = 1.0) -> tuple[OwnerLock, L._Seen]:
    lock = OwnerLock(tmp_path / "j", grace_seconds=grace, refresh_seconds=grace / 4)
    lock._identity()
    seen = L._look(lock.lock_file)
    assert seen is not None
    return lock, seen


def test_a_lock_refreshed_since_it_was_judged_is_not_broken(tmp_path: Path) -> None:
    lock_file = plant(tmp_path / "j", elsewhere())
    lock, seen = judged(tmp_path)
    os.utime(lock_file, ns=(0, seen.mtime_ns + 1_000_000))
    assert lock._break_locked(str(lock_file), seen, "stale") is False
    assert files(tmp_path) == ["j.lock"]
    os.unlink(lock_file)
    assert lock._break_locked(str(lock_file), seen, "stale") is True


def test_a_lock_replaced_while_moved_is_put_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock_file = plant(tmp_path / "j", elsewhere())
    lock, seen = judged(tmp_path)
    real_rename = os.rename

    def rename(src: str, dst: str) -> None:
        if dst.endswith(".stale"):
            os.unlink(src)
            plant(tmp_path / "j", elsewhere(token="n" * 32))  # a new holder took it in between
        real_rename(src, dst)

    monkeypatch.setattr(L.os, "rename", rename)
    assert lock._move_and_remove(str(lock_file), seen, "stale") is False
    assert json.loads(lock_file.read_text())["token"] == "n" * 32 and files(tmp_path) == ["j.lock"]


def test_a_lock_gone_before_the_move_counts_as_broken(tmp_path: Path) -> None:
    lock_file = plant(tmp_path / "j", elsewhere())
    lock, seen = judged(tmp_path)
    os.unlink(lock_file)
    assert lock._move_and_remove(str(lock_file), seen, "stale") is True


def test_breaking_forgets_the_watch_of_the_broken_lock(tmp_path: Path, clock: Clock) -> None:
    lock_file = plant(tmp_path / "j", elsewhere())
    lock, seen = judged(tmp_path)
    assert lock._break_if_stale(str(lock_file), seen) is False
    clock.now += 1
    assert lock._break_if_stale(str(lock_file), seen) is True
    assert files(tmp_path) == [] and str(lock_file) not in lock._watch


def test_one_breaker_at_a_time(tmp_path: Path, alive: set[int], clock: Clock,
                               caplog: pytest.LogCaptureFixture) -> None:
    """A live breaker's ``.break`` file stops a second breaker; the lock stays."""
    lock_file = plant(tmp_path / "j", {"host": HOST, "pid": 4242, "token": "x"})
    alive.add(4343)
    (tmp_path / "j.lock.break").write_text(json.dumps({"host": HOST, "pid": 4343, "token": "b"}))
    lock, seen = judged(tmp_path)
    assert lock._break_if_stale(str(lock_file), seen) is False
    assert files(tmp_path) == ["j.lock", "j.lock.break"]
    alive.clear()  # the breaker died mid-break: its .break goes, then the lock can be broken
    with caplog.at_level(logging.WARNING, logger="hpo.system.lock"):
        assert lock._break_if_stale(str(lock_file), seen) is False
    assert files(tmp_path) == ["j.lock"]
    assert (f"broke stale lock {tmp_path / 'j.lock.break'} held by pid 4343 on {HOST} (since ?): its holder, "
            "pid 4343 on this host, is gone") in caplog.messages
    assert lock._break_if_stale(str(lock_file), seen) is True
    assert files(tmp_path) == []


def test_a_break_file_that_vanished_is_left_alone(tmp_path: Path) -> None:
    plant(tmp_path / "j", elsewhere())
    lock, _ = judged(tmp_path)
    lock._break_breaker(str(tmp_path / "j.lock.break"))
    assert files(tmp_path) == ["j.lock"]


def test_the_break_token_is_held_only_while_breaking(tmp_path: Path, alive: set[int]) -> None:
    lock_file = plant(tmp_path / "j", {"host": HOST, "pid": 4242, "token": "x"})
    lock, seen = judged(tmp_path)
    before = set(L._HELD_TOKENS)
    during: list[set[str]] = []
    real = lock._break_locked
    lock._break_locked = lambda *a: during.append(set(L._HELD_TOKENS) - before) or real(*a)  # type: ignore[method-assign]
    assert lock._break_if_stale(str(lock_file), seen) is True
    assert len(during[0]) == 1 and L._HELD_TOKENS == before and files(tmp_path) == []


def test_create_own_is_sure_of_its_answer(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j")
    lock._identity()
    assert lock._create_own(str(tmp_path / "a"), "tok") is True
    assert lock._create_own(str(tmp_path / "a"), "tok") is True  # ours already
    assert lock._create_own(str(tmp_path / "a"), "other") is False


def test_create_own_asks_again_when_a_look_finds_nothing(tmp_path: Path, clock: Clock,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Exists for the create, gone for a look (a false ENOENT): a volatile error, retried."""
    lock = OwnerLock(tmp_path / "j")
    lock._identity()
    (tmp_path / "b").write_text(json.dumps({"host": "h", "pid": 1, "token": "tok"}))
    real, looks = L._look, []
    monkeypatch.setattr(L, "_look", lambda p: (looks.append(p), None if len(looks) == 1 else real(p))[1])
    assert lock._create_own(str(tmp_path / "b"), "tok") is True and len(looks) == 2
    looks.clear()
    monkeypatch.setattr(L, "_look", lambda p: None)
    with pytest.raises(FileNotFoundError):  # gone for every look: raised after grace_seconds
        lock._create_own(str(tmp_path / "b"), "tok")
    assert clock.now - 1000.0 >= lock.grace_seconds


def test_a_stop_is_honoured_from_exactly_half_a_second(tmp_path: Path, clock: Clock) -> None:
    lock = OwnerLock(tmp_path / "j", should_stop=lambda: True)
    lock._stop_requested(clock.now - 0.499)
    with pytest.raises(LockWaitAborted):
        lock._stop_requested(clock.now - 0.5)
    OwnerLock(tmp_path / "j")._stop_requested(clock.now - 100)  # no stop callable: never


# -- the refresher -----------------------------------------------------------------------------
def test_a_holder_refreshes_its_lock_file(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j", grace_seconds=0.3, refresh_seconds=0.01)
    with lock:
        first_mtime = os.stat(lock.lock_file).st_mtime_ns
        first_confirmed = lock._confirmed_at
        deadline = time.monotonic() + 5
        while lock._confirmed_at == first_confirmed and time.monotonic() < deadline:
            time.sleep(0.005)
        assert lock._confirmed_at > first_confirmed
        assert os.stat(lock.lock_file).st_mtime_ns >= first_mtime
        time.sleep(0.2)  # past half the grace: alive only thanks to the refresher
        lock.fence()


def test_touch_refreshes_only_our_own_lock(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = OwnerLock(tmp_path / "j", grace_seconds=30, refresh_seconds=10)
    with lock:
        token = lock._token
        assert token is not None
        lock._confirmed_at = 0.0
        lock._touch(token)
        assert lock._confirmed_at > 0.0
        lock._confirmed_at = 0.0
        plant(tmp_path / "j", elsewhere())
        mtime = os.stat(lock.lock_file).st_mtime_ns
        lock._touch(token)
        assert lock._confirmed_at == 0.0 and os.stat(lock.lock_file).st_mtime_ns == mtime
        assert (f"{lock.lock_file} is no longer ours (now pid 7 on node-b (since 2026-01-01T00:00:00.000+00:00)): "
                "it was broken while held") in caplog.messages
        os.unlink(lock.lock_file)
        lock._touch(token)  # looked gone: a beat skipped
        assert lock._confirmed_at == 0.0 and files(tmp_path) == []


def test_touch_with_a_stale_token_confirms_nothing(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j", grace_seconds=30, refresh_seconds=10)
    with lock:
        token = lock._token
        Path(lock.lock_file).write_text(json.dumps({"host": HOST, "pid": os.getpid(), "token": "new"}))
        lock._token, lock._confirmed_at = "new", 0.0
        lock._touch(token)  # type: ignore[arg-type]
        lock._token = token
        assert lock._confirmed_at == 0.0


def test_touch_skips_a_beat_on_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = OwnerLock(tmp_path / "j", grace_seconds=30, refresh_seconds=10)
    with lock:
        token = lock._token
        lock._confirmed_at = 0.0
        monkeypatch.setattr(L.os, "utime", lambda p: (_ for _ in ()).throw(OSError(errno.EIO, "io")))
        lock._touch(token)  # type: ignore[arg-type]
        assert lock._confirmed_at == 0.0
        monkeypatch.setattr(L, "_look", lambda p: (_ for _ in ()).throw(OSError(errno.ESTALE, "stale")))
        lock._touch(token)  # type: ignore[arg-type]
        assert lock._confirmed_at == 0.0
        monkeypatch.undo()


def test_held_a_period_gives_the_token_of_a_hold_that_lasted(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j", grace_seconds=0.3, refresh_seconds=0.01)
    assert lock._held_a_period() is None
    lock._token = "abc"
    assert lock._held_a_period() == "abc"
    lock._token = None


def test_the_refresher_is_one_thread_per_lock_and_ends_with_it(tmp_path: Path) -> None:
    lock = OwnerLock(tmp_path / "j", grace_seconds=0.3, refresh_seconds=0.01)
    with lock:
        thread = lock._refresher
    with lock:
        assert lock._refresher is thread and thread is not None and thread.is_alive()
    del lock
    thread.join(2)
    assert not thread.is_alive()


def test_after_a_fork_the_identity_is_new(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = OwnerLock(tmp_path / "j")
    with lock:
        pass
    assert lock._refresher is not None
    monkeypatch.setattr(L.os, "getpid", lambda: 999_999_999)
    lock._identity()
    assert (lock._pid, lock._start, lock._refresher) == (999_999_999, None, None)


# -- what hpo doctor says of a lock ------------------------------------------------------------
def test_a_free_lock(tmp_path: Path) -> None:
    assert holder(str(tmp_path / "j")) is None
    assert describe_lock(str(tmp_path / "j")) == "free"


def test_an_hpo_holder_on_this_host(tmp_path: Path) -> None:
    with OwnerLock(tmp_path / "j") as lock:
        info = holder(str(tmp_path / "j"))
        assert info is not None
        assert (info["pid"], info["host"], info["token"], info["kind"], info["alive"], info["lock_file"],
                info["target"]) == (os.getpid(), HOST, lock._token, "hpo", True, str(tmp_path / "j.lock"), None)
        assert 0 <= info["age_seconds"] < 5
        assert describe_holder(info) == f"held by pid {os.getpid()} on {HOST} (refreshed 0 s ago, alive: True)"


def test_a_dead_holder_on_this_host_is_shown_dead(tmp_path: Path, alive: set[int]) -> None:
    plant(tmp_path / "j", {"host": HOST, "pid": 4242, "token": "x"})
    assert holder(str(tmp_path / "j"))["alive"] is False  # type: ignore[index]


def test_a_holders_pid_reused_by_another_process_is_shown_dead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The start time recorded in the lock tells the holder from a later process with its pid."""
    monkeypatch.setattr(L, "process_alive", lambda pid, start=None: pid == 4242 and start in (None, 555))
    plant(tmp_path / "j", {"host": HOST, "pid": 4242, "token": "x", "start": 99})
    assert holder(str(tmp_path / "j"))["alive"] is False  # type: ignore[index]
    plant(tmp_path / "j", {"host": HOST, "pid": 4242, "token": "x", "start": 555})
    assert holder(str(tmp_path / "j"))["alive"] is True  # type: ignore[index]


def test_an_hpo_holder_elsewhere(tmp_path: Path) -> None:
    lock_file = plant(tmp_path / "j", elsewhere())
    old = time.time() - 42
    os.utime(lock_file, (old, old))
    info = holder(str(tmp_path / "j"))
    assert info is not None and info["alive"] is None and round(info["age_seconds"]) == 42
    assert describe_holder(info) == "held by pid 7 on node-b (refreshed 42 s ago, alive: None)"


def test_a_lock_from_the_future_has_age_zero(tmp_path: Path) -> None:
    lock_file = plant(tmp_path / "j", elsewhere())
    os.utime(lock_file, (time.time() + 100, time.time() + 100))
    assert holder(str(tmp_path / "j"))["age_seconds"] == 0.0  # type: ignore[index]


@pytest.mark.parametrize(("make", "text"), [
    (lambda d: os.symlink("d/j", d / "j.lock"),
     "FOREIGN: Optuna JournalFileSymlinkLock, a symlink to 'd/j' (dangling from the lock's folder), unchanged for "
     "0 s; hpo breaks it after 10 s without change"),
    (lambda d: ((d / "j").write_text(""), os.symlink(str(d / "j"), d / "j.lock")),
     "FOREIGN: Optuna JournalFileSymlinkLock, a symlink to '{d}/j' (resolves from the lock's folder), unchanged for "
     "0 s; hpo breaks it after 10 s without change"),
    (lambda d: (d / "j.lock").write_text(""),
     "FOREIGN: empty file (Optuna JournalFileOpenLock), unchanged for 0 s; hpo breaks it after 10 s without change"),
    (lambda d: (d / "j.lock").write_text("?"),
     "FOREIGN: file without an hpo owner, unchanged for 0 s; hpo breaks it after 10 s without change"),
])
def test_a_foreign_lock_is_named_by_kind(tmp_path: Path, make: Callable[[Path], Any], text: str) -> None:
    make(tmp_path)
    info = holder(str(tmp_path / "j"))
    assert info is not None and set(info) == {"lock_file", "kind", "target", "alive", "age_seconds"}
    assert describe_holder(info) == text.format(d=tmp_path)
    assert describe_holder(info, grace_seconds=2.5).endswith("hpo breaks it after 2.5 s without change")


def test_a_lock_that_keeps_changing_under_us_is_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            clock: Clock) -> None:
    monkeypatch.setattr(L, "_look", lambda p: (_ for _ in ()).throw(OSError(errno.ESTALE, "Stale file handle")))
    info = holder(str(tmp_path / "j"))
    assert 1.0 <= clock.now - 1000.0 < 1.06  # a diagnostic looks for one second, then says so
    assert info == {"lock_file": str(tmp_path / "j.lock"), "kind": "unreadable", "target": None, "alive": None,
                    "age_seconds": 0.0, "error": "[Errno 116] Stale file handle"}
    assert describe_holder(info) == "unreadable just now ([Errno 116] Stale file handle): changing under us"


def test_holder_raises_other_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L, "_look", lambda p: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")))
    with pytest.raises(PermissionError):
        holder(str(tmp_path / "j"))

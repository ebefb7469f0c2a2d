"""OwnerLock with real processes: killed, stopped, foreign and many holders.

No test here asserts a duration: "at once" is "without one sleep", "after the grace
period" is read on a clock that moves only when the lock sleeps (:class:`LockClock`),
"without spinning" is "one look per sleep". The timings that docs/faults.md quotes
are measured by ``benchmarks/bench_faults.py``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from conftest import load_study
from hpo.errors import LockWaitAborted
from hpo.journal.repair import doctor
from hpo.journal.scan import scan
from hpo.system import lock as lock_module
from hpo.system.lock import LockTimeout, OwnerLock, describe_lock, holder

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)  # every test here runs real processes: bound each one

# argv: lock path, grace seconds, log file, seconds to hold
HOLD = """
import os, sys, time
from hpo.system.lock import OwnerLock
lock = OwnerLock(sys.argv[1], grace_seconds=float(sys.argv[2]), refresh_seconds=0.2)
print("trying", flush=True)
lock.acquire()
with open(sys.argv[3], "a") as log:
    log.write(f"enter {os.getpid()}\\n")
print("held", flush=True)
time.sleep(float(sys.argv[4]))
with open(sys.argv[3], "a") as log:
    log.write(f"exit {os.getpid()}\\n")
lock.release()
"""

# argv: lock path, log file, cycles
CYCLE = """
import os, sys
from hpo.system.lock import OwnerLock
lock = OwnerLock(sys.argv[1], grace_seconds=1.0, refresh_seconds=0.2)
for _ in range(int(sys.argv[3])):
    lock.acquire()
    for word in ("enter", "exit"):
        with open(sys.argv[2], "a") as log:
            log.write(f"{word} {os.getpid()}\\n")
    lock.release()
"""

# argv: journal path, trials
OPTIMIZE = """
import sys, optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from hpo.system.lock import OwnerLock
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = JournalStorage(JournalFileBackend(sys.argv[1], lock_obj=OwnerLock(sys.argv[1])))
study = optuna.create_study(study_name="crowd", storage=storage, load_if_exists=True)
study.optimize(lambda trial: 0.0, n_trials=int(sys.argv[2]))
"""


def _python(script: str, *args: object, stdout: int | None = subprocess.PIPE,
            stderr: int | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=stdout, stderr=stderr,
                            stdin=subprocess.DEVNULL, text=True, env=env)


def _wait_for(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdout is not None
    while (line := proc.stdout.readline().strip()) != word:
        assert line, f"process {proc.pid} ended before saying {word!r}"


class LockClock:
    """The lock module's ``time``, for a test: ``monotonic`` moves only when the lock
    sleeps, so whether a wait outlasted the grace period is decided by the lock's own
    clock, never by how busy the machine is. Records, in order, every sleep and every
    look at a lock file (``("sleep", seconds)``, ``("look", path)``). A loop that reads
    the clock 10,000 times without sleeping is a spin, and one that sleeps past
    ``limit`` simulated seconds a hang: both fail the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, limit: float = 120.0) -> None:
        self.start = self.now = 1000.0
        self.limit, self.reads = limit, 0
        self.events: list[tuple[str, object]] = []
        real_look = lock_module._look

        def look(path: str) -> object:
            self.events.append(("look", path))
            return real_look(path)

        monkeypatch.setattr(lock_module, "time", self)
        monkeypatch.setattr(lock_module, "_look", look)

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    def monotonic(self) -> float:
        self.reads += 1
        if self.reads > 10_000:
            raise AssertionError(f"spinning: {self.reads} clock reads without a sleep: {self.events[-5:]}")
        return self.now

    def sleep(self, seconds: float) -> None:
        self.events.append(("sleep", seconds))
        self.now += seconds
        self.reads = 0
        if self.now - self.start > self.limit:
            raise AssertionError(f"still waiting after {self.limit} simulated seconds")

    @property
    def sleeps(self) -> list[float]:
        return [float(x) for kind, x in self.events if kind == "sleep"]

    def looks_between_sleeps(self, path: str) -> list[int]:
        """How many looks at ``path`` came before each sleep (since the previous one)."""
        counts, looks = [], 0
        for kind, x in self.events:
            if kind == "look":
                looks += x == path
            else:
                counts.append(looks)
                looks = 0
        return counts


def backoff(n: int) -> list[float]:
    """The waiter's first ``n`` sleeps: 1 ms doubling up to 50 ms (hpo/system/lock.py)."""
    return [min(0.001 * 2 ** i, 0.05) for i in range(n)]


def _wait_zombie(pid: int) -> None:
    """Until ``pid`` (SIGKILLed, not reaped) is a zombie: dead, its pid still taken."""
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, f"pid {pid} never died"
        time.sleep(0.01)


def _assert_exclusive(log: Path) -> list[str]:
    """Every 'enter pid' is followed by 'exit pid' before the next enter."""
    events = log.read_text().split("\n")[:-1]
    inside = None
    for event in events:
        word, pid = event.split()
        if word == "enter":
            assert inside is None, f"{pid} entered while {inside} held the lock: {events}"
            inside = pid
        else:
            assert inside == pid, f"{pid} left while {inside} held the lock: {events}"
            inside = None
    assert inside is None
    return events


def test_lock_of_a_killed_holder_is_taken_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A holder SIGKILLed (and not reaped: a zombie) on this host: the next process breaks
    its lock on its first look, without one sleep, though the grace period is 10 s."""
    path, log = tmp_path / "j", tmp_path / "log"
    proc = _python(HOLD, path, 10, log, 60)
    try:
        _wait_for(proc, "held")
        os.kill(proc.pid, signal.SIGKILL)
        _wait_zombie(proc.pid)
        left = json.loads(Path(str(path) + ".lock").read_text())
        clock = LockClock(monkeypatch)
        lock = OwnerLock(str(path), grace_seconds=10)
        lock.acquire()
        assert holder(str(path))["pid"] == os.getpid()  # type: ignore[index]
        lock.release()
    finally:
        proc.kill()
        proc.wait()
    assert clock.sleeps == []
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("broke")] == [
        f"broke stale lock {path}.lock held by pid {proc.pid} on {left['host']} (since {left['acquired_at']}): "
        f"its holder, pid {proc.pid} on this host, is gone"]


def test_lock_from_another_host_is_broken_only_after_grace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A stale lock of another host (its mtime an hour old) is judged on the waiter's own
    clock: unchanged for the grace period as the waiter sees it, not by its mtime (immune
    to skew between hosts). It is broken at the first look after 1 s of waiting, not before."""
    path = tmp_path / "j"
    lock_file = Path(str(path) + ".lock")
    lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "t", "acquired_at": "x"}))
    old = time.time() - 3600
    os.utime(lock_file, (old, old))
    clock = LockClock(monkeypatch)
    with OwnerLock(str(path), grace_seconds=1, refresh_seconds=0.2):
        assert holder(str(path))["pid"] == os.getpid()  # type: ignore[index]
    waited = clock.sleeps
    assert sum(waited[:-1]) < 1.0 <= sum(waited)  # broken at the first look past the grace period
    assert waited == backoff(len(waited))
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("broke")] == [
        f"broke stale lock {lock_file} held by pid 1 on elsewhere (since x): unchanged for 1.0 s (grace 1 s)"]
    assert holder(str(path)) is None


def test_refreshed_lock_from_another_host_is_not_broken(tmp_path: Path) -> None:
    """A slow holder elsewhere that refreshes its lock keeps it past the grace period."""
    path = tmp_path / "j"
    lock_file = Path(str(path) + ".lock")
    lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "t", "acquired_at": "x"}))
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(0.2):
            os.utime(lock_file)

    toucher = threading.Thread(target=refresh, daemon=True)
    toucher.start()
    try:
        with pytest.raises(LockTimeout, match="elsewhere"):
            OwnerLock(str(path), grace_seconds=1, refresh_seconds=0.2).acquire(timeout=3)
    finally:
        stop.set()
        toucher.join()
    assert json.loads(lock_file.read_text())["host"] == "elsewhere"


def test_stopped_holder_keeps_the_lock_until_it_resumes(tmp_path: Path) -> None:
    path, log = tmp_path / "j", tmp_path / "log"
    first = _python(HOLD, path, 1, log, 0.5)
    second = None
    try:
        _wait_for(first, "held")
        os.kill(first.pid, signal.SIGSTOP)
        second = _python(HOLD, path, 1, log, 0)
        _wait_for(second, "trying")
        time.sleep(3)  # three grace periods
        assert log.read_text() == f"enter {first.pid}\n"  # the second did not get in
        assert holder(str(path))["pid"] == first.pid  # type: ignore[index]
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=10) == 0 and second.wait(timeout=10) == 0
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()  # SIGKILL ends a stopped process too
                proc.wait()
    assert _assert_exclusive(log) == [f"enter {first.pid}", f"exit {first.pid}",
                                      f"enter {second.pid}", f"exit {second.pid}"]


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


@pytest.mark.parametrize("left_behind", ["dead-holder", "foreign-holder"])
def test_many_processes_never_overlap(tmp_path: Path, left_behind: str) -> None:
    """Four processes start on a stale lock (all judge it stale at once): exactly one of them
    breaks it (the ``.break`` lock serialises breakers), then they take turns, never two inside."""
    path, log = tmp_path / "j", tmp_path / "log"
    host = socket.gethostname() if left_behind == "dead-holder" else "elsewhere"
    Path(str(path) + ".lock").write_text(json.dumps({"host": host, "pid": _dead_pid(), "token": "t"}))
    procs = [_python(CYCLE, path, log, 200, stdout=None, stderr=subprocess.PIPE) for _ in range(4)]
    try:
        errors = [p.communicate(timeout=60)[1] for p in procs]  # their WARNINGs: Python's last-resort handler
        assert [p.returncode for p in procs] == [0] * 4, errors
    finally:
        for p in procs:
            p.kill()
            p.wait()
    events = _assert_exclusive(log)
    assert len(events) == 4 * 200 * 2
    broke = [line for err in errors for line in err.splitlines() if line.startswith("broke stale lock")]
    assert len(broke) == 1 and broke[0].startswith(f"broke stale lock {path}.lock held by pid "), errors


def test_optuna_journal_with_owner_lock_under_concurrency(tmp_path: Path) -> None:
    path = tmp_path / "crowd.journal"
    procs = [_python(OPTIMIZE, path, 50, stdout=None) for _ in range(4)]
    try:
        assert [p.wait(timeout=120) for p in procs] == [0] * 4
    finally:
        for p in procs:
            p.kill()
            p.wait()
    study = optuna.load_study(study_name="crowd", storage=JournalStorage(JournalFileBackend(str(path))))
    assert len(study.trials) == 200 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert scan(path).clean and not Path(str(path) + ".lock").exists()


def test_threads_are_serialised_and_reentry_is_allowed(tmp_path: Path) -> None:
    lock = OwnerLock(str(tmp_path / "j"))
    counter = {"n": 0}

    def bump() -> None:
        for _ in range(200):
            with lock, lock:  # reentrant in the holding thread
                n = counter["n"]
                time.sleep(0)
                counter["n"] = n + 1

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert counter["n"] == 800 and holder(str(tmp_path / "j")) is None
    with lock:
        other = threading.Thread(target=lambda: pytest.raises(RuntimeError, lock.release))
        other.start()
        other.join()
        assert holder(str(tmp_path / "j")) is not None  # another thread cannot release ours


def test_release_never_deletes_another_owners_lock(tmp_path: Path) -> None:
    path = tmp_path / "j"
    lock = OwnerLock(str(path))
    with pytest.raises(RuntimeError):
        lock.release()  # not held
    lock.acquire()
    lock_file = Path(str(path) + ".lock")
    # As if our lock had been broken and taken by a live process elsewhere while we were
    # stopped past the grace period (the fence found our hold doubtful).
    foreign = json.dumps({"host": "elsewhere", "pid": 7, "token": "theirs", "acquired_at": "x"})
    lock_file.write_text(foreign)
    lock._fenced_out = True
    lock.release()
    assert lock_file.read_text() == foreign
    info = holder(str(path))
    assert info is not None and info["host"] == "elsewhere" and info["alive"] is None


def test_a_certain_hold_is_released_with_one_unlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hold confirmed just now cannot have been broken: its release removes the file
    with one unlink (no rename, no second look), as plain Optuna's lock does."""
    path = tmp_path / "j"
    lock = OwnerLock(str(path))
    lock.acquire()
    calls: list[str] = []
    for name in ("rename", "unlink"):
        real = getattr(os, name)
        monkeypatch.setattr(lock_module.os, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a))
    lock.release()
    assert calls == ["unlink"] and not (tmp_path / "j.lock").exists()


def test_holder_reports_a_dead_owner_on_this_host(tmp_path: Path) -> None:
    path = tmp_path / "j"
    dead_pid = _dead_pid()
    Path(str(path) + ".lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": dead_pid, "token": "t", "acquired_at": "x"}))
    info = holder(str(path))
    assert info is not None and info["alive"] is False and info["pid"] == dead_pid


def _plant_foreign(path: Path, kind: str) -> Path:
    """A lock left by plain Optuna: its symlink lock (to the journal path as given,
    relative or absolute) or its open lock (an empty file)."""
    lock_file = Path(str(path) + ".lock")
    if kind == "symlink-relative":
        os.symlink(os.path.join(path.parent.name, path.name), lock_file)  # dangles from the lock's folder
    elif kind == "symlink-absolute":
        path.write_text("")
        os.symlink(str(path), lock_file)
    else:
        lock_file.write_text("")
    return lock_file


@contextlib.contextmanager
def kept_fresh(lock_file: Path) -> Iterator[None]:
    """A live foreign holder: the lock file's own mtime (a symlink's too) refreshed every 0.3 s."""
    stop = threading.Event()

    def touch() -> None:
        while not stop.wait(0.3):
            os.utime(lock_file, follow_symlinks=False)

    toucher = threading.Thread(target=touch, daemon=True)
    toucher.start()
    try:
        yield
    finally:
        stop.set()
        toucher.join()


FOREIGN_KINDS = {
    "symlink-relative": r"Optuna JournalFileSymlinkLock, a symlink to '{rel}' \(dangling from the lock's folder\)",
    "symlink-absolute": r"Optuna JournalFileSymlinkLock, a symlink to '{abs}' \(resolves from the lock's folder\)",
    "empty-file": r"empty file \(Optuna JournalFileOpenLock\)",
}


@pytest.mark.parametrize("kind", sorted(FOREIGN_KINDS))
def test_foreign_lock_of_plain_optuna_is_broken_after_grace_without_spinning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Plain Optuna's lock left behind is named for what it is, then broken once the
    waiter has seen it unchanged for the grace period (2 s), never before; the waiter
    looks once per sleep, its sleeps backing off from 1 ms to 50 ms: no spin."""
    path = tmp_path / "j.journal"
    lock_file = _plant_foreign(path, kind)
    what = FOREIGN_KINDS[kind].format(rel=re.escape(f"{tmp_path.name}/j.journal"), abs=re.escape(str(path)))
    assert re.fullmatch(rf"FOREIGN: {what}, unchanged for \d+ s; hpo breaks it after 10 s without change",
                        describe_lock(str(path))), describe_lock(str(path))
    clock = LockClock(monkeypatch)
    with OwnerLock(str(path), grace_seconds=2, refresh_seconds=0.5):
        assert holder(str(path))["kind"] == "hpo"  # type: ignore[index]
    waited = clock.sleeps
    assert sum(waited[:-1]) < 2.0 <= sum(waited)
    assert waited == backoff(len(waited))
    # One look per round; the round at 1 s also names the holder in its "waiting" line.
    notice = next(i for i in range(len(waited)) if sum(waited[:i]) >= 1.0)
    assert clock.looks_between_sleeps(str(lock_file)) == [2 if i == notice else 1 for i in range(len(waited))]
    assert not os.path.lexists(lock_file)
    if kind == "symlink-absolute":
        assert path.exists()  # the link was removed, never the journal it points to


def test_doctor_names_a_foreign_lock(tmp_path: Path) -> None:
    path = tmp_path / "j.journal"
    optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    _plant_foreign(path, "symlink-relative")
    lines = doctor(path).render().splitlines()
    locks = [line for line in lines if line.startswith(("journal lock: ", "slots lock: "))]
    assert len(locks) == 2 and re.fullmatch(  # its kind, target (as Optuna wrote it, relative) and age
        rf"journal lock: FOREIGN: Optuna JournalFileSymlinkLock, a symlink to '{re.escape(tmp_path.name)}/j\.journal' "
        r"\(dangling from the lock's folder\), unchanged for \d+ s; hpo breaks it after 10 s without change",
        locks[0]), locks
    assert locks[1] == "slots lock: free"


def test_plain_optuna_writers_and_owner_lock_exclude_each_other(tmp_path: Path) -> None:
    from optuna.storages.journal import JournalFileOpenLock, JournalFileSymlinkLock

    path = str(tmp_path / "j.journal")
    for theirs in (JournalFileSymlinkLock(path, grace_period=None), JournalFileOpenLock(path, grace_period=None)):
        ours = OwnerLock(path, grace_seconds=30)
        with ours:
            got = threading.Event()
            other = threading.Thread(target=lambda: (theirs.acquire(), got.set()), daemon=True)
            other.start()
            assert not got.wait(0.5)  # plain Optuna waits while we hold it
        assert got.wait(5)
        with pytest.raises(LockTimeout, match="FOREIGN"):
            ours.acquire(timeout=0.5)  # and we wait while it holds a fresh one
        theirs.release()
        ours.acquire(timeout=5)
        ours.release()


def test_a_wait_ends_when_should_stop_says_so(tmp_path: Path) -> None:
    path = tmp_path / "j"
    _plant_foreign(path, "empty-file")
    asked = threading.Event()
    threading.Timer(0.5, asked.set).start()
    lock = OwnerLock(str(path), grace_seconds=30, should_stop=asked.is_set)
    with pytest.raises(LockWaitAborted, match="asked to stop"):
        lock.acquire()
    # A free lock is still taken once asked to stop: a stopping worker writes its trial's end.
    free = OwnerLock(str(tmp_path / "k"), should_stop=asked.is_set)
    with free:
        # The in-process part too: another thread holds the lock, and a waiting thread
        # told to stop leaves the wait without taking it (what it got is checked here:
        # an exception inside a thread would only be a warning).
        got: list[object] = []

        def wait() -> None:
            try:
                free.acquire()
            except LockWaitAborted as exc:
                got.append(exc)
            else:
                got.append("acquired")
                free.release()

        waiter = threading.Thread(target=wait)
        waiter.start()
        waiter.join(timeout=5)
        assert not waiter.is_alive()
        assert len(got) == 1 and isinstance(got[0], LockWaitAborted) and "asked to stop" in str(got[0])


class _FlakyOs:
    """``os`` as the lock module sees it, except that the named functions raise
    ``err`` before doing anything, at random with probability ``rate`` (as NFS and
    GlusterFS do when another client replaced the file)."""

    def __init__(self, err: int, rate: float, names: tuple[str, ...]) -> None:
        import random

        self._err, self._rate, self._names = err, rate, names
        self._random = random.Random(err)
        self._guard = threading.Lock()
        self.raised = 0

    def __getattr__(self, name: str) -> object:
        real = getattr(os, name)
        if name not in self._names:
            return real

        def flaky(*args: object, **kwargs: object) -> object:
            with self._guard:
                fail = self._random.random() < self._rate
                self.raised += fail
            if fail:
                raise OSError(self._err, os.strerror(self._err))
            return real(*args, **kwargs)

        return flaky


@pytest.mark.parametrize("err", [errno.ESTALE, errno.EIO, errno.ENOENT])
def test_volatile_errors_on_the_lock_file_never_end_a_holder_or_a_waiter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    names = ("open", "read", "fstat", "close", "utime", "lstat")
    if err != errno.ENOENT:  # ENOENT from unlink and rename is the answer, not a hiccup
        names += ("unlink", "rename")
    flaky = _FlakyOs(err, 0.2, names)
    monkeypatch.setattr(lock_module, "os", flaky)
    path = str(tmp_path / "j")
    counter = {"n": 0, "inside": 0, "overlap": 0}
    errors: list[BaseException] = []

    def work() -> None:
        lock = OwnerLock(path, grace_seconds=1, refresh_seconds=0.05)  # one per thread: exclusion by the file
        try:
            for _ in range(50):
                with lock:
                    counter["inside"] += 1
                    counter["overlap"] += counter["inside"] > 1
                    n = counter["n"]
                    time.sleep(0.001)  # let the refresher run and fail too
                    counter["n"] = n + 1
                    counter["inside"] -= 1
        except BaseException as exc:  # noqa: BLE001 - collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)  # generous: 20 % of calls fail (slow on a loaded machine)
    assert not errors, errors
    assert counter["n"] == 150 and counter["overlap"] == 0 and flaky.raised > 30
    monkeypatch.undo()
    assert holder(path) is None and os.listdir(tmp_path) == []  # no lock, no tomb left behind


def test_a_false_enoent_on_a_moved_lock_never_leaves_a_lock_or_break_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Left by an earlier process with our pid (a restarted container): broken at once,
    # through the .break file. The first look at each kind of moved-away file (the
    # stale lock, the released .break, our released lock) then finds nothing, as a
    # network filesystem's false ENOENT does. Taken as "gone", the breaker put its
    # .break back and release put our own lock back: left there forever.
    path = str(tmp_path / "j")
    (tmp_path / "j.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                 "token": "0" * 32}))
    real_look, fooled = lock_module._look, set()

    def look(name: str) -> object:
        kind = name.rsplit(".", 2)[0] + "." + name.rsplit(".", 1)[1]  # the name without its random part
        if name.endswith((".stale", ".released")) and kind not in fooled:
            fooled.add(kind)
            return None
        return real_look(name)

    monkeypatch.setattr(lock_module, "_look", look)
    with OwnerLock(path, grace_seconds=1, refresh_seconds=0.05) as lock:
        assert holder(path)["token"] == lock._token
        lock._fenced_out = True  # a doubtful hold: released the careful way (moved away, checked, removed)
    assert holder(path) is None and os.listdir(tmp_path) == []  # no lock, no .break, no tomb
    assert fooled == {str(tmp_path / "j.lock.stale"), str(tmp_path / "j.lock.break.released"),
                      str(tmp_path / "j.lock.released")}  # each moved file was looked at, fooled once


# argv: a file for the events, then hpo's arguments. ``hpo`` in this process, with every
# sleep of the lock module and every look at a lock file recorded, in order, and
# written as JSON when the process exits (as LockClock records them in-process; a
# worker ends with os._exit).
COUNTED_HPO = """
import json, os, sys, time
from hpo.system import lock
events = []
class Time:
    def __getattr__(self, name):
        return getattr(time, name)
    def sleep(self, seconds):
        events.append(("sleep", seconds))
        time.sleep(seconds)
real_look = lock._look
def look(path):
    events.append(("look", path))
    return real_look(path)
lock.time, lock._look = Time(), look
real_exit = os._exit
def exit_after_writing(code):
    with open(sys.argv[1], "w") as out:
        out.write(json.dumps(events))
    real_exit(code)
os._exit = exit_after_writing
from hpo.cli import main
main(sys.argv[2:])
"""


# A worker whose study is behind a live foreign lock: plain Optuna's symlink lock,
# relative (dangling from the journal's folder), kept fresh by the test like a
# holder that is still working.
@pytest.mark.parametrize(("signum", "label", "code"), [(signal.SIGTERM, "preempted", 75),
                                                       (signal.SIGINT, "interrupted", 130),
                                                       (signal.SIGUSR1, "preempted", 75)])
def test_worker_waiting_for_a_lock_stops_on_a_signal_and_does_not_spin(toy, signum: int, label: str,
                                                                       code: int) -> None:
    """The worker waits (one look per sleep, sleeps backing off to 50 ms), and a signal
    ends the wait: the worker stops with the signal's exit status, writes nothing past the
    lock and leaves the live holder's lock alone."""
    cwd, env = toy(HPO_JOURNAL_LOCK="file")  # the lock file's wait (a new journal on local disk takes the record lock)
    journal = cwd / "optuna_journal" / "toy.journal"
    journal.parent.mkdir()
    lock_file = _plant_foreign(journal, "symlink-relative")
    events_file, logs = cwd / "lock_events.json", cwd / "optuna_logs"
    with kept_fresh(lock_file):
        proc = subprocess.Popen([sys.executable, "-c", COUNTED_HPO, str(events_file), "worker"], cwd=cwd, env=env,
                                text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while "waiting" not in "".join(p.read_text() for p in logs.glob("worker_*.log")):
                assert proc.poll() is None and time.monotonic() < deadline, "the worker never waited for the lock"
                time.sleep(0.1)
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    log = "".join(p.read_text() for p in logs.glob("worker_*.log"))
    assert f"stopped: {label} (stopped waiting for optuna_journal/toy.journal.lock after" in log
    notices = re.findall(r"waiting \d+ s for optuna_journal/toy\.journal\.lock: FOREIGN: Optuna "
                         r"JournalFileSymlinkLock, a symlink to 'optuna_journal/toy\.journal' \(dangling", log)
    assert len(notices) == 1, log
    events = json.loads(events_file.read_text())
    sleeps = [seconds for kind, seconds in events if kind == "sleep"]
    assert sleeps == backoff(len(sleeps))
    looks, per_round = 0, []
    for kind, what in events:
        if kind == "look":
            looks += what == str(lock_file.relative_to(cwd))
        else:
            per_round.append(looks)
            looks = 0
    assert sorted(per_round) == [1] * (len(sleeps) - 1) + [2]  # the notice's round names the holder
    assert os.path.islink(lock_file)  # a live holder's lock stays
    assert journal.read_bytes() == b""  # nothing was written past the lock

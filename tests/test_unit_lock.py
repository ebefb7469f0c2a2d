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


def files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.fixture
def alive(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """This host's process table, faked: the pids in the set are alive."""
    pids: set[int] = set()
    monkeypatch.setattr(L, "process_alive", lambda pid, start=None: pid in pids)
    return pids


def test_a_timeout_names_the_holder(tmp_path: Path, clock: Clock) -> None:
    plant(tmp_path / "j", elsewhere())
    with pytest.raises(LockTimeout) as err:
        OwnerLock(tmp_path / "j", grace_seconds=60, refresh_seconds=1).acquire(timeout=2)
    assert str(err.value) == (f"{tmp_path / 'j.lock'}: not acquired in 2.0 s; held by pid 7 on node-b (refreshed "
                              f"{describe_holder(holder(str(tmp_path / 'j'))).split('refreshed ')[1]}")


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


def test_a_lock_that_vanishes_on_every_look_does_not_spin(tmp_path: Path, clock: Clock,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A create that fails on a file no look can see (a negative-entry cache): sleep between tries."""
    lock = OwnerLock(tmp_path / "j", grace_seconds=3, refresh_seconds=1)
    monkeypatch.setattr(lock, "_try_create", lambda path, token: False)
    monkeypatch.setattr(L, "_look", lambda path: None)
    with pytest.raises(LockTimeout):
        lock.acquire(timeout=1)
    assert clock.sleeps[:3] == [0.001, 0.002, 0.004] and max(clock.sleeps) == 0.05 and len(clock.sleeps) < 40

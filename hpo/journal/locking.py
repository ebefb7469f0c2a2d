"""Which lock a journal uses, decided once per journal, and the proof that lets it be the
kernel's (``HPO_JOURNAL_LOCK``, ``hpo doctor --prove-lock``).

Two locks exclude the journal's writers (:mod:`hpo.system.lock`, :mod:`hpo.system.kernel_lock`):

* ``file``: the owner lock file ``<journal>.lock``. Works on every filesystem, excludes
  plain Optuna writers too (same name as ``JournalFileOpenLock``), breaks a stopped holder
  on another host after its grace period. On a network filesystem that caches names
  (GlusterFS: 1 s), handing it to another node waits for that cache.
* ``fcntl``: a record lock on ``<journal>.flock``, arbitrated by the file servers. Handing
  it over between nodes takes a round trip, not a cache timeout. Used only where
  ``hpo doctor --prove-lock`` proved it, in that folder: two processes, through two
  clients of the filesystem (two nodes, or two mounts of the volume), saw each other's
  hold refused and handed over; the proof is ``hpo-lock-proof.json`` in the folder. On a
  node-local filesystem (ext4, xfs, tmpfs ...: :attr:`~hpo.journal.filesystem.Mount.one_kernel`)
  one kernel arbitrates every holder and nothing needs proving: new journals there take
  the record lock. On local disk that is also the cheaper lock: an acquisition creates
  and removes no file (a new inode per acquisition cost 0.2-0.3 ms on the dev machine's
  ext4, a third of a null trial; docs/benchmarks.md section 9.3).

Every writer of one journal must use the same lock. The choice is therefore the
journal's, made when it is created and kept: ``<journal>.flock`` exists exactly when the
journal uses the record lock. ``HPO_JOURNAL_LOCK=auto`` (the default) follows the journal
(and, for a new journal, the folder's proof or its being node-local); ``file``/``fcntl``
insist, and a worker whose choice contradicts its journal is refused before it writes
anything (exit 2).
Plain Optuna processes that *write* a record-locked journal are not excluded by hpo's
workers: write through hpo (``hpo enqueue``) or keep ``HPO_JOURNAL_LOCK=file``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hpo._optuna import BaseJournalFileLock
from hpo.errors import StorageError, UsageError
from hpo.journal.filesystem import filesystem_of
from hpo.system.files import make_dirs, write_json_atomic
from hpo.system.kernel_lock import KERNEL_LOCK_SUFFIX, KernelLock
from hpo.system.lock import held, make_lock

_logger = logging.getLogger(__name__)

PROOF_NAME = "hpo-lock-proof.json"
PROBE_DIR = ".hpo-lock-probe"
_ROUNDS = 6
_STEP_SECONDS = 60.0  # how long one side of the probe waits for the other


def kernel_lock_file(journal: Path) -> Path:
    return Path(f"{journal}{KERNEL_LOCK_SUFFIX}")


def read_proof(directory: Path) -> dict[str, Any] | None:
    """The folder's proof, if any, and if it still describes the folder's filesystem."""
    path = directory / PROOF_NAME
    try:
        proof = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        _logger.warning("%s: unreadable (%s): the journal lock stays a lock file", path, err)
        return None
    mount = filesystem_of(directory)
    if not isinstance(proof, dict) or proof.get("verdict") != "honoured" or (
            mount is not None and proof.get("fstype") != mount.fstype):
        _logger.warning("%s does not prove record locks for this folder's filesystem (%s)", path,
                        mount.fstype if mount else "unknown")
        return None
    return proof


def _proof_here(directory: Path) -> dict[str, Any] | None:
    """What lets record locks be used in ``directory`` from this node: its proof, or its
    being on a filesystem one kernel arbitrates (nothing to prove)."""
    proof = read_proof(directory)
    if proof is None:
        mount = filesystem_of(directory)
        if mount is not None and mount.one_kernel:
            return {"verdict": "honoured", "fstype": mount.fstype}
    return proof


def lock_kind(journal: Path, wanted: str) -> str:
    """``file`` or ``fcntl`` for ``journal`` given ``HPO_JOURNAL_LOCK=wanted``; reads only.

    Raises :class:`UsageError` (exit 2) when ``wanted`` contradicts the journal's own
    lock, or asks for ``fcntl`` in a folder without a proof."""
    uses_kernel = kernel_lock_file(journal).exists()
    started = uses_kernel or (journal.exists() and journal.stat().st_size > 0)
    if started:
        kind = "fcntl" if uses_kernel else "file"
        if wanted not in ("auto", kind):
            what = f"the record lock ({kernel_lock_file(journal)})" if uses_kernel else "the lock file"
            raise UsageError(f"HPO_JOURNAL_LOCK={wanted!r}, but {journal} was started with {what}: every "
                             f"writer of one journal must use the same lock; valid here: auto, {kind}")
        if uses_kernel and _proof_here(journal.parent) is None:
            # Started on a local disk that this node reaches through a network mount (a disk
            # exported over NFS): nobody proved its record locks between the two.
            mount = filesystem_of(journal.parent)
            raise UsageError(f"{journal} uses the record lock ({kernel_lock_file(journal)}), but here its folder is "
                             f"on {mount.fstype if mount else 'an unknown filesystem'} with no {PROOF_NAME}: record "
                             f"locks may not be honoured between this node and the one that started it; prove them "
                             f"(`hpo doctor --prove-lock` from two nodes) or run the workers where the journal's disk is")
        return kind
    proof = _proof_here(journal.parent)
    if wanted == "fcntl" and proof is None:
        raise UsageError(f"HPO_JOURNAL_LOCK='fcntl', but {journal.parent} has no {PROOF_NAME} proving that record "
                         f"locks are honoured across nodes there; run `hpo doctor --prove-lock` (on two nodes: "
                         f"`srun --nodes 2 --ntasks 2 hpo doctor --prove-lock`) first; valid: auto, file")
    if wanted == "file" or proof is None:
        return "file"
    return "fcntl"


def journal_lock(journal: Path, wanted: str = "auto",
                 should_stop: Callable[[], bool] | None = None) -> BaseJournalFileLock:
    """The lock every writer of ``journal`` takes (see the module docstring). A new journal
    that takes the record lock gets its ``<journal>.flock`` now, before its first byte."""
    kind = lock_kind(journal, wanted)
    if kind == "fcntl" and not kernel_lock_file(journal).exists():
        kind = _adopt_record_lock(journal, wanted, should_stop)
    if kind == "file":
        return make_lock(journal, should_stop)
    return KernelLock(journal, should_stop)


def _adopt_record_lock(journal: Path, wanted: str, should_stop: Callable[[], bool] | None) -> str:
    """A new journal takes the record lock: ``<journal>.flock`` is created holding the lock
    *file*, which a worker that chose the lock file for the same new journal holds for its
    first append, and checks there (:meth:`hpo.journal.backend.GuardedFileBackend.append_logs`):
    of two workers starting one journal with different locks, one sees the other's choice."""
    with held(make_lock(journal, should_stop)):
        if journal.exists() and journal.stat().st_size > 0 and not kernel_lock_file(journal).exists():
            if wanted == "fcntl":
                raise UsageError(f"HPO_JOURNAL_LOCK='fcntl', but {journal} was started meanwhile with the lock "
                                 "file: every writer of one journal must use the same lock; valid here: auto, file")
            return "file"
        try:
            os.close(os.open(kernel_lock_file(journal), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            _logger.info("%s: the journal's lock is a record lock (%s)", journal, kernel_lock_file(journal))
        except FileExistsError:
            pass
        except OSError as err:
            raise StorageError(f"{kernel_lock_file(journal)}: cannot create the journal's lock file ({err})") from err
    return "fcntl"


# ---------------------------------------------------------------------------------------
# the proof: two processes through two clients, taking turns
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One side of a probe: its rank (0 or 1), the folder as it sees it, the probe's name."""

    rank: int
    directory: Path
    token: str

    @property
    def probe(self) -> Path:
        return self.directory / PROBE_DIR / self.token

    def mark(self, name: str, data: dict[str, Any] | None = None) -> None:
        write_json_atomic(self.probe / f"{name}.json", data or {}, durable=False)

    def wait_for(self, name: str, other: int) -> dict[str, Any]:
        path = self.probe / f"{name}.json"
        deadline = time.monotonic() + _STEP_SECONDS
        while time.monotonic() < deadline:
            try:
                return dict(json.loads(path.read_text()))
            except (FileNotFoundError, ValueError):
                time.sleep(0.001)
        raise StorageError(f"lock proof: side {other} did not answer within {_STEP_SECONDS:.0f} s "
                           f"({path} never appeared); is it running, on the same folder?")


def probe_side(side: Side) -> dict[str, Any]:
    """Run one side of the probe: ``_ROUNDS`` rounds, the sides holding in turn. In each
    round the holder takes the lock, the other must be refused, then blocks; the holder
    lets go and measures, on its own clock, until the other says it was granted (the
    handover plus one marker's trip). Returns what this side saw."""
    me, other = side.rank, 1 - side.rank
    make_dirs(side.probe)
    mount = filesystem_of(side.directory)
    side.mark(f"hello-{me}", {"host": socket.gethostname(), "pid": os.getpid(),
                              "device": os.stat(side.directory).st_dev,
                              "fstype": mount.fstype if mount else "unknown"})
    hello = side.wait_for(f"hello-{other}", other)
    lock = KernelLock(side.probe / "probe")
    handoffs: list[float] = []
    refused = 0
    for round_ in range(_ROUNDS):
        if round_ % 2 == me:  # this side holds
            lock.acquire(timeout=_STEP_SECONDS)
            side.mark(f"held-{round_}")
            seen = side.wait_for(f"tried-{round_}", other)
            if not seen["refused"]:
                lock.release()
                side.mark(f"done-{round_}")
                return {"verdict": "NOT honoured", "round": round_, "other": hello}
            time.sleep(0.05)
            start = time.monotonic()
            lock.release()
            side.wait_for(f"granted-{round_}", other)
            handoffs.append(1000 * (time.monotonic() - start))
        else:
            side.wait_for(f"held-{round_}", other)
            try:
                lock.acquire(timeout=0.0)
            except StorageError:
                got = False
            else:
                got = True
            side.mark(f"tried-{round_}", {"refused": not got})
            if got:
                lock.release()
                return {"verdict": "NOT honoured", "round": round_, "other": hello}
            refused += 1
            lock.acquire(timeout=_STEP_SECONDS)
            side.mark(f"granted-{round_}")
            lock.release()
    return {"verdict": "honoured", "handoff_ms": handoffs, "refused": refused, "other": hello,
            "me": {"host": socket.gethostname(), "device": os.stat(side.directory).st_dev,
                   "fstype": mount.fstype if mount else "unknown"}}


def prove_lock(directory: Path, via: Path | None, rank: int | None, ntasks: int, token: str | None
               ) -> dict[str, Any]:
    """``hpo doctor --prove-lock``: prove that record locks are honoured in ``directory``
    across clients, and write the proof there (side 0 writes it).

    Under ``srun --ntasks 2`` each task is one side (``rank``, ``token``: the step's id).
    Otherwise this process starts both sides: the second through ``via`` (the same folder
    through another mount) or, on a node-local filesystem, through ``directory`` itself."""
    if rank is None:
        mount = filesystem_of(directory)
        if via is None and not (mount is not None and mount.node_local):
            raise UsageError(f"--prove-lock: {directory} is on {mount.fstype if mount else 'an unknown filesystem'}, "
                             "shared between nodes: prove it from two nodes (`srun --nodes 2 --ntasks 2 hpo doctor "
                             "--prove-lock`) or give the same folder through another mount with --via")
        token = f"local-{os.getpid()}-{int(time.time())}"
        other = subprocess.Popen([sys.executable, "-c", "import sys; from hpo.journal.locking import _side_main; "
                                  "_side_main(sys.argv[1:])", str(via or directory), token],
                                 stdin=subprocess.DEVNULL)
        try:
            result = probe_side(Side(0, directory, token))
        finally:
            other.wait(timeout=_STEP_SECONDS * 2)
        return _conclude(directory, result, token)
    if ntasks != 2 or token is None:
        raise UsageError(f"--prove-lock under SLURM needs exactly 2 tasks (SLURM_NTASKS={ntasks}); valid: "
                         "srun --nodes 2 --ntasks 2 hpo doctor --prove-lock")
    result = probe_side(Side(rank, directory, token))
    return _conclude(directory, result, token) if rank == 0 else result


def _conclude(directory: Path, result: dict[str, Any], token: str) -> dict[str, Any]:
    """Side 0: write the proof when the lock was honoured between two clients (or on a
    node-local folder), remove the probe's files, return what was written."""
    import shutil

    shutil.rmtree(directory / PROBE_DIR / token, ignore_errors=True)
    _rmdir_if_empty(directory / PROBE_DIR)
    if result["verdict"] != "honoured":
        (directory / PROOF_NAME).unlink(missing_ok=True)
        raise StorageError(f"{directory}: record locks are NOT honoured between {socket.gethostname()} and "
                           f"{result['other']['host']} (round {result['round']}: both held it); keep "
                           "HPO_JOURNAL_LOCK=file here")
    me, other = result["me"], result["other"]
    clients = len({(me["host"], me["device"]), (other["host"], other["device"])})
    mount = filesystem_of(directory)
    if clients == 1 and not (mount is not None and mount.node_local):
        raise StorageError(f"{directory}: both sides ran through one client ({me['host']}): that proves nothing "
                           "for other nodes; run the sides on two nodes or give --via another mount")
    handoffs = sorted(result["handoff_ms"])
    proof = {"verdict": "honoured", "lock": "fcntl (F_OFD_SETLK)", "fstype": me["fstype"],
             "clients": [{"host": me["host"], "device": me["device"]},
                         {"host": other["host"], "device": other["device"]}][:clients],
             "rounds": _ROUNDS, "refused_while_held": result["refused"] * 2,
             "handoff_ms_max": round(handoffs[-1], 2), "handoff_ms_median": round(handoffs[len(handoffs) // 2], 2),
             "proved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(directory / PROOF_NAME, proof)
    return proof


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass  # another probe is running there, or it is already gone


def _side_main(argv: list[str]) -> None:
    """The second side of a local probe (a child process of :func:`prove_lock`)."""
    probe_side(Side(1, Path(argv[0]), argv[1]))


__all__ = ["PROOF_NAME", "journal_lock", "kernel_lock_file", "lock_kind", "prove_lock", "read_proof"]

"""``<journal>.snapshot``: the journal's first N bytes, compacted, so that a worker joining a
long study replays one record per trial instead of every record ever written.

A PhysAE trial leaves about 55 records in the journal (its creation, 12 parameters, 40
reports, attributes, its end). A worker that joins a study of 20,000 trials replays 1.1
million records before its first trial: 16 s measured with ``optuna.load_study``. The
snapshot holds, for the journal's first ``covers_bytes``, one ``CREATE_TRIAL`` record per
trial that carries the whole trial as it stood there (state, values, parameters and their
distributions, every intermediate value, attributes, times: the records Optuna's own
``create_new_trial(template_trial=...)`` writes, made by Optuna itself), after the
studies' creations and attributes. Replaying it gives the same trials, ids and numbers as
replaying those bytes (``tests/test_snapshot.py`` compares them with ``optuna.load_study``);
the journal's later bytes are then read and applied as always.

The journal stays the study's only state: a snapshot is a cache of its prefix, plain
JSON lines (no pickle: Optuna's own ``BaseJournalSnapshot`` pickles), and anything wrong
with it means it is not used:

* its header names the journal file it was read from (its inode), ``covers_bytes`` and
  the journal's last 64 bytes before that point; another file at the journal's path
  (``hpo repair`` replaces it, and removes the snapshot; a worker that read the old file
  writes no snapshot of it), a shorter journal, or other bytes there make it stale;
* a journal with a deleted study is never compacted (ids would shift);
* it is written by a worker between two trials, holding no record back
  (:class:`~hpo._optuna.GroupedJournalStorage`) and having dropped none, from its own
  replay: what it has read is exactly the journal's first ``covers_bytes``;
* it is written when the journal has grown past twice what the last snapshot covers (and
  past ``HPO_SNAPSHOT_MB``, 16 MB by default: about 2,000 PhysAE trials, a 1.5 s replay), by the one worker that claims it (``<journal>.snapshot.claim``,
  created exclusively; a claim older than ``CLAIM_SECONDS`` is taken over), atomically
  (a temporary file renamed over the old snapshot).

Optuna versions: the header records the one that wrote it; another major.minor is not used.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import optuna
from optuna.storages.journal import BaseJournalBackend

from hpo._optuna import GroupedJournalStorage, journal_backend, study_id, trial_id
from hpo.system.files import write_bytes_atomic

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from hpo._optuna import FrozenStudy

_logger = logging.getLogger(__name__)

SNAPSHOT_SUFFIX = ".snapshot"
FORMAT = 1
TAIL_BYTES = 64
CLAIM_SECONDS = 600.0


def snapshot_path(journal: Path) -> Path:
    return Path(f"{journal}{SNAPSHOT_SUFFIX}")


def _optuna_line() -> str:
    return ".".join(optuna.__version__.split(".")[:2])


@dataclass(frozen=True)
class Snapshot:
    """A usable snapshot: its records replace the journal's first ``covers_bytes``."""

    covers_bytes: int
    records: list[dict[str, Any]]
    trials: int


def _tail(journal: Path, covers: int) -> bytes:
    with open(journal, "rb") as f:
        return os.pread(f.fileno(), TAIL_BYTES, max(0, covers - TAIL_BYTES))


def load_snapshot(journal: Path) -> Snapshot | None:
    """The journal's snapshot if it still describes the journal's start (else None, logged)."""
    path = snapshot_path(journal)
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
            if header.get("hpo_snapshot") != FORMAT or header.get("optuna") != _optuna_line():
                _logger.info("%s: written by another hpo or Optuna (%s); replaying the whole journal", path,
                             header.get("optuna"))
                return None
            covers = int(header["covers_bytes"])
            stat = journal.stat()
            if (stat.st_ino != header.get("inode") or stat.st_size < covers
                    or _tail(journal, covers) != base64.b64decode(header["tail"])):
                _logger.info("%s: the journal is no longer what it compacted (repaired or replaced); "
                             "replaying the whole journal", path)
                return None
            records = [json.loads(line) for line in f]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        _logger.warning("%s: unreadable (%s); replaying the whole journal", path, err)
        return None
    if len(records) != header.get("records"):
        _logger.warning("%s: %d records, its header says %s; replaying the whole journal", path, len(records),
                        header.get("records"))
        return None
    return Snapshot(covers, records, int(header.get("trials", 0)))


class _ListBackend(BaseJournalBackend):
    """An in-memory journal: what Optuna's storage writes, kept as dicts."""

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        yield from self.logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.logs.extend(logs)


def compact(studies: list[FrozenStudy], trials: list[tuple[int, FrozenTrial]]) -> list[str] | None:
    """The journal lines that rebuild ``studies`` and ``trials`` (study id, trial; in id
    order), one per trial, written by Optuna's own ``create_new_study`` and
    ``create_new_trial(template_trial=...)`` into an in-memory journal. None when the ids
    are not 0..n-1 (a study was deleted: its trials' ids would shift)."""
    if [study_id(s) for s in studies] != list(range(len(studies))) or [
            trial_id(t) for _, t in trials] != list(range(len(trials))):
        return None
    backend = _ListBackend()
    out = optuna.storages.JournalStorage(backend)
    for s in studies:
        out.create_new_study(s.directions, s.study_name)
        for key, value in s.user_attrs.items():
            out.set_study_user_attr(study_id(s), key, value)
        for key, value in s.system_attrs.items():
            out.set_study_system_attr(study_id(s), key, value)
    for sid, t in trials:
        out.create_new_trial(sid, template_trial=t)
    return [json.dumps(r, separators=(",", ":")) for r in backend.logs]


def write_snapshot(journal: Path, storage: GroupedJournalStorage) -> int | None:
    """Compact what ``storage`` has read of ``journal`` into ``<journal>.snapshot``.
    Returns the bytes covered; None when it cannot (records held back or dropped, a
    deleted study). The caller checked :func:`due` and holds the :func:`claim`."""
    view = storage.view_as_read()
    backend = journal_backend(storage)
    covers = backend.offset_of(view[0]) if view is not None and backend is not None else None
    lines = compact(view[1], view[2]) if view is not None and covers is not None else None
    if lines is None or covers is None or backend is None:
        return None
    if os.stat(journal).st_ino != backend.inode:
        return None  # replaced since it was read (hpo repair): what was read is not this journal
    trials = len(view[2]) if view is not None else 0
    header = {"hpo_snapshot": FORMAT, "optuna": _optuna_line(), "covers_bytes": covers,
              "inode": backend.inode, "tail": base64.b64encode(_tail(journal, covers)).decode(), "records": len(lines), "trials": trials,
              "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    body = "\n".join([json.dumps(header), *lines]) + "\n"
    write_bytes_atomic(snapshot_path(journal), body.encode(), durable=False)
    return int(covers)


def due(journal: Path, size: int, min_bytes: float) -> bool:
    """Whether a new snapshot is worth writing: the journal (``size`` bytes) is past
    ``min_bytes`` (``HPO_SNAPSHOT_MB``; 0: never) and past twice what the last snapshot covers."""
    if min_bytes <= 0 or size < min_bytes:
        return False
    try:
        with open(snapshot_path(journal), "rb") as f:
            covered = int(json.loads(f.readline()).get("covers_bytes", 0))
    except (OSError, ValueError, AttributeError):
        covered = 0
    return size >= 2 * covered


def claim(journal: Path) -> bool:
    """Take the right to write the next snapshot (one worker at a time)."""
    path = Path(f"{snapshot_path(journal)}.claim")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        return True
    except FileExistsError:
        try:
            if time.time() - path.stat().st_mtime < CLAIM_SECONDS:
                return False
            path.unlink()  # its writer died; the next worker to look takes it
        except OSError:
            pass
        return False


def unclaim(journal: Path) -> None:
    try:
        Path(f"{snapshot_path(journal)}.claim").unlink()
    except OSError:
        pass


__all__ = ["SNAPSHOT_SUFFIX", "Snapshot", "claim", "compact", "due", "load_snapshot", "snapshot_path", "unclaim",
           "write_snapshot"]

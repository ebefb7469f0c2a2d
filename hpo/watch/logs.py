"""``hpo logs``: every worker log of a study interleaved in time, and following them.

Worker logs are ``$LOG_DIR/worker_<id>.log``; each record starts with an ISO
timestamp to the second and names the worker and its study (:data:`hpo.system.logs.FORMAT`).
Lines are merged by that timestamp, stable within a file; a line without one (a
traceback) keeps the timestamp and the study of the record it belongs to, so it
stays under it. Only the selected study's lines are kept, line by line, so two
studies sharing ``LOG_DIR`` (or a log file: a reused pid, a requeued array task)
never mix; lines written before records named their study belong to none. The
files are only read: ``tail -f $LOG_DIR/worker_*.log`` keeps working alongside.

Timestamps are each worker's local time: workers on hosts in different time
zones would interleave wrongly (clusters normally share one zone).
"""

from __future__ import annotations

import heapq
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from hpo.errors import UsageError

if TYPE_CHECKING:
    from hpo.config.settings import Settings

_logger = logging.getLogger(__name__)

LOG_PREFIX = "worker_"
LOG_SUFFIX = ".log"
TIMESTAMP_RE = re.compile(rb"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})")
# A record of hpo.system.logs.FORMAT: timestamp, worker, study (may hold spaces), trial, level.
RECORD_RE = re.compile(rb"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2} \S+ study=(.*?) trial=(-|\d+) [A-Z]+ ")


@dataclass(frozen=True)
class Line:
    stamp: bytes  # the record's timestamp; b"" before any timestamped line of the file
    source: str  # worker id (or any label)
    text: str
    study: str | None = None  # the study its record names; None: a record that names none
    trial: str | None = None  # the trial number its record names ("-": none running)


def worker_of(path: Path) -> str:
    """``worker_vm_123.log`` -> ``vm_123``."""
    return path.name[len(LOG_PREFIX):-len(LOG_SUFFIX)]


def log_files(log_dir: Path) -> dict[str, Path]:
    """Worker id -> log file, for every ``worker_*.log`` in ``log_dir`` (none when it is missing)."""
    if not log_dir.is_dir():
        return {}
    return {worker_of(p): p for p in sorted(log_dir.glob(f"{LOG_PREFIX}*{LOG_SUFFIX}")) if p.is_file()}


def stamp(source: str, raw_lines: Iterable[bytes], last: bytes = b"", study: str | None = None,
          trial: str | None = None) -> list[Line]:
    """Lines of one file with the timestamp, study and trial each belongs to (continuations
    inherit them)."""
    out = []
    for raw in raw_lines:
        match = TIMESTAMP_RE.match(raw)
        if match:
            last = match.group(1)
            record = RECORD_RE.match(raw)
            study = record.group(1).decode("utf-8", "replace") if record else None
            trial = record.group(2).decode() if record else None
        out.append(Line(last, source, raw.decode("utf-8", "replace").rstrip("\r"), study, trial))
    return out


def merge(streams: Sequence[Sequence[Line]]) -> list[Line]:
    """Interleave per-file line lists by timestamp; ties keep file order, then stream order."""
    keyed = ([(line.stamp, index, n, line) for n, line in enumerate(stream)] for index, stream in enumerate(streams))
    return [item[3] for item in heapq.merge(*keyed)]


def format_line(line: Line, width: int) -> str:
    """``<worker padded> | <line as written>``."""
    return f"{line.source:<{width}} | {line.text}"


class _Tail:
    """Where we are in one growing file: bytes read, a partial last line, its last timestamp and study."""

    def __init__(self, path: Path, source: str) -> None:
        self.path, self.source = path, source
        self.offset, self.partial, self.last = 0, b"", b""
        self.study: str | None = None
        self.trial: str | None = None

    def read(self) -> list[Line]:
        """Complete lines appended since the last call (a truncated file is read again)."""
        try:
            size = self.path.stat().st_size
            if size < self.offset:  # truncated or replaced: start over
                self.offset, self.partial = 0, b""
            if size == self.offset:
                return []
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read(size - self.offset)
        except OSError:
            return []
        self.offset += len(data)
        pieces = (self.partial + data).split(b"\n")
        self.partial = pieces.pop()  # a line still being written waits for its newline
        lines = stamp(self.source, pieces, self.last, self.study, self.trial)
        if lines:
            self.last, self.study, self.trial = lines[-1].stamp, lines[-1].study, lines[-1].trial
        return lines


class Follower:
    """Reads every ``worker_*.log`` of ``log_dir`` (or the given files) incrementally.

    Each :meth:`poll` returns the complete lines written since the last one,
    merged in time, and picks up log files that appeared in between. With
    ``study``, only the lines of that study's records are returned; with ``trial`` too,
    only that trial's.
    """

    def __init__(self, log_dir: Path | None, only: Mapping[str, Path] | None = None,
                 study: str | None = None, trial: int | None = None) -> None:
        self.log_dir = log_dir
        self.only = dict(only) if only is not None else None
        self.study = study
        self.trial = None if trial is None else str(trial)
        self.tails: dict[Path, _Tail] = {}
        self.studies: set[str] = set()  # every study named by a line read so far
        self._shown: set[str] = set()  # sources of the lines returned so far

    def _discover(self) -> None:
        found = self.only if self.only is not None else log_files(self.log_dir) if self.log_dir else {}
        for source, path in found.items():
            if path not in self.tails:
                self.tails[path] = _Tail(path, source)

    def poll(self) -> list[Line]:
        self._discover()
        streams = [tail.read() for tail in self.tails.values()]
        self.studies.update(line.study for stream in streams for line in stream if line.study is not None)
        if self.study is not None:
            streams = [[line for line in stream if line.study == self.study] for stream in streams]
        if self.trial is not None:
            streams = [[line for line in stream if line.trial == self.trial] for stream in streams]
        self._shown.update(stream[0].source for stream in streams if stream)
        return merge(streams)

    @property
    def width(self) -> int:
        """The widest source among the lines returned so far."""
        return max((len(source) for source in self._shown), default=0)


def open_follower(settings: "Settings", worker: str | None = None, trial: int | None = None,
                  all_studies: bool = False) -> Follower:
    """What ``hpo logs`` follows: trial ``trial``'s own log (its run directory's
    ``trial.log``, else its lines in the worker logs: a trial that kept nothing has no run
    directory, see :mod:`hpo.worker.run_dir`), worker ``worker``'s log, or every worker log
    in ``LOG_DIR``; only the study's lines unless ``all_studies``."""
    if worker is not None and trial is not None:
        raise UsageError("--worker and --trial: give one of them, not both")
    study = None if all_studies else settings.study_name
    if trial is not None:
        path = settings.study_dir / f"trial_{trial}" / "trial.log"
        if path.is_file():
            return Follower(None, {f"trial {trial}": path})
        return Follower(settings.log_dir, study=settings.study_name, trial=trial)
    if worker is not None:
        files = log_files(settings.log_dir)
        wid = worker.removeprefix("worker_").removesuffix(".log")
        if wid not in files:
            raise UsageError(f"--worker {worker!r}: no log {settings.log_dir}/worker_{wid}.log; "
                             f"workers with logs: {', '.join(files) or 'none'}")
        return Follower(None, {wid: files[wid]}, study)
    return Follower(settings.log_dir, study=study)


def nothing_yet(follower: Follower, settings: "Settings") -> str:
    """Why ``hpo logs`` found no line: no worker log at all, none of this study's, or none
    of the trial's."""
    if follower.trial is not None:
        return (f"--trial {follower.trial}: no {settings.study_dir}/trial_{follower.trial}/trial.log "
                f"(TRIAL_OUTPUT/STUDY_NAME) and no line of trial {follower.trial} of study {follower.study!r} in "
                f"{settings.log_dir}/worker_*.log (LOG_DIR)")
    if follower.study is not None and follower.tails:
        others = ", ".join(repr(name) for name in sorted(follower.studies)) or "none"
        return (f"no line of study {follower.study!r} in {settings.log_dir}/worker_*.log (LOG_DIR); studies "
                f"there: {others} (--study-name NAME, or --all-studies)")
    return f"no worker log in {settings.log_dir} (LOG_DIR)"

"""Offline: the journal's health report (``hpo doctor``) and its repair (``hpo repair``).

Optuna 5's ``JournalFileBackend.read_logs`` skips a last line without end of line (a
writer that died mid-append) and a last line that is not JSON. But as soon as any line
follows a bad one every load fails (``ValueError``/``JSONDecodeError``); a record Optuna
can parse but not replay fails every load with a bare ``KeyError``. The live path
(:mod:`hpo.journal.backend`) cuts a torn tail online; damage in the middle needs:

* :func:`doctor`: a read-only report: the damage (:func:`hpo.journal.scan.scan`), what
  :func:`repair` would do, the trials concerned, the locks and the filesystem;
* :func:`repair` (offline: stop every worker first): rewrites the journal without its
  damage, quarantining the bad bytes, and keeps trial ids and numbers as they were (the
  plan: :mod:`hpo.journal._plan`).

Every rewrite first saves what it removes beside the journal
(``<journal>.quarantine-<UTC>.jsonl``, ``<journal>.bak-<UTC>``) and fsyncs.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from hpo._optuna import BaseJournalFileLock, study_id
from hpo.errors import StorageError, UsageError
from hpo.journal._plan import (
    REPAIRED_ATTR,
    AffectedTrial,
    Finding,
    Plan,
    affected_trials,
    make_plan,
    render_findings,
)
from hpo.journal.filesystem import Mount, filesystem_of, filesystem_warning, visibility_warning
from hpo.journal.locking import journal_lock, kernel_lock_file
from hpo.journal.scan import scan
from hpo.journal.snapshot import snapshot_path
from hpo.system.files import fsync_dir, utc_stamp, write_new
from hpo.system.kernel_lock import describe_kernel_holder, kernel_holder
from hpo.system.lock import describe_holder, held, holder

_logger = logging.getLogger(__name__)


def _optuna_error(path: str) -> str | None:
    """What plain Optuna says when loading ``path`` (None: it loads)."""
    try:
        storage = JournalStorage(JournalFileBackend(path))
        for study in storage.get_all_studies():
            storage.get_all_trials(study_id(study), deepcopy=False)
    except Exception as err:  # any failure is the answer
        return f"{type(err).__name__}: {err}"
    return None


@dataclass(frozen=True)
class Report:
    """What :func:`doctor` found; ``render()`` is the text for a terminal."""

    path: str
    size: int
    records: int
    findings: tuple[Finding, ...]
    affected: tuple[AffectedTrial, ...]
    filesystem: Mount | None
    warnings: tuple[str, ...]
    optuna_error: str | None
    locks: dict[str, dict[str, Any] | None]

    @property
    def damaged(self) -> bool:
        return bool(self.findings)

    def render(self) -> str:
        lines = [f"journal: {self.path} ({self.size} bytes, {self.records} sound records)"]
        fs = self.filesystem
        lines.append(f"filesystem: {fs.fstype} mounted at {fs.mount_point}" if fs else "filesystem: unknown")
        for name, info in self.locks.items():
            if name == "journal (record lock)":
                lines.append(f"{name}: {describe_kernel_holder(info)}")
            else:
                lines.append(f"{name} lock: {describe_holder(info)}")
        lines.append("Optuna loads it: " + ("yes" if self.optuna_error is None else f"NO ({self.optuna_error})"))
        lines += [f"WARNING: {w}" for w in self.warnings]
        if not self.findings:
            lines.append("damage: none")
            return "\n".join(lines)
        lines.append(f"damage: {len(self.findings)} finding(s); what `hpo repair` will do:")
        lines += render_findings(self.findings, self.affected)
        lines.append("next: stop every worker, then run `hpo repair` (a full backup is kept)")
        return "\n".join(lines)


def doctor(path: str | os.PathLike[str], mounts: str = "/proc/mounts") -> Report:
    """Read-only health report of the journal at ``path``.

    Lists damage in the tail and the middle with what :func:`repair` would do,
    the trials concerned (ids, and study and number from replaying the
    creations in order), whether plain Optuna loads the file, who holds the
    journal and slot locks, and warns when the directory is on a node-local
    filesystem. Raises :class:`~hpo.errors.UsageError` when there is no file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such journal file")
    with open(path, "rb") as f:
        data = f.read()
    plan = make_plan(path, data)
    mount = filesystem_of(os.path.dirname(os.path.abspath(path)), mounts)
    directory = os.path.dirname(os.path.abspath(path))
    warnings = tuple(w for w in [filesystem_warning(mount), visibility_warning(directory, None, mounts)] if w)
    locks: dict[str, dict[str, Any] | None] = {"journal": holder(path), "slots": holder(f"{path}.slots")}
    if kernel_lock_file(Path(path)).exists():
        # The journal's writers take the record lock; a lock file there is a plain Optuna writer's.
        locks = {"journal (record lock)": kernel_holder(path), "plain Optuna writers' file": locks["journal"]}
    return Report(path, plan.size, plan.records, tuple(plan.findings), affected_trials(plan.findings),
                  mount, warnings, _optuna_error(path), locks)


# ---------------------------------------------------------------------------------------
# repair
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepairResult:
    """What :func:`repair` did. ``changed`` False: the journal was sound, nothing written."""

    path: str
    changed: bool
    backup: str | None
    quarantine: str | None
    findings: tuple[Finding, ...]
    affected: tuple[AffectedTrial, ...]
    studies: int  # as Optuna loads the repaired journal
    trials: int

    def render(self) -> str:
        if not self.changed:
            return f"{self.path}: no damage, nothing changed"
        lines = [f"repaired {self.path}: Optuna loads {self.studies} studies, {self.trials} trials",
                 f"full backup: {self.backup}", f"quarantined bytes: {self.quarantine}"]
        return "\n".join(lines + render_findings(self.findings, self.affected))


def repair(path: str | os.PathLike[str], lock: BaseJournalFileLock | None = None) -> RepairResult:
    """Rewrite the journal at ``path`` without its damage. Offline: stop every worker first.

    Holding ``lock`` (the journal's own lock by default): quarantines unusable bytes (tail and middle) into
    ``<journal>.quarantine-<UTC>.jsonl`` (offset, line, reason, action and the
    bytes in base64), keeps sound records byte for byte, salvages sound records
    glued onto torn ones, restores a lost creation as a marked placeholder
    (system attribute ``hpo:repaired``) where the records after it show it had
    counted (so trial ids and numbers stay as every worker saw them; see
    ``_decide``), and drops records that still name a trial or study never
    created. The result is loaded with Optuna (all studies, all trials) before it
    atomically replaces the journal (temp file, fsync, ``os.replace``); the
    original is kept as ``<journal>.bak-<UTC>``. Idempotent: a sound journal is
    left byte-identical.

    Why offline: running workers keep byte offsets and replay state of the old
    file; after a rewrite they would read the new one from wrong offsets.

    Raises :class:`~hpo.errors.UsageError` for a missing file and
    :class:`~hpo.errors.StorageError` if the rewritten journal does not load
    (then nothing is changed), if plain Optuna loads the journal while hpo finds
    damage before its last line (hpo would quarantine records Optuna uses), and
    (:class:`~hpo.journal.format.NewerFormatError`) if a newer Optuna wrote it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such journal file")
    with held(journal_lock(Path(path)) if lock is None else lock):
        with open(path, "rb") as f:
            data = f.read()
        plan = make_plan(path, data)
        if not plan.findings:
            studies, trials = _load_counts(path)
            return RepairResult(path, False, None, None, (), (), studies, trials)
        middle = [f for f in plan.findings if f.where == "middle"]
        if middle and _optuna_error(path) is None:
            raise StorageError(
                f"{path}: Optuna loads this journal as it is, yet hpo finds {len(middle)} record(s) it "
                f"could not replay (first at byte {middle[0].offset}: {middle[0].reason}); hpo's check is "
                "wrong here, so nothing was rewritten. Please report it.")
        return _rewrite(plan, data)


def _rewrite(plan: Plan, original: bytes) -> RepairResult:
    """Holding the lock: write the plan to a temp file, prove Optuna loads it, then swap it in."""
    path, stamp = plan.path, utc_stamp()
    tmp = f"{path}.repair-{secrets.token_hex(6)}.tmp"
    write_new(tmp, b"".join(item.data + b"\n" for item in plan.items))
    try:
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        check = scan(tmp)
        if not check.clean:
            raise StorageError(f"repair left damage at byte {(check.tail or check.middle[0]).offset}")
        studies, trials = _load_counts(tmp)
    except Exception as err:
        os.unlink(tmp)
        raise StorageError(f"{path}: the repaired journal does not load ({type(err).__name__}: {err}); "
                           f"nothing was changed") from err
    quarantine = write_new(f"{path}.quarantine-{stamp}.jsonl", _quarantine_lines(plan.quarantined))
    backup = write_new(f"{path}.bak-{stamp}", original)
    shutil.copystat(path, backup)
    snapshot_path(Path(path)).unlink(missing_ok=True)  # it compacted the journal before the repair
    os.replace(tmp, path)
    fsync_dir(path)
    _logger.info("repaired %s: %d finding(s); backup %s, quarantine %s",
                 path, len(plan.findings), backup, quarantine)
    return RepairResult(path, True, backup, quarantine, tuple(plan.findings), affected_trials(plan.findings),
                        studies, trials)


def _load_counts(path: str) -> tuple[int, int]:
    """(studies, trials) as Optuna loads ``path``; raises whatever Optuna raises."""
    storage = JournalStorage(JournalFileBackend(path))
    studies = storage.get_all_studies()
    return len(studies), sum(len(storage.get_all_trials(study_id(s), deepcopy=False)) for s in studies)


def _quarantine_lines(quarantined: list[tuple[Finding, bytes]]) -> bytes:
    lines = []
    for f, data in quarantined:
        lines.append(json.dumps({
            "offset": f.offset, "line": f.line, "length": f.length, "where": f.where, "reason": f.reason,
            "action": f.action, "detail": f.detail, "trial_id": f.trial_id, "study": f.study, "number": f.number,
            "text": data.decode("utf-8", "backslashreplace"), "base64": base64.b64encode(data).decode("ascii"),
        }))
    return "".join(line + "\n" for line in lines).encode()


__all__ = ["REPAIRED_ATTR", "AffectedTrial", "Finding", "RepairResult", "Report", "doctor", "repair"]

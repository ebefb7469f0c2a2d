"""SLURM: pure parsers of its commands' output, the one place that runs them, and the
study's jobs file (``$JOURNAL_DIR/<study>.jobs``, the job ids ``hpo cancel`` and ``hpo
status`` look up)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

from hpo.errors import SchedulerError
from hpo.system.lock import make_lock
from hpo.system.files import make_dirs

_logger = logging.getLogger(__name__)

_DURATION = re.compile(r"^(?:(?P<days>\d+)-)?(?:(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+)$")


def parse_duration(text: str) -> float | None:
    """Seconds in a SLURM duration (``squeue %L``/``%l``): ``1-02:03:04``, ``02:03:04``,
    ``03:04``; None for ``UNLIMITED``/``NOT_SET``/``INVALID``. Raises on anything else."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "NOT_SET", "INVALID", ""):
        return None
    if re.fullmatch(r"\d+-\d+", text):  # days-hours
        day_text, hour_text = text.split("-")
        return int(day_text) * 86400 + int(hour_text) * 3600
    match = _DURATION.match(text)
    if not match:
        raise SchedulerError(f"cannot parse SLURM duration {text!r}")
    days, hours = int(match["days"] or 0), int(match["h"] or 0)
    return days * 86400 + hours * 3600 + int(match["m"]) * 60 + int(match["s"])


def run_command(args: Sequence[str], timeout: float = 30.0) -> str:
    """Run a scheduler command (never through a shell); its stdout, or SchedulerError."""
    if shutil.which(args[0]) is None:
        raise SchedulerError(f"{args[0]}: command not found (is SLURM installed and on PATH?)")
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{' '.join(args)}: no answer in {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise SchedulerError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def time_left(job_id: str) -> float | None:
    """Seconds before the job's time limit, or None when unknown/unlimited."""
    try:
        return parse_duration(run_command(["squeue", "-h", "-j", job_id, "-o", "%L"]).strip().splitlines()[0])
    except (SchedulerError, IndexError) as exc:
        _logger.warning("time left of job %s unknown: %s", job_id, exc)
        return None


def cancel(job_ids: Sequence[str]) -> None:
    if job_ids:
        run_command(["scancel", *job_ids])


def record_jobs(path: Path, job_ids: Sequence[str]) -> None:
    """Append job ids to a study's jobs file, in one write, fsynced, under the file's own
    lock: the sbatch scripts (``hpo config --record-job``) and ``hpo submit`` of several
    nodes may record at the same moment, and unlocked appends from two GlusterFS clients
    garble lines."""
    make_dirs(path.parent)
    with make_lock(path), path.open("a") as handle:
        handle.write("".join(f"{job_id}\n" for job_id in job_ids))
        handle.flush()
        os.fsync(handle.fileno())


def recorded_jobs(path: Path) -> list[str]:
    """The job ids in a study's jobs file, first occurrence order; [] when there is none."""
    if not path.is_file():
        return []
    return list(dict.fromkeys(line.strip() for line in path.read_text().splitlines() if line.strip()))


# The one listing of the queue: every job of every user (a study may be shared).
# Listing the whole queue, rather than asking ``squeue -j`` about ids, works when
# every asked job is gone (``-j`` then fails with "Invalid job id specified").
QUEUE_FORMAT = "%A|%F|%i|%T|%j|%M|%D|%R"
QUEUE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SlurmJob:
    job_id: str  # %i, as squeue shows it: 123, 124_3, 124_[4-9%2]
    state: str
    name: str
    elapsed: str
    nodes: str
    reason: str  # NODELIST(REASON): nodes when running, the reason when pending
    own_id: str = ""  # %A: what a task sees as SLURM_JOB_ID
    array_id: str = ""  # %F: the array's job id (= own id outside arrays)

    @property
    def ids(self) -> set[str]:
        return {i for i in (self.job_id, self.own_id, self.array_id) if i}


def parse_queue(text: str) -> list[SlurmJob]:
    """Rows of ``squeue --noheader --format=%A|%F|%i|%T|%j|%M|%D|%R`` (blank lines skipped)."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("|", 7)]
        fields += [""] * (8 - len(fields))
        own, array, display, state, name, elapsed, nodes, reason = fields
        jobs.append(SlurmJob(display, state, name, elapsed, nodes, reason, own, array))
    return jobs


def list_queue() -> list[SlurmJob]:
    """Every pending or running job (see :data:`QUEUE_FORMAT`)."""
    return parse_queue(run_command(["squeue", "--noheader", f"--format={QUEUE_FORMAT}"], QUEUE_TIMEOUT_S))


def jobs_of(queue: Sequence[SlurmJob], job_ids: Collection[str]) -> list[SlurmJob]:
    """The jobs of ``queue`` that are, or belong to (array tasks), one of ``job_ids``."""
    wanted = set(job_ids)
    return [job for job in queue if job.ids & wanted]


def queued_job_ids() -> set[str]:
    """Ids of every pending or running job: each job's own id, array id and display id."""
    return {i for job in list_queue() for i in job.ids}


def active_jobs(job_ids: Sequence[str]) -> list[str]:
    """The subset of ``job_ids`` (plain or array ids) still pending or running."""
    if not job_ids:
        return []
    queued = queued_job_ids()
    return [j for j in job_ids if j in queued or j.split("_")[0] in queued]

"""``hpo status``: one screen about a study, from its journal, run directories and ``squeue``.

:func:`collect` gathers the inputs (the only impure part: files, clock, squeue),
:func:`build` turns them into a plain JSON-able dict (the ``--json`` output, pure),
:func:`render` turns that dict into rich tables (pure). ``squeue`` runs through
:func:`hpo.system.slurm.run_command`, the project's one runner of SLURM commands.

Fast on big studies: the journal is read with :mod:`hpo.journal.reader`, and only
the running and best trials are decoded in full (by Optuna's own replay). A study in an
RDB (``HPO_STORAGE``) is read through Optuna instead (:func:`open_view`).
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Mapping, Sequence

from hpo.config.settings import TRIAL_BUDGET_ATTR, BUDGET_COUNTS, StudySpec, is_capped
from hpo.study import budgets
from hpo.journal.format import journal_studies, no_such_study
from hpo.journal.reader import StudyJournal, TrialRecord, knee_point, pareto_front
from hpo.study.shared import BUDGET_ATTR, BUDGET_COUNTS_ATTR
from hpo.system.files import json_safe
from hpo.system.slurm import SlurmJob
from hpo.worker.context import METRICS_FILE, objective_attrs
from hpo.worker.recovery import Beats, is_lost, last_beat, read_beats

if TYPE_CHECKING:
    from rich.console import RenderableType

    from hpo.config.settings import Settings
    from hpo.config.study import Launch

_logger = logging.getLogger(__name__)

SHOWN_STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")  # the counts status shows, in order

SLURM_KEYS = ("slurm_array_job_id", "slurm_job_id")
WORKER_KEYS = ("worker", *SLURM_KEYS)  # read for every trial; the host only for each worker's latest
MAX_HOST_LOOKUPS = 256  # workers (the most recent) whose host is looked up
THROUGHPUT_WINDOW_S = 3600.0  # throughput is measured over the last hour (or since the first start)


@dataclass(frozen=True)
class SlurmInfo:
    available: bool  # squeue was found and answered
    note: str
    jobs: tuple[SlurmJob, ...] = ()


# -- SLURM --------------------------------------------------------------------------

def study_job_ids(attrs: Mapping[str, Mapping[int, Any]]) -> list[str]:
    """SLURM job ids recorded by the study's trials: the array job id when there is
    one (``squeue --jobs=<array id>`` lists every task), else the job id."""
    ids: set[str] = set()
    arrays = attrs.get("slurm_array_job_id", {})
    for number, job in attrs.get("slurm_job_id", {}).items():
        ids.add(str(arrays.get(number) or job))
    ids.update(str(a) for a in arrays.values() if a)
    return sorted(ids, key=lambda i: (len(i), i))


def squeue(job_ids: Collection[str]) -> SlurmInfo:
    """The study's jobs still known to SLURM (from the one queue listing in
    :mod:`hpo.system.slurm`); quiet when there are none or no ``squeue``."""
    if not job_ids:
        return SlurmInfo(False, "no SLURM job recorded for the study")
    if shutil.which("squeue") is None:
        return SlurmInfo(False, "squeue not found on this machine")
    from hpo.errors import SchedulerError
    from hpo.system.slurm import jobs_of, list_queue

    try:
        jobs = jobs_of(list_queue(), job_ids)
    except SchedulerError as exc:
        return SlurmInfo(False, f"squeue: {exc}")
    note = f"{len(jobs)} job(s) in the queue" if jobs else "none of the study's jobs is queued or running"
    return SlurmInfo(True, note, tuple(jobs))


def recorded_job_ids(settings: "Settings") -> list[str]:
    """Job ids ``hpo submit`` and the sbatch scripts recorded for the study (pending ones too)."""
    from hpo.system.slurm import recorded_jobs

    return recorded_jobs(settings.jobs_path)


# -- inputs -------------------------------------------------------------------------

def last_metrics(run_dir: Path, tail_bytes: int = 16384) -> dict[str, Any] | None:
    """The last complete line of ``run_dir/metrics.jsonl`` (PhysAE: stage, epoch, ...), or None."""
    path = run_dir / METRICS_FILE
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - tail_bytes))
            lines = handle.read().split(b"\n")
    except OSError:
        return None
    for raw in reversed(lines[:-1] if lines and lines[-1] else lines):
        if raw.strip():
            try:
                record = json.loads(raw)
            except ValueError:
                return None
            return record if isinstance(record, dict) else None
    return None


@dataclass
class Inputs:
    """Everything :func:`build` needs, gathered by :func:`collect`."""

    journal: StudyJournal
    worker_attrs: dict[str, dict[int, Any]]
    metrics: dict[int, dict[str, Any]]
    slurm: SlurmInfo
    max_trials: int
    stale_seconds: float
    now: float
    read_seconds: float
    counting: StudySpec  # what MAX_TRIALS counts (its budget_counts: the stored one, unless given)
    beats: Beats | None = None  # the workers' heartbeat files (journal storage)
    host: str | None = None  # this machine: a trial whose worker ran here and whose pid is gone is a zombie


def collect(settings: "Settings", now: float | None = None, slurm: bool = True,
            journal: StudyJournal | None = None) -> Inputs:
    """Read the journal (unless the caller read it: ``journal``), the running trials'
    metrics and (when recorded) the SLURM queue."""
    started = time.perf_counter()
    journal = open_view(settings) if journal is None else journal
    attrs = journal.user_attr_values(WORKER_KEYS)
    latest = sorted(latest_trials(attrs["worker"]).values())[-MAX_HOST_LOOKUPS:]
    journal.decode(_numbers_to_decode(journal) + latest)  # one scan for all of them
    attrs["host"] = {n: journal.trials[n].user_attrs["host"] for n in latest if "host" in journal.trials[n].user_attrs}
    read_seconds = time.perf_counter() - started
    metrics: dict[int, dict[str, Any]] = {}
    for trial in journal.trials:
        if trial.state == "RUNNING" and isinstance(trial.user_attrs.get("run_dir"), str):
            record = last_metrics(Path(trial.user_attrs["run_dir"]))
            if record is not None:
                metrics[trial.number] = record
    info = SlurmInfo(False, "not asked")
    if slurm:
        ids = study_job_ids(attrs)
        if shutil.which("squeue") is not None:
            ids = list(dict.fromkeys([*ids, *recorded_job_ids(settings)]))
        info = squeue(ids)
    running = [t.trial_id for t in journal.trials if t.state == "RUNNING"]
    beats = None if settings.storage else read_beats(settings.spec.beats_dir, running)
    return Inputs(journal, attrs, metrics, info, budget(settings, journal), settings.stale_seconds,
                  time.time() if now is None else now, read_seconds, counting(settings, journal), beats, socket.gethostname())


def counting(settings: "Settings", journal: StudyJournal) -> StudySpec:
    """The study as its MAX_TRIALS counts: ``HPO_BUDGET_COUNTS`` given to this command, else
    as its workers stored it."""
    stored = journal.study.system_attrs.get(BUDGET_COUNTS_ATTR)
    if stored in BUDGET_COUNTS and not settings.sources.get("budget_counts", "default").startswith(("flag", "env:")):
        return replace(settings.spec, budget_counts=stored)
    return settings.spec


def counted(inputs: Inputs, states: Mapping[str, int]) -> int:
    """The study's trials that MAX_TRIALS counts (:meth:`StudySpec.counted`): the reasons
    of COMPLETE trials are read only when capped ones may not count."""
    spec = inputs.counting
    capped = 0
    if spec.budget_counts == "complete" and states.get("COMPLETE"):
        reasons = inputs.journal.user_attr_values(["reason"])["reason"]
        capped = sum(is_capped(t.state, reasons.get(t.number)) for t in inputs.journal.trials)
    return spec.counted(states, capped)


def budget(settings: "Settings", journal: StudyJournal) -> int:
    """The study's MAX_TRIALS: one given to this command (flag or environment), else the
    one its workers enforced and stored with the study, else the config's or the default."""
    stored = journal.study.system_attrs.get(BUDGET_ATTR)
    given = settings.sources.get("max_trials", "default").startswith(("flag", "env:"))
    return stored if isinstance(stored, int) and not given else settings.max_trials


def latest_trials(workers: Mapping[int, Any]) -> dict[str, int]:
    """Worker id -> the number of its latest trial."""
    latest: dict[str, int] = {}
    for number, worker in workers.items():
        if number > latest.get(str(worker), -1):
            latest[str(worker)] = number
    return latest


def open_view(settings: "Settings") -> StudyJournal:
    """The study: its journal file read directly, or (``HPO_STORAGE`` set) an RDB read
    through Optuna, every trial decoded."""
    if not settings.storage:
        return StudyJournal.read(settings.journal_path, settings.study_name)
    import optuna

    from hpo._optuna import stale_trial_ids, study_id
    from hpo.study.storage import open_storage

    storage = open_storage(settings.spec)  # with the workers' heartbeat settings
    try:
        study = optuna.load_study(study_name=settings.study_name, storage=storage)
    except KeyError:
        raise no_such_study(settings.study_name, settings.storage_label,
                            [s.study_name for s in storage.get_all_studies()]) from None
    stale = frozenset(stale_trial_ids(storage, study_id(study)) or ())
    return StudyJournal.from_study(study, settings.storage_label, stale)


def _numbers_to_decode(journal: StudyJournal) -> list[int]:
    numbers = [t.number for t in journal.trials if t.state == "RUNNING"]
    best = journal.best_trial()
    if best is not None:
        numbers.append(best.number)
    elif len(journal.study.directions) > 1:
        numbers += [t.number for t in pareto_front(journal.trials, journal.study.directions)]
    return numbers


# -- the report (pure) --------------------------------------------------------------

def build(inputs: Inputs) -> dict[str, Any]:
    """The status as a strict-JSON dict (the ``hpo status --json`` schema, see docs/watch.md;
    non-finite values are null)."""
    journal, now = inputs.journal, inputs.now
    trials = journal.trials
    states = {s: 0 for s in SHOWN_STATES}
    for t in trials:
        states[t.state] += 1
    finished = counted(inputs, states)
    rate, window = throughput(trials, now)
    remaining = max(0, inputs.max_trials - finished)
    eta = 0.0 if remaining == 0 else (remaining / rate if rate else None)
    running = [_running_row(t, inputs) for t in trials if t.state == "RUNNING"]
    per_trial = journal.user_attr_values([TRIAL_BUDGET_ATTR])[TRIAL_BUDGET_ATTR]
    return json_safe({  # type: ignore[no-any-return]
        "study": journal.study.name,
        "storage": journal.label,
        "journal_bytes": journal.size,
        "read_seconds": round(inputs.read_seconds, 4),
        "generated_at": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        "directions": [d.lower() for d in journal.study.directions],
        "metric_names": journal.study.metric_names,
        "n_trials": len(trials),
        "states": states,
        "finished": finished,
        "max_trials": inputs.max_trials,
        "throughput_per_hour": None if rate is None else round(rate * 3600, 3),
        "throughput_window_s": None if window is None else round(window, 1),
        "eta_seconds": None if eta is None else round(eta, 1),
        "best": _best(journal),
        "pareto": _pareto(journal),
        "budgets": [{"budget": b, "trials": n} for b, n in budgets.groups(per_trial)],
        "budget_mix": budgets.mix_warning(per_trial),
        "running": running,
        "zombies": [r["number"] for r in running if r["zombie"]],
        "stale_seconds": inputs.stale_seconds,
        "workers": workers_summary(trials, inputs.worker_attrs),
        "slurm": {"available": inputs.slurm.available, "note": inputs.slurm.note,
                  "jobs": [asdict(j) for j in inputs.slurm.jobs]},
    })


def throughput(trials: Sequence[TrialRecord], now: float) -> tuple[float | None, float | None]:
    """Finished (COMPLETE or PRUNED) trials per second over the last hour, or since the
    first trial started when that is more recent; ``(None, None)`` before any start."""
    starts = [t.start_iso for t in trials if t.start_iso]
    if not starts:
        return None, None
    if all(_is_utc_micro(s) for s in starts):
        first = datetime.fromisoformat(min(starts)).timestamp()  # same format: text order is time order
    else:
        first = min(datetime.fromisoformat(s).timestamp() for s in starts)
    window = min(THROUGHPUT_WINDOW_S, max(now - first, 1e-9))
    done = sum(1 for t in trials if t.state in ("COMPLETE", "PRUNED") and t.complete_iso
               and now - _timestamp(t.complete_iso) <= window)
    return done / window, window


def _is_utc_micro(iso: str) -> bool:
    """Optuna's own format: ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``."""
    return len(iso) == 32 and iso.endswith("+00:00")


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _best(journal: StudyJournal) -> dict[str, Any] | None:
    best = journal.best_trial()
    if best is None:
        return None
    return {"number": best.number, "value": best.values[0] if best.values else None, "params": best.params,
            "metrics": objective_attrs(best.user_attrs), "duration_s": best.duration_s,
            "worker": best.user_attrs.get("worker")}


def _pareto(journal: StudyJournal) -> list[dict[str, Any]] | None:
    """The Pareto front (several objectives), by trial number; ``knee``: ``hpo best``'s choice."""
    if len(journal.study.directions) < 2:
        return None
    front = pareto_front(journal.trials, journal.study.directions)
    knee = knee_point(front, journal.study.directions)
    return [{"number": t.number, "values": t.values, "params": t.params, "knee": t is knee} for t in front]


def _running_row(trial: TrialRecord, inputs: Inputs) -> dict[str, Any]:
    now, attrs = inputs.now, trial.user_attrs
    started = trial.started_at
    stale_ids = inputs.journal.stale_trial_ids
    # An RDB keeps heartbeats in its own table (and gives its verdict): no age to show.
    beat = inputs.beats.get(trial.trial_id) if inputs.beats else None
    beat_time = last_beat(trial.system_attrs, started, beat) if stale_ids is None else None
    age = None if beat_time is None else now - beat_time
    step = max(trial.intermediate) if trial.intermediate else None
    metrics = inputs.metrics.get(trial.number, {})
    return {
        "number": trial.number,
        "worker": attrs.get("worker"),
        "host": attrs.get("host"),
        "gpu": attrs.get("gpu"),
        "stage": metrics.get("stage"),
        "epoch": metrics.get("epoch"),
        "step": step,
        "last_metric": None if step is None else trial.intermediate[step],
        "elapsed_s": None if started is None else round(now - started, 1),
        "heartbeat_age_s": None if age is None else round(age, 1),
        # The reaper's rule; the pid check only for a worker of this host (a segfault shows at once).
        "zombie": is_lost(attrs, trial.system_attrs, trial.trial_id, started, now, inputs.stale_seconds,
                          host=inputs.host, stale_ids=stale_ids, beats=inputs.beats),
    }


def workers_summary(trials: Sequence[TrialRecord], attrs: Mapping[str, Mapping[int, Any]]) -> list[dict[str, Any]]:
    """Per worker id: trials by state, the running ones, its host (``attrs["host"]`` of its
    latest trial) and the last time it started or finished a trial (UTC)."""
    by_worker: dict[str, list[int]] = {}
    for number, worker in attrs.get("worker", {}).items():
        if number < len(trials):
            by_worker.setdefault(str(worker), []).append(number)
    hosts = attrs.get("host", {})
    out = []
    for worker in sorted(by_worker):
        numbers = sorted(by_worker[worker])
        counts = Counter(trials[n].state for n in numbers)
        # ISO strings in UTC compare in time order.
        last = max((trials[n].complete_iso or trials[n].start_iso or "" for n in numbers), default="")
        out.append({
            "worker": worker,
            "host": hosts.get(numbers[-1]),
            "trials": len(numbers),
            "complete": counts["COMPLETE"],
            "pruned": counts["PRUNED"],
            "fail": counts["FAIL"],
            "running": [n for n in numbers if trials[n].state == "RUNNING"] if counts["RUNNING"] else [],
            "last_active": datetime.fromisoformat(last).astimezone(timezone.utc).isoformat(timespec="seconds")
            if last else None,
        })
    return out


# -- rendering (pure) ----------------------------------------------------------------

def human_seconds(seconds: float | None) -> str:
    """``95`` -> ``1m35s``, ``0.35`` -> ``0.3s``, ``None`` -> ``-``."""
    if seconds is None:
        return "-"
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render(status: Mapping[str, Any]) -> "RenderableType":
    """Rich tables for the terminal, from :func:`build`'s dict."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [_header(status)]
    if status.get("budget_mix"):
        parts.append(Text(f"warning: {status['budget_mix']}", style="bold yellow"))
    if status["best"] is not None:
        best = status["best"]
        parts.append(Text(f"best trial {best['number']}: value {_num(best['value'])} "
                          f"(worker {_num(best['worker'])}, {human_seconds(best['duration_s'])})", style="bold"))
        parts.append(_params_table(best["params"]))
        if best.get("metrics"):
            parts.append(_params_table(best["metrics"], "metrics"))
    if status["pareto"]:
        table = Table(title=f"Pareto front ({len(status['pareto'])} trials)", title_justify="left")
        names = status["metric_names"] or [f"objective {i}" for i in range(len(status["directions"]))]
        for column in ("trial", *names):
            table.add_column(column, justify="right", overflow="fold")
        for row in status["pareto"][:20]:
            table.add_row(str(row["number"]), *(_num(v) for v in row["values"]))
        parts.append(table)
    if status["running"]:
        table = Table(title="running trials", title_justify="left")
        for column in ("trial", "worker", "host", "GPU", "stage", "epoch", "step", "elapsed", "last metric",
                       "heartbeat"):
            table.add_column(column, overflow="fold")  # fold, never cut: ids and paths stay whole
        for r in status["running"]:
            beat = Text(human_seconds(r["heartbeat_age_s"]), style="bold red" if r["zombie"] else "")
            table.add_row(str(r["number"]), _num(r["worker"]), _num(r["host"]), _num(r["gpu"]), _num(r["stage"]),
                          _num(r["epoch"]), _num(r["step"]), human_seconds(r["elapsed_s"]), _num(r["last_metric"]),
                          beat)
        parts.append(table)
    if status["zombies"]:
        parts.append(Text(f"zombies (RUNNING, heartbeat older than {status['stale_seconds']:g}s): "
                          f"{', '.join(map(str, status['zombies']))}; the next worker to start or finish a trial "
                          "fails and retries them",
                          style="bold red"))
    if status["workers"]:
        table = Table(title="workers", title_justify="left")
        for column in ("worker", "host", "trials", "complete", "pruned", "fail", "running trial", "last active (UTC)"):
            table.add_column(column, overflow="fold")  # fold, never cut: ids and paths stay whole
        for w in status["workers"]:
            table.add_row(w["worker"], _num(w["host"]), str(w["trials"]), str(w["complete"]), str(w["pruned"]),
                          str(w["fail"]), ", ".join(map(str, w["running"])) or "-", _num(w["last_active"]))
        parts.append(table)
    parts.append(_slurm_part(status["slurm"]))
    return Group(*parts)


def _header(status: Mapping[str, Any]) -> Any:
    from rich.text import Text

    s = status["states"]
    if status["finished"] >= status["max_trials"]:
        eta = "done"
    elif status["eta_seconds"] is None:
        eta = "unknown (no trial finished lately)"
    else:
        eta = human_seconds(status["eta_seconds"])
    rate = status["throughput_per_hour"]
    lines = [
        f"study {status['study']} ({', '.join(status['directions'])})  storage {status['storage']} "
        f"({status['journal_bytes'] / 1e6:.1f} MB, read in {status['read_seconds']:.2f}s)",
        f"finished {status['finished']}/{status['max_trials']} (COMPLETE {s['COMPLETE']}, PRUNED {s['PRUNED']})  "
        f"FAIL {s['FAIL']}  RUNNING {s['RUNNING']}  WAITING {s['WAITING']}  total {status['n_trials']}",
        f"throughput {'-' if rate is None else f'{rate:.3g}'} trials/h over the last "
        f"{human_seconds(status['throughput_window_s'])}  ETA {eta}",
    ]
    return Text("\n".join(lines))


def _params_table(params: Mapping[str, Any], what: str = "parameter") -> Any:
    from rich.table import Table

    table = Table()
    table.add_column(what, overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    for name, value in params.items():
        table.add_row(name, _num(value))
    return table


def _slurm_part(slurm: Mapping[str, Any]) -> Any:
    from rich.table import Table
    from rich.text import Text

    if not slurm["jobs"]:
        return Text(f"SLURM: {slurm['note']}", style="dim")
    table = Table(title="SLURM jobs", title_justify="left")
    for column in ("job", "state", "name", "elapsed", "nodes", "nodelist (reason)"):
        table.add_column(column, overflow="fold")
    for job in slurm["jobs"]:
        table.add_row(job["job_id"], job["state"], job["name"], job["elapsed"], job["nodes"], job["reason"])
    return table


__all__ = ["SlurmInfo", "build", "collect", "open_view", "render", "render_snapshot", "snapshot",
           "squeue", "study_job_ids", "throughput", "workers_summary"]


# -- a sweep: several studies, one table ---------------------------------------------------

def not_started(settings: "Settings") -> dict[str, Any]:
    """A sweep's study that no worker has opened yet (its journal does not exist)."""
    return {"study": settings.study_name, "not_started": True, "finished": 0, "max_trials": settings.max_trials,
            "states": {s: 0 for s in SHOWN_STATES}, "best": None,
            "pareto": None}


def started(settings: "Settings") -> bool:
    """Whether the study exists (a sweep's later studies appear when workers reach them)."""
    return bool(settings.storage) or settings.journal_path.exists()


def sweep_state(settings: "Settings", slurm: bool = True, journal: StudyJournal | None = None) -> dict[str, Any]:
    """One study of a sweep as :func:`build` shows it (from ``journal`` when the caller
    read it already), or :func:`not_started`."""
    if journal is None and not started(settings):
        return not_started(settings)
    return build(collect(settings, slurm=slurm, journal=journal))


def combined_rows(statuses: Sequence[Mapping[str, Any]], values: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per study of a sweep: its matrix values, progress and best (pure)."""
    rows = []
    for status, cell in zip(statuses, values):
        # Several objectives: the knee of the Pareto front, as hpo best chooses it.
        best = status["best"] or next((t for t in status["pareto"] or () if t.get("knee")), None)
        rows.append({"study": status["study"], **cell, "finished": status["finished"],
                     "max_trials": status["max_trials"], "running": status["states"]["RUNNING"],
                     "fail": status["states"]["FAIL"],
                     "best_trial": best["number"] if best else None,
                     "best_value": (best["value"] if "value" in best else best["values"]) if best else None,
                     "pareto_size": len(status["pareto"]) if status["pareto"] else None,
                     "best_params": best["params"] if best else None})
    return rows


def render_combined(rows: Sequence[Mapping[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=f"sweep: {len(rows)} studies", title_justify="left")
    columns = [c for c in rows[0] if c != "best_params"] if rows else []
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_num(row[c]) for c in columns))
    return table


def snapshot(launch: "Launch", slurm: bool = True) -> dict[str, Any]:
    """``hpo status --json``: one study's status; for a sweep, each study's, and the combined table."""
    if len(launch.studies) == 1:
        return build(collect(launch.settings, slurm=slurm))
    states = [sweep_state(settings, slurm=slurm) for settings, _ in launch.studies]
    values = [dict(config.cell) for _, config in launch.studies]
    return {"sweep": str(launch.config.path), "studies": states, "combined": combined_rows(states, values)}


def render_snapshot(state: Mapping[str, Any]) -> "RenderableType":
    """What ``hpo status`` prints of a :func:`snapshot`."""
    if "sweep" not in state:
        return render(state)
    from rich.console import Group
    from rich.rule import Rule
    from rich.text import Text

    parts: list[Any] = []
    for one in state["studies"]:
        shown = Text("not started yet: no worker has reached it") if one.get("not_started") else render(one)
        parts += [Rule(one["study"]), shown]
    return Group(*parts, Rule("sweep"), render_combined(state["combined"]))


# -- the studies of a journal folder (hpo studies) -----------------------------------------------

def study_rows(journal_dir: Path) -> list[dict[str, Any]]:
    """One row per study of the folder's journals: its trials by state, its best value
    (one objective) or Pareto-set size, and its last activity (the journal's last write)."""
    rows = []
    for name in journal_studies(journal_dir):
        path = journal_dir / f"{name}.journal"
        journal = StudyJournal.read(path, name)
        states = Counter(t.state for t in journal.trials)
        best = journal.best_trial()
        rows.append({
            "study": name, "trials": len(journal.trials),
            **{state.lower(): states.get(state, 0) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
            "directions": [d.lower() for d in journal.study.directions],
            "best": None if best is None or not best.values else best.values[0],
            "best_trial": None if best is None else best.number,
            "pareto": len(journal.best_trials()) if len(journal.study.directions) > 1 else None,
            "last_activity": datetime.fromtimestamp(path.stat().st_mtime).astimezone().isoformat(timespec="seconds"),
        })
    return rows


def render_studies(rows: Sequence[Mapping[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for title in ("study", "trials", "complete", "pruned", "fail", "running", "best", "last activity"):
        table.add_column(title, justify="left" if title in ("study", "last activity") else "right")
    for r in rows:
        best = (f"{_num(r['best'])} (trial {r['best_trial']})" if r["best"] is not None else
                f"{r['pareto']} on the Pareto front" if r["pareto"] is not None else "-")
        table.add_row(r["study"], str(r["trials"]), str(r["complete"]), str(r["pruned"]), str(r["fail"]),
                      str(r["running"]), best, r["last_activity"])
    return table

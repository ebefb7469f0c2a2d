"""Harvest a study: the best trial (or the Pareto set and its knee), and files to keep.

``hpo export`` writes into ``results/<study>/`` by default:

- ``best_params.json``: ``best_value``, ``best_params``, ``n_trials``, ``best_trial_number``
  (``{"best_params": ..., "best_value": ...}``; with several objectives, the knee point and its values);
- ``all_trials.csv`` and ``top_<k>_trials.csv`` (:func:`columns`): the trial's number, Optuna
  ``trial_id``, state, value(s) (one objective: also ``objective``), duration, start and end,
  ``hyperparams`` (its parameters as JSON), one ``params_<name>`` column per parameter, one
  ``budget_<NAME>`` column per budget the trials ran with (:mod:`hpo.study.budgets`), one
  ``user_attrs_<key>`` column per metric the objective set (``ctx.set_user_attr``), Optuna's
  ``trials_dataframe`` naming; then its worker, host, ``process_id``, ``pid`` (the problem id:
  the ``p_<hash>`` of :mod:`hpo.worker.results`), reason and run directory;
- ``trials.parquet``: the same table, typed, each metric also under its own name
  (seed 003's ``optuna_trials.parquet`` layout: ``objective``, ``hyperparams``, ``error``...);
- ``hpo_results.json``: ``best_trial``, ``best_score``, ``best_params``, ``best_<key>``
  for each metric of the best trial, and ``all_trials``;
- ``epoch_metrics.csv``: every trial's ``metrics.jsonl`` lines (``ctx.log_metrics``,
  PhysAE's epochs) with the trial's ``number`` first, when any trial wrote one.

Tables are built here as plain rows (pure, tested on literal records); pandas is
imported only to write CSV and parquet.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from hpo.config.fields import Field
from hpo.config.settings import TRIAL_BUDGET_ATTR, RESULTS_DIR
from hpo.study.budgets import mix_warning
from hpo.journal.reader import StudyJournal, TrialRecord, direction_signs, knee_point, pareto_front
from hpo.system.files import json_safe, write_json_atomic
from hpo.worker.context import METRICS_FILE, objective_attrs
from hpo.worker.results import PROBLEM_ID_ATTR
from hpo.worker.run_dir import worker_settings_path

if TYPE_CHECKING:
    from hpo.config.study import Launch

_logger = logging.getLogger(__name__)

DEFAULT_TOP = 20
ENQUEUE_NOTE = ("to train them once more: `hpo retrain` (trial 0 of a new study <study>-retrain, with this "
                "trial's budgets from its settings.json; --to NAME). By hand: `hpo export`, then "
                "`hpo enqueue results/<study>/best_params.json --study-name <new>` and, after the env line, "
                "`hpo run --workers 1 --max-trials 1 --study-name <new>` (a study that holds enqueued trials "
                "gets no warm start from the config)")


# -- best trial, Pareto set, knee --------------------------------------------------

@dataclass(frozen=True)
class Best:
    """The trial to report: the best one, or the knee of the Pareto set."""

    trial: TrialRecord | None
    front: tuple[TrialRecord, ...]  # the Pareto set, with several objectives only


def choose_best(journal: StudyJournal) -> Best:
    """Best trial (one objective) or knee point of the Pareto set (several); decodes what it returns."""
    directions = journal.study.directions
    if len(directions) == 1:
        best = journal.best_trial()
        if best is not None:
            journal.decode([best.number])
        return Best(best, ())
    front = pareto_front(journal.trials, directions)
    journal.decode([t.number for t in front])
    return Best(knee_point(front, directions), tuple(front))


def budget_env(trial: TrialRecord, fields: Sequence[Field], ran_with: Mapping[str, Any]) -> dict[str, str]:
    """Environment variables that reproduce a trial's budgets, from the objective's own
    settings (``fields``, its module's SETTINGS): first those that fix a parameter (e.g.
    PhysAE's stage epochs), from the trial's parameters, sampled or fixed when it ran;
    then the others as the trial ran with them (``ran_with``: its settings.json)."""
    fixed = trial.user_attrs.get("fixed_params") or {}
    env: dict[str, str] = {}
    for f in fields:
        if f.fixes is not None:
            value = trial.params.get(f.fixes, fixed.get(f.fixes) if isinstance(fixed, dict) else None)
            if value is not None:
                env[f.env] = str(value)
    for f in fields:
        if f.fixes is None and ran_with.get(f.name) is not None:
            env[f.env] = str(ran_with[f.name])
    return env


@dataclass(frozen=True)
class RanWith:
    """The settings a trial ran with, and which file said so."""

    settings: dict[str, Any]
    source: str  # for `hpo best` and `hpo retrain`: "settings.json of the trial's run directory" ...


def run_settings(trial: TrialRecord) -> RanWith | None:
    """The settings a trial ran with, if readable: ``settings.json`` of its run directory,
    else (a trial that kept no folder) its worker's (hpo.worker.run_dir.worker_settings_path)."""
    run_dir, worker = trial.user_attrs.get("run_dir"), trial.user_attrs.get("worker")
    if not isinstance(run_dir, str):
        return None
    places = [(Path(run_dir) / "settings.json", "settings.json of the trial's run directory")]
    if isinstance(worker, str):
        places.append((worker_settings_path(Path(run_dir).parent, worker), f"the settings file of its worker {worker}"))
    for path, source in places:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return RanWith(data, source) if isinstance(data, dict) else None
    return None


# How close to a range's end a best value must be to say the range may cut the optimum off.
EDGE_FRACTION = 0.01


def edge_warnings(trial: TrialRecord) -> list[str]:
    """The best trial's parameters within 1 % of an end of their range (on the log scale for a
    log range): the optimum may lie past it, and a wider range would tell (pure). Integer
    ranges of fewer than 100 values are left out: their ends are ordinary choices."""
    out = []
    for name, value in sorted(trial.params.items()):
        dist = trial.distributions.get(name)
        if dist is None or dist.choices is not None or dist.low is None or dist.high is None or dist.high <= dist.low:
            continue
        if dist.integer and dist.high - dist.low < 100:
            continue
        scale = math.log if dist.log else (lambda v: v)
        span = scale(dist.high) - scale(dist.low)
        where = (scale(float(value)) - scale(dist.low)) / span
        for end, near, bound in (("low", where <= EDGE_FRACTION, dist.low), ("high", where >= 1 - EDGE_FRACTION,
                                                                            dist.high)):
            if near:
                out.append(f"{name}={value:.6g} is within 1% of the {end} end of its range [{dist.low:g}, "
                           f"{dist.high:g}]{' (log scale)' if dist.log else ''}: the optimum may lie beyond "
                           f"{bound:g}; widen the range in the study config to know")
    return out


def best_report(journal: StudyJournal, current_settings: Mapping[str, Any],
                fields: Sequence[Field] = ()) -> dict[str, Any]:
    """What ``hpo best`` prints (as YAML or JSON): strict JSON values (non-finite -> null);
    ``fields``: the objective's own settings, for the environment line of its budgets."""
    best = choose_best(journal)
    directions = [d.lower() for d in journal.study.directions]
    out: dict[str, Any] = {"study": journal.study.name, "directions": directions}
    if best.trial is None:
        out["best_trial_number"] = None
        out["note"] = "no COMPLETE trial yet"
        return json_safe(out)  # type: ignore[no-any-return]
    trial = best.trial
    ran_with = run_settings(trial)
    env = budget_env(trial, fields, ran_with.settings if ran_with else current_settings)
    if best.front:
        out["pareto"] = [{"number": t.number, "values": t.values, "params": t.params} for t in best.front]
        out["knee"] = "closest to the utopia point, objectives scaled to [0, 1] over the Pareto set"
    out.update({
        "best_trial_number": trial.number,
        "best_value": trial.values[0] if trial.values and len(trial.values) == 1 else trial.values,
        "best_params": trial.params,
        "metrics": objective_attrs(trial.user_attrs),
        "fixed_params": trial.user_attrs.get("fixed_params") or {},
        "run_dir": trial.user_attrs.get("run_dir"),
        "env": env,
        "env_line": " ".join(f"{k}={v}" for k, v in env.items()),
        "env_source": ran_with.source if ran_with else "the current settings",
        "next": ENQUEUE_NOTE,
    })
    warnings = edge_warnings(trial)
    mixed = mix_warning(journal.user_attr_values([TRIAL_BUDGET_ATTR])[TRIAL_BUDGET_ATTR], trial.number)
    if mixed is not None:
        warnings.insert(0, mixed)
    if warnings:
        out["warnings"] = warnings
    return out


# -- tables -------------------------------------------------------------------------


def seed_layout(frame: Any) -> Any:
    """The parquet tables' layout (seed 003's ``optuna_trials.parquet``): each metric also under
    its own name (``error``, ``llc_hat``), beside ``user_attrs_<key>``, unless a column has it."""
    out = frame.copy()
    for name in frame.columns:
        bare = name.removeprefix("user_attrs_")
        if bare != name and bare not in out.columns:
            out[bare] = frame[name]
    return out


def value_columns(n_objectives: int) -> list[str]:
    """``value`` for one objective; ``values_0``, ``values_1``... for several (Optuna's naming)."""
    return ["value"] if n_objectives == 1 else [f"values_{i}" for i in range(n_objectives)]


def param_names(trials: Sequence[TrialRecord]) -> list[str]:
    return sorted({name for t in trials for name in t.params})


def metric_names(trials: Sequence[TrialRecord]) -> list[str]:
    """The keys of the user attributes objectives set (their metrics), sorted."""
    return sorted({key for t in trials for key in objective_attrs(t.user_attrs)})


def budget_names(trials: Sequence[TrialRecord]) -> list[str]:
    """The budgets the trials recorded (hpo.study.budgets: ``STAGEA_EPOCHS``...), sorted."""
    return sorted({key for t in trials if isinstance(t.user_attrs.get(TRIAL_BUDGET_ATTR), dict)
                   for key in t.user_attrs[TRIAL_BUDGET_ATTR]})


def columns(trials: Sequence[TrialRecord], n_objectives: int) -> list[str]:
    """number, trial_id, state, value(s), objective (one objective), duration_s, start, end,
    hyperparams, params_<name>..., budget_<NAME>..., user_attrs_<key>..., worker, host,
    process_id, pid, reason, run_dir."""
    return ["number", "trial_id", "state", *value_columns(n_objectives), *(["objective"] if n_objectives == 1 else []),
            "duration_s", "start", "end", "hyperparams", *(f"params_{n}" for n in param_names(trials)),
            *(f"budget_{n}" for n in budget_names(trials)), *(f"user_attrs_{k}" for k in metric_names(trials)),
            "worker", "host", "process_id", "pid", "reason", "run_dir"]


def _cell(value: Any) -> Any:
    """A user attribute as one table cell: lists and dicts as JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def trial_rows(trials: Sequence[TrialRecord], n_objectives: int) -> list[dict[str, Any]]:
    """One dict per trial with :func:`columns` keys (None where a trial has no value)."""
    names, keys, budgets = param_names(trials), metric_names(trials), budget_names(trials)
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "trial_id": t.trial_id, "state": t.state}
        values = t.values if t.values is not None else [None] * n_objectives
        row.update(zip(value_columns(n_objectives), values))
        if n_objectives == 1:
            row["objective"] = values[0]  # seed 003's name for it
        row.update({"duration_s": t.duration_s, "start": t.start_iso, "end": t.complete_iso,
                    "hyperparams": json.dumps(t.params, sort_keys=True)})
        row.update({f"params_{n}": t.params.get(n) for n in names})
        ran_with = t.user_attrs.get(TRIAL_BUDGET_ATTR)
        row.update({f"budget_{n}": ran_with.get(n) if isinstance(ran_with, dict) else None for n in budgets})
        row.update({f"user_attrs_{k}": _cell(t.user_attrs.get(k)) for k in keys})
        row.update({"worker": t.user_attrs.get("worker"), "host": t.user_attrs.get("host"),
                    "process_id": t.user_attrs.get("pid"), "pid": t.user_attrs.get(PROBLEM_ID_ATTR),
                    "reason": t.user_attrs.get("reason"), "run_dir": t.user_attrs.get("run_dir")})
        rows.append(row)
    return rows


def top_trials(trials: Sequence[TrialRecord], directions: Sequence[str], k: int) -> list[TrialRecord]:
    """The ``k`` best COMPLETE trials: by value; with several objectives, the Pareto
    set first (by distance to the knee's utopia point), then the others by the first objective."""
    complete = [t for t in trials if t.state == "COMPLETE" and t.values]
    signs = direction_signs(directions)
    if len(directions) == 1:
        return sorted(complete, key=lambda t: (signs[0] * t.values[0], t.number))[:k]  # type: ignore[index]
    front = pareto_front(complete, directions)
    on_front = {t.number for t in front}
    knee = knee_point(front, directions)
    ordered = ([knee] if knee else []) + [t for t in front if t is not knee]
    rest = sorted((t for t in complete if t.number not in on_front),
                  key=lambda t: (signs[0] * t.values[0], t.number))  # type: ignore[index]
    return (ordered + rest)[:k]


def best_params_json(journal: StudyJournal, best: Best) -> dict[str, Any]:
    """``best_params.json``: the best trial's parameters and value (with several objectives, the knee's)."""
    trial = best.trial
    value: Any = None
    if trial is not None and trial.values:
        value = trial.values[0] if len(trial.values) == 1 else trial.values
    return {"best_value": value, "best_params": trial.params if trial else {}, "n_trials": len(journal.trials),
            "best_trial_number": trial.number if trial else None}


def hpo_results_json(journal: StudyJournal, best: Best) -> dict[str, Any]:
    """``hpo_results.json``: best trial and score, and every trial's score and params."""
    n = len(journal.study.directions)

    def score(t: TrialRecord) -> Any:
        if t.values is None:
            return None
        return t.values[0] if n == 1 else t.values

    trial = best.trial
    out: dict[str, Any] = {
        "best_trial": trial.number if trial else None,
        "best_score": score(trial) if trial else None,
        "best_params": trial.params if trial else {},
    }
    # best_<metric> for each metric of the best trial (e.g. best_convergence_rate, best_mean_steps).
    taken = set(out) | {"all_trials"}
    out.update({f"best_{k}": v for k, v in objective_attrs(trial.user_attrs if trial else {}).items()
                if f"best_{k}" not in taken})
    out["all_trials"] = [_result_row(t, score(t)) for t in journal.trials]
    return out


def _result_row(t: TrialRecord, score: Any) -> dict[str, Any]:
    row = {"number": t.number, "state": t.state, "score": score, "params": t.params}
    if isinstance(t.user_attrs.get(TRIAL_BUDGET_ATTR), dict):
        row["budget"] = t.user_attrs[TRIAL_BUDGET_ATTR]  # what it spent (hpo.study.budgets)
    metrics = objective_attrs(t.user_attrs)
    return {**row, "user_attrs": metrics} if metrics else row  # no empty "user_attrs" key


def epoch_rows(trials: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """Every complete line of every trial's ``metrics.jsonl``, with ``number`` first.
    A missing or unreadable file (a run directory on another node's disk) is skipped."""
    rows: list[dict[str, Any]] = []
    for t in trials:
        run_dir = t.user_attrs.get("run_dir")
        if not isinstance(run_dir, str):
            continue
        try:
            text = (Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line being written
            if isinstance(record, dict):
                rows.append({"number": t.number, **record})
    return rows


def parquet_safe(frame: Any) -> Any:
    """Parquet columns hold one type: a column mixing types (a categorical parameter
    with choices 1 and "a") is written as text."""
    out = frame.copy()
    for name in out.columns:
        if out[name].dtype == object:
            kinds = {type(v) for v in out[name] if v is not None}
            if len(kinds) > 1:
                out[name] = out[name].map(lambda v: None if v is None else str(v))
    return out


def export(journal: StudyJournal, out_dir: Path, top: int = DEFAULT_TOP) -> list[Path]:
    """Write every export file into ``out_dir``; returns their paths."""
    import pandas as pd

    journal.decode()
    best = choose_best(journal)
    n = len(journal.study.directions)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = columns(journal.trials, n)
    frame = pd.DataFrame(trial_rows(journal.trials, n), columns=cols)
    top_frame = pd.DataFrame(trial_rows(top_trials(journal.trials, journal.study.directions, top), n), columns=cols)
    paths = [out_dir / "best_params.json", out_dir / "all_trials.csv", out_dir / f"top_{top}_trials.csv",
             out_dir / "trials.parquet", out_dir / "hpo_results.json"]
    write_json_atomic(paths[0], best_params_json(journal, best))
    frame.to_csv(paths[1], index=False)
    top_frame.to_csv(paths[2], index=False)
    parquet_safe(seed_layout(frame)).to_parquet(paths[3], index=False)
    write_json_atomic(paths[4], hpo_results_json(journal, best))
    epochs = epoch_rows(journal.trials)
    if epochs:
        paths.append(out_dir / "epoch_metrics.csv")
        pd.DataFrame(epochs).to_csv(paths[-1], index=False)
    _logger.info("exported %d trials of %s to %s", len(frame), journal.study.name, out_dir)
    return paths


def export_launch(launch: "Launch", out: Path | None, top: int = DEFAULT_TOP) -> Iterator[Path | str]:
    """``hpo export``: each study's files into ``out`` (default ``results/<study>/``); a sweep's
    studies each into their own folder, then one combined table (``<config>_sweep.csv``) and
    every trial of every study in one ``<config>_trials.parquet``. Yields each file written
    (a Path), and a note (a str) for each study of a sweep that has not started."""
    from hpo.watch import status

    sweep = len(launch.studies) > 1
    states: list[dict[str, Any]] = []
    frames: list[Any] = []
    for settings, cell in launch.studies:
        if sweep and not status.started(settings):
            yield f"{settings.study_name}: not started yet; nothing to export"
            states.append(status.not_started(settings))
            continue
        journal = status.open_view(settings)  # read once: its files, its row of the combined table, its trials
        folder = (out / settings.study_name if sweep else out) if out else settings.results_dir
        yield from export(journal, folder, top)
        if sweep:
            states.append(status.sweep_state(settings, slurm=False, journal=journal))
            frames.append(sweep_trials(journal, settings.study_name, cell.cell))
    if sweep:
        rows = status.combined_rows(states, [dict(c.cell) for _, c in launch.studies])
        yield from _sweep_tables(rows, frames, out or RESULTS_DIR, launch.config.path.stem)


def _sweep_tables(rows: list[dict[str, Any]], frames: list[Any], folder: Path, stem: str) -> list[Path]:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([{**r, "best_params": json.dumps(r["best_params"]),  # a knee's values: JSON too
                           "best_value": json.dumps(v) if isinstance(v := r["best_value"], list) else v} for r in rows])
    table["best_trial"] = table["best_trial"].astype("Int64")  # a trial number, also beside a study with none
    paths = [folder / f"{stem}_sweep.csv", folder / f"{stem}_trials.parquet"]
    table.to_csv(paths[0], index=False)
    # Every trial of every study in one table (the layout of a grid's ``optuna_trials.parquet``).
    trials = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["study"])
    parquet_safe(seed_layout(trials)).to_parquet(paths[1], index=False)
    return paths


def sweep_trials(journal: StudyJournal, study_name: str, cell: Mapping[str, Any]) -> Any:
    """One study's rows of the sweep's trials table: ``study``, the matrix variables
    (``problem``, ``method``), then the columns of ``all_trials.csv``."""
    import pandas as pd

    journal.decode()
    n = len(journal.study.directions)
    head = {"study": study_name, **cell}
    return pd.DataFrame([{**head, **r} for r in trial_rows(journal.trials, n)],
                        columns=[*head, *columns(journal.trials, n)])

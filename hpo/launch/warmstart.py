"""Warm starts: enqueue known configurations, and refine a finished study (a fine stage after a coarse one).

``hpo enqueue FILE`` or ``hpo enqueue --from-study OTHER --top K`` put parameter sets
in front of the sampler. ``hpo refine --from STUDY`` writes a new study config whose
bounds are narrowed around STUDY's best trials (log parameters by a factor in log
space, others by a fraction of the range, categoricals kept to the values seen, or
fixed when the best trials agree), with a budget of max(10 x tuned parameters, 10)
trials and the best trial enqueued first, plus ``fine_summary.yaml`` with the ranges.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from hpo.config.settings import Settings
from hpo.config.space import Param, check_param_set
from hpo.config.study import StudyConfig, cells, load_config, parse_config, single_study_text
from hpo.errors import UsageError
from hpo.journal.format import journal_studies, no_such_study
from hpo.journal.reader import StudyJournal
from hpo.study.provenance import stored_config_path
from hpo.study.shared import open_study
from hpo.study.storage import open_storage
from hpo.system.files import write_bytes_atomic
from hpo.watch.export import top_trials
from hpo.watch.status import open_view


def read_param_sets(path: Path) -> list[dict[str, Any]]:
    """Parameter sets from JSON or YAML: one mapping, a list of them, or an export
    with ``best_params`` (``hpo export``'s best_params.json)."""
    try:
        text = path.read_text()
        # JSON first: YAML 1.1 would read JSON's 1e-6 as a string.
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: cannot read parameter sets: {exc}") from None
    if isinstance(raw, Mapping) and isinstance(raw.get("best_params"), Mapping):
        raw = raw["best_params"]
    sets = raw if isinstance(raw, list) else [raw]
    if not sets or not all(isinstance(s, Mapping) for s in sets):
        raise UsageError(f"{path}: expected a mapping of parameter to value, or a list of them")
    return [dict(s) for s in sets]


def _narrow(p: Param, seen: list[Any], factor: float, fraction: float) -> Param:
    """``p`` narrowed around the values ``seen`` in the best trials."""
    if p.kind == "categorical":
        return replace(p, choices=tuple(c for c in p.choices if c in seen))
    lo, hi = min(seen), max(seen)
    low, high = float(p.low or 0), float(p.high or 0)  # set for every numeric parameter
    if p.log:
        new_lo, new_hi = max(low, lo / factor), min(high, hi * factor)
    else:
        pad = fraction * (high - low)
        new_lo, new_hi = max(low, lo - pad), min(high, hi + pad)
    if p.kind == "int":
        new_lo, new_hi = int(math.floor(new_lo)), int(math.ceil(new_hi))
    return replace(p, low=new_lo, high=new_hi)


def refine_space(space: Mapping[str, Param], best: Sequence[Mapping[str, Any]], factor: float,
                 fraction: float) -> tuple[dict[str, Any], dict[str, Any], int]:
    """New flat space, the summary of old and new ranges, and the trial budget.

    Pure. Parameters the best trials never sampled (fixed or inactive) keep their range.
    A conditional parameter whose branch none of the best trials took (``when:
    {optimizer: sgd}`` after every best trial chose adam) is dropped, with the reason in
    the summary: its parent can no longer take that value."""
    new_space: dict[str, Any] = {}
    kept: dict[str, Param] = {}
    summary: dict[str, Any] = {}
    tuned = 0
    for name, p in space.items():
        lost = next(((parent, value) for parent, value in p.when.items()
                     if parent not in kept or not kept[parent].contains(value)), None)
        if lost is not None:
            summary[name] = {"old": _bounds(p), "new": f"dropped: no best trial took the branch {lost[0]}={lost[1]!r}"}
            continue
        seen = [b[name] for b in best if name in b]
        narrowed = _narrow(p, seen, factor, fraction) if seen else p
        kept[name] = narrowed
        new_space[name] = _spec(narrowed)
        if not seen:
            continue
        summary[name] = {"old": _bounds(p), "new": _bounds(narrowed)}
        if not (p.kind == "categorical" and len(narrowed.choices) == 1):
            tuned += 1
    return new_space, summary, max(10 * tuned, 10)


def _bounds(p: Param) -> list[Any]:
    return list(p.choices) if p.kind == "categorical" else [p.low, p.high]


def _spec(p: Param) -> dict[str, Any]:
    """The YAML spec of ``p`` (the inverse of hpo.config.space.parse_param)."""
    spec: dict[str, Any] = {"type": p.kind}
    if p.kind == "categorical":
        spec["choices"] = list(p.choices)
    else:
        spec.update(low=p.low, high=p.high)
        if p.log:
            spec["log"] = True
        if p.step is not None:
            spec["step"] = p.step
    if p.when:
        spec["when"] = dict(p.when)
    return spec


def refined_config(source_text: str, new_name: str, new_space: dict[str, Any], budget: int,
                   best_params: Mapping[str, Any]) -> str:
    """The new study config: the source config with the narrowed space, the budget,
    and the best trial enqueued first."""
    raw = yaml.safe_load(source_text)
    raw["study_name"] = new_name
    raw["space"] = new_space
    raw["enqueue"] = [dict(best_params)]
    raw.setdefault("settings", {})["max_trials"] = budget
    raw["settings"].pop("study_name", None)
    return f"# Refined by `hpo refine` around the best trials of another study.\n{yaml.safe_dump(raw, sort_keys=False)}"


def dumps_summary(source: str, summary: dict[str, Any], budget: int, best: Mapping[str, Any]) -> str:
    text: str = yaml.safe_dump({"from_study": source, "max_trials": budget,
                                "best_params": json.loads(json.dumps(best)), "ranges": summary}, sort_keys=False)
    return text


# -- the workflows ----------------------------------------------------------------------

def other_study(settings: Settings, name: str) -> StudyJournal:
    """Another study in the same storage, every trial decoded (read-only)."""
    other = dataclasses.replace(settings, study_name=name)
    if not settings.storage and not other.spec.journal_path.exists():  # opening it would create it
        names = journal_studies(settings.journal_dir)
    else:
        names = [s.study_name for s in open_storage(other.spec).get_all_studies()]
    if name not in names:
        where = settings.storage_label if settings.storage else settings.journal_dir
        raise no_such_study(name, where, names, asked_by="--from-study {!r}")
    return open_view(other).decode()


def enqueue(settings: Settings, config: StudyConfig, file: Path | None, from_study: str | None,
            top: int) -> tuple[int, str]:
    """``hpo enqueue``: put parameter sets (a file's, or another study's ``top`` trials: with
    several objectives the knee first) first in line; returns how many, and from where.
    A study this creates gets no warm start from the config: the sets given here run first."""
    if (file is None) == (from_study is None):
        raise UsageError("give a FILE of parameter sets or --from-study NAME (one of them)")
    if file is not None:
        sets, origin = read_param_sets(file), f"file {file}"
    else:
        other = other_study(settings, str(from_study))
        best = top_trials(other.trials, other.study.directions, top)
        sets, origin = [dict(t.params) for t in best], f"study {from_study} (top {top})"
    checked = [check_param_set(config.space, params, f"{origin}[{i}]") for i, params in enumerate(sets)]
    shared = open_study(settings.spec, config, warm_start=False, trains=False)
    for params in checked:
        shared.study.enqueue_trial(params, user_attrs={"origin": f"enqueued from {origin}"})
    return len(checked), origin


@dataclass(frozen=True)
class Refined:
    """What :func:`refine` made: the new study, its config and summary files, its ranges."""

    name: str
    config_path: Path
    summary_path: Path
    narrowed: int  # parameters in the summary
    around: int  # best trials the ranges cover
    budget: int


def refine(settings: Settings, config: StudyConfig, source: str, top: int, factor: float,
           fraction: float) -> Refined:
    """``hpo refine``: create a study narrowed around the best trials of ``source`` (with
    several objectives the Pareto set, knee first), named by ``STUDY_NAME`` when the user
    gave one, else ``<source>_fine``; the best trial is enqueued first."""
    given = settings.sources["study_name"] == "flag" or settings.sources["study_name"].startswith("env:")
    new_name = settings.study_name if given else f"{source}_fine"
    if new_name == source:
        raise UsageError(f"STUDY_NAME={new_name!r} is the study refined from; give the new study another name")
    source_config = _source_config(dataclasses.replace(settings, study_name=source), config, source)
    other = other_study(settings, source)
    best = top_trials(other.trials, other.study.directions, top)
    if not best:
        raise UsageError(f"--from {source!r}: the study has no COMPLETE trial to refine around")
    new_space, summary, budget = refine_space(source_config.space, [t.params for t in best], factor, fraction)
    new_settings = dataclasses.replace(settings, study_name=new_name, max_trials=budget)
    path = stored_config_path(new_settings)
    if path.exists():
        raise UsageError(f"study {new_name!r} already has a config ({path}); choose another STUDY_NAME")
    text = refined_config(source_config.text, new_name, new_space, budget, best[0].params)
    new_config = dataclasses.replace(parse_config(path, yaml.safe_load(text)), text=text)
    write_bytes_atomic(path, text.encode())
    summary_path = path.with_name("fine_summary.yaml")
    write_bytes_atomic(summary_path, dumps_summary(source, summary, budget, best[0].params).encode())
    # Creates it, best trial enqueued first; its budgets are its first run's, not this command's.
    open_study(new_settings.spec, new_config, trains=False)
    return Refined(new_name, path, summary_path, len(summary), len(best), budget)


def _source_config(source: Settings, config: StudyConfig, name: str) -> StudyConfig:
    """The config ``name`` ran with: its stored copy (one study of a sweep: that study's own
    config), else the current one."""
    stored = stored_config_path(source)
    found = load_config(stored) if stored.is_file() else config
    if not found.matrix:
        return found
    cell = next((c for c in cells(found) if c.settings["study_name"] == name), found)
    return dataclasses.replace(cell, text=single_study_text(cell))

"""Budgets never mix unseen: a study's trials compare only when they ran with the same budgets.

A *budget* is an objective setting declared ``budget=True`` (PhysAE's stage epochs and
dataset sizes, GAD's ``N_SAMPLES``; a config's ``objective_settings: {…, budget: true}``):
what a trial spends, not what it searches. Rerunning a study with ``STAGEA_EPOCHS=3``
after trials trained 2 epochs would rank a 3-epoch trial against 2-epoch ones.

- **Recorded**: the first launch stores the study's budgets (study system attribute
  :data:`BUDGETS_ATTR`); each trial records its own (user attribute ``budget``,
  :data:`~hpo.config.settings.TRIAL_BUDGET_ATTR`),
  so exports have a column per budget and ``hpo status``/``hpo best`` can name a mix.
- **Refused**: a launch whose budgets differ from the stored ones exits 2 before anything
  is written (:func:`check`, from :mod:`hpo.launch.prepare`; again in each worker, when it
  opens the study), naming each setting with its stored and new values.
- **Mixed knowingly**: ``--mix-budgets`` (``HPO_MIX_BUDGETS=1``) runs anyway and records
  :data:`MIXED_ATTR` with the study; the stored budgets stay the first launch's.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any, Mapping

import optuna

from hpo.errors import StudyMismatch

if TYPE_CHECKING:
    from hpo.config.settings import StudySpec

BUDGETS_ATTR = "hpo:budgets"  # the study's budgets, as its first launch ran them
MIXED_ATTR = "hpo:budgets_mixed"  # true once a launch with other budgets ran with --mix-budgets


def differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``NAME: stored A, now B`` for each budget that differs (one only a side has included)."""
    def shown(side: Mapping[str, Any], name: str) -> str:
        return "absent" if name not in side else "unset" if side[name] is None else str(side[name])

    names = sorted(set(stored) | set(new))
    return [f"{name}: stored {shown(stored, name)}, now {shown(new, name)}" for name in names
            if shown(stored, name) != shown(new, name)]


def refusal(spec: "StudySpec", stored: Mapping[str, Any]) -> StudyMismatch | None:
    """The refusal of a launch whose budgets differ from the study's, or None (same budgets,
    none stored yet, or ``--mix-budgets``)."""
    diff = differences(stored, spec.budgets)
    if not diff or spec.mix_budgets:
        return None
    return StudyMismatch(
        f"study {spec.study_name!r} ran its trials with other budgets ({'; '.join(diff)}): their values would "
        "not compare. Set them back, use another STUDY_NAME, or rerun with --mix-budgets (HPO_MIX_BUDGETS=1) "
        "to mix them knowingly: each trial records its budgets")


def check(spec: "StudySpec", held: Mapping[str, Any]) -> None:
    """Refuse (exit 2, nothing written) a launch whose budgets differ from those the study
    stored (``held``: its system attributes, :func:`hpo.study.storage.stored_study`)."""
    value = held.get(BUDGETS_ATTR)
    error = refusal(spec, value) if isinstance(value, dict) else None
    if error is not None:
        raise error


def settled(held: Mapping[str, Any], spec: "StudySpec") -> bool:
    """Whether the study already stored exactly these budgets (nothing to write or refuse)."""
    stored_budgets = held.get(BUDGETS_ATTR)
    return isinstance(stored_budgets, dict) and not differences(stored_budgets, spec.budgets)


def record(storage: optuna.storages.BaseStorage, sid: int, held: Mapping[str, Any], spec: "StudySpec") -> None:
    """Store the study's budgets at its first launch; refuse a worker whose budgets differ
    (a launch that skipped :func:`check`, or raced a first one); mark a knowing mix."""
    budgets = dict(spec.budgets)  # {} too: a later launch that sets one differs from "none"
    first = held.get(BUDGETS_ATTR)
    if not isinstance(first, dict):
        storage.set_study_system_attr(sid, BUDGETS_ATTR, budgets)
        return
    error = refusal(spec, first)
    if error is not None:
        raise error
    if differences(first, budgets) and not held.get(MIXED_ATTR):
        storage.set_study_system_attr(sid, MIXED_ATTR, True)


def groups(per_trial: Mapping[int, Any]) -> list[tuple[dict[str, Any], int]]:
    """The distinct budgets of a study's trials (``{trial number: budgets}``), most trials first."""
    counts = Counter(json.dumps(b, sort_keys=True) for b in per_trial.values() if isinstance(b, dict))
    return [(json.loads(text), n) for text, n in counts.most_common()]


def describe(budget: Mapping[str, Any], among: list[tuple[dict[str, Any], int]]) -> str:
    """``STAGEA_EPOCHS=3`` (only the settings that differ among ``among``), for messages."""
    varying = sorted({k for b, _ in among for k in set(b) | set(budget) if b.get(k) != budget.get(k)})
    return " ".join(f"{k}={budget.get(k)}" for k in varying) or "the same budgets"


def mix_warning(per_trial: Mapping[int, Any], best: int | None = None) -> str | None:
    """One line when a study's trials ran with more than one budget (``hpo status``,
    ``hpo best``, ``hpo retrain``); ``best``: the trial the command picked."""
    found = groups(per_trial)
    if len(found) < 2:
        return None
    parts = ", ".join(f"{describe(b, found)} ({n} trial{'s' if n != 1 else ''})" for b, n in found)
    line = f"the study mixes {len(found)} budgets: {parts}"
    if best is not None and isinstance(per_trial.get(best), dict):
        line += f"; trial {best} ran with {describe(per_trial[best], found)}"
    return line + "; values of different budgets do not compare (the budget_* columns of the exports tell them apart)"

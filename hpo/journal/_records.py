"""What Optuna 5.0's replay needs from a readable journal record.

Mirrors ``JournalStorageReplayResult._apply_*`` in
``optuna/storages/journal/_storage.py`` (the keys and types each op reads), so
that repair can tell such a record from a sound one without replaying the file.
Reading lines is :mod:`hpo.journal.format`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any

from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.trial import TrialState

from hpo.journal.format import Op

@functools.lru_cache(maxsize=1024)
def _distribution(text: str) -> BaseDistribution:
    return json_to_distribution(text)


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def _bad_id(log: dict[str, Any], key: str) -> str | None:
    v = log.get(key)
    return None if type(v) is int and v >= 0 else f"{key!r} missing or not a non-negative integer"


def _bad_one_attr(log: dict[str, Any], key: str) -> str | None:
    v = log.get(key)
    return None if isinstance(v, dict) and len(v) == 1 else f"{key!r} is not a one-entry object"


def bad_time(log: dict[str, Any], key: str, may_be_null: bool = False) -> str | None:
    v = log.get(key)
    if v is None and may_be_null and key in log:
        return None
    try:
        datetime.fromisoformat(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{key!r} missing or not an ISO time"
    return None


def _bad_state(log: dict[str, Any]) -> str | None:
    state = log.get("state")
    if type(state) is not int or state not in {s.value for s in TrialState}:
        return f"'state' {state!r} is not a trial state"
    return None


def _bad_param(dist_text: Any, internal: Any) -> str | None:
    if not isinstance(dist_text, str):
        return "distribution is not a string"
    try:
        _distribution(dist_text).to_external_repr(internal)
    except Exception as err:  # json_to_distribution raises many kinds
        return f"unusable distribution or value ({type(err).__name__}: {err})"
    return None


def _check_create_study(log: dict[str, Any]) -> str | None:
    d = log.get("directions")
    if not isinstance(log.get("study_name"), str):
        return "'study_name' missing"
    if not isinstance(d, list) or not d or any(type(x) is not int or x not in (0, 1, 2) for x in d):
        return "'directions' is not a list of study directions"
    return None


def _check_create_trial(log: dict[str, Any]) -> str | None:
    problem = _bad_id(log, "study_id") or bad_time(log, "datetime_start", may_be_null=True)
    if problem:
        return problem
    if "datetime_complete" in log and bad_time(log, "datetime_complete"):
        return "'datetime_complete' is not an ISO time"
    if "state" in log and _bad_state(log):
        return _bad_state(log)
    dists, params = log.get("distributions", {}), log.get("params", {})
    if not isinstance(dists, dict) or not isinstance(params, dict):
        return "'distributions' or 'params' is not an object"
    for name, value in params.items():
        if name not in dists:
            return f"param {name!r} has no distribution"
        if not _is_number(value) or _bad_param(dists[name], value):
            return f"param {name!r}: {_bad_param(dists[name], value) or 'not a number'}"
    for key in ("user_attrs", "system_attrs", "intermediate_values"):
        if not isinstance(log.get(key, {}), dict):
            return f"{key!r} is not an object"
    if any(not k.lstrip("-").isdigit() for k in log.get("intermediate_values", {})):
        return "'intermediate_values' has a step that is not an integer"
    return None


def _check_set_param(log: dict[str, Any]) -> str | None:
    if not isinstance(log.get("param_name"), str):
        return "'param_name' missing"
    if not _is_number(log.get("param_value_internal")):
        return "'param_value_internal' is not a number"
    return _bad_param(log.get("distribution"), log["param_value_internal"])


def _check_state_values(log: dict[str, Any]) -> str | None:
    problem = _bad_state(log)
    if problem:
        return problem
    if "values" not in log or not (log["values"] is None or isinstance(log["values"], list)):
        return "'values' missing"
    state = TrialState(log["state"])
    if state == TrialState.RUNNING:
        return bad_time(log, "datetime_start")
    if state.is_finished():
        return bad_time(log, "datetime_complete")
    return None


def _check_intermediate(log: dict[str, Any]) -> str | None:
    if type(log.get("step")) is not int:
        return "'step' is not an integer"
    v = log.get("intermediate_value", "missing")
    return None if v is None or _is_number(v) else "'intermediate_value' is not a number"


CHECKS: dict[int, Callable[[dict[str, Any]], str | None]] = {
    Op.CREATE_STUDY: _check_create_study,
    Op.DELETE_STUDY: lambda log: _bad_id(log, "study_id"),
    Op.SET_STUDY_USER_ATTR: lambda log: _bad_id(log, "study_id") or _bad_one_attr(log, "user_attr"),
    Op.SET_STUDY_SYSTEM_ATTR: lambda log: _bad_id(log, "study_id") or _bad_one_attr(log, "system_attr"),
    Op.CREATE_TRIAL: _check_create_trial,
    Op.SET_TRIAL_PARAM: lambda log: _bad_id(log, "trial_id") or _check_set_param(log),
    Op.SET_TRIAL_STATE_VALUES: lambda log: _bad_id(log, "trial_id") or _check_state_values(log),
    Op.SET_TRIAL_INTERMEDIATE_VALUE: lambda log: _bad_id(log, "trial_id") or _check_intermediate(log),
    Op.SET_TRIAL_USER_ATTR: lambda log: _bad_id(log, "trial_id") or _bad_one_attr(log, "user_attr"),
    Op.SET_TRIAL_SYSTEM_ATTR: lambda log: _bad_id(log, "trial_id") or _bad_one_attr(log, "system_attr"),
    Op.DISCARD_TRIALS: lambda log: None,  # Optuna's replay skips it
}


def replay_problem(log: dict[str, Any]) -> str | None:
    """Why Optuna 5.0's replay (``JournalStorageReplayResult._apply_*``) would fail on a
    readable record, or None when it would not. Mirrors the keys and types it reads."""
    check = CHECKS.get(log["op_code"])
    if check is None:  # callers raise NewerFormatError first; kept so that this never says "fine"
        return f"unknown op_code {log['op_code']}"
    if log["op_code"] != Op.DISCARD_TRIALS and not isinstance(log.get("worker_id"), str):
        return "'worker_id' missing"
    problem = check(log)
    return f"Optuna cannot replay it: {problem}" if problem else None

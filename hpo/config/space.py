"""Search spaces declared in YAML, and sampling them on an Optuna trial.

A space is a mapping of parameter specs, flat or grouped one level deep by
stage (``A: {base_lr: {...}}`` gives the parameter ``A.base_lr``)::

    lr:        {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
    layers:    {type: int, low: 1, high: 4}
    optimizer: {type: categorical, choices: [adam, sgd]}
    momentum:  {type: float, low: 0.0, high: 0.99, when: {optimizer: sgd}}

Parsing is pure and raises :class:`~hpo.errors.UsageError` naming the file,
the key path and the reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from hpo.errors import UsageError

if TYPE_CHECKING:
    import optuna

_KINDS = ("float", "int", "categorical")
_KEYS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    when: Mapping[str, Any] = field(default_factory=dict)  # parent name -> required value

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        try:
            return bool(self.low <= value <= self.high)
        except TypeError:
            return False


def _fail(source: Path | str, key: str, reason: str) -> UsageError:
    return UsageError(f"{source}: {key}: {reason}")


_YAML_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _number(source: Path | str, key: str, value: Any, kind: str) -> float | int:
    if isinstance(value, str) and _YAML_FLOAT.match(value.strip()):
        # YAML 1.1 (PyYAML) reads 1e-4 as text (it wants 1.0e-4): it is the number the user wrote.
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(source, key, f"{value!r} is not a number")
    if kind == "int":
        if float(value) != int(value):
            raise _fail(source, key, f"{value!r} is not an integer")
        return int(value)
    if not math.isfinite(value):
        raise _fail(source, key, f"{value!r} is not finite")
    return float(value)


def parse_param(source: Path | str, path: str, name: str, spec: Any) -> Param:
    """One parameter spec; ``path`` is its key path in the file (for messages)."""
    if not isinstance(spec, Mapping):
        raise _fail(source, path, f"expected a mapping with 'type', got {spec!r}")
    kind = spec.get("type")
    if kind not in _KINDS:
        raise _fail(source, f"{path}.type", f"{kind!r} is not a parameter type; valid: {', '.join(_KINDS)}")
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        raise _fail(source, f"{path}.{unknown[0]}", f"unknown key for a {kind} parameter; valid: {', '.join(sorted(_KEYS[kind]))}")
    when = spec.get("when") or {}
    if not isinstance(when, Mapping):
        raise _fail(source, f"{path}.when", f"expected a mapping of parent parameter to value, got {when!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _fail(source, f"{path}.choices", "must be a non-empty list")
        return Param(name, kind, choices=tuple(choices), when=dict(when))
    for key in ("low", "high"):
        if key not in spec:
            raise _fail(source, f"{path}.{key}", "missing")
    low = _number(source, f"{path}.low", spec["low"], kind)
    high = _number(source, f"{path}.high", spec["high"], kind)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _fail(source, f"{path}.log", f"{log!r} is not true or false")
    if low > high:
        raise _fail(source, path, f"low ({low}) is greater than high ({high})")
    if log and low <= 0:
        raise _fail(source, f"{path}.low", f"log scale needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(source, f"{path}.step", step, kind)
        if step <= 0:
            raise _fail(source, f"{path}.step", f"must be positive, got {step}")
        if log:
            raise _fail(source, f"{path}.step", "cannot be combined with log: true")
    return Param(name, kind, low, high, log, step, when=dict(when))


def parse_space(source: Path | str, raw: Any) -> dict[str, Param]:
    """The ``space:`` section: flat or grouped by stage. Order is kept (parents first)."""
    if not isinstance(raw, Mapping) or not raw:
        raise _fail(source, "space", "must be a non-empty mapping of parameters")
    params: dict[str, Param] = {}
    for key, spec in raw.items():
        if isinstance(spec, Mapping) and "type" not in spec:
            for sub, sub_spec in spec.items():
                name = f"{key}.{sub}"
                params[name] = parse_param(source, f"space.{key}.{sub}", name, sub_spec)
        else:
            params[str(key)] = parse_param(source, f"space.{key}", str(key), spec)
    for param in params.values():
        for parent, value in param.when.items():
            if parent not in params or list(params).index(parent) > list(params).index(param.name):
                raise _fail(source, f"space.{param.name}.when", f"parent {parent!r} must be a parameter declared before it")
            if not params[parent].contains(value):
                raise _fail(source, f"space.{param.name}.when", f"{parent}={value!r} is outside the parent's values")
    return params


def check_param_set(space: Mapping[str, Param], params: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A warm-start parameter set: names outside the space and values outside their
    range are refused (exit 2), ``where`` naming the file and entry."""
    for name, value in params.items():
        if name not in space:
            raise UsageError(f"{where}: {name!r} is not a parameter of the space; valid: {', '.join(space)}")
        if not space[name].contains(value):
            raise UsageError(f"{where}: {name}={value!r} is outside its range")
    return dict(params)


def active(param: Param, values: Mapping[str, Any]) -> bool:
    """A conditional parameter is active only when every parent has its required value."""
    return all(parent in values and values[parent] == want for parent, want in param.when.items())


def suggest(trial: "optuna.Trial", space: Mapping[str, Param], fixed: Mapping[str, Any]) -> dict[str, Any]:
    """Sample the active parameters; ``fixed`` ones are taken as given, not sampled."""
    values: dict[str, Any] = {}
    for name, p in space.items():
        if not active(p, values):
            continue
        if name in fixed:
            values[name] = fixed[name]
        elif p.kind == "categorical":
            values[name] = trial.suggest_categorical(name, list(p.choices))
        elif p.kind == "int":
            values[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)  # type: ignore[arg-type]
        else:
            values[name] = trial.suggest_float(name, float(p.low), float(p.high), step=p.step, log=p.log)  # type: ignore[arg-type]
    return values

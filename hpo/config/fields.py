"""A setting, declared once: its name, environment variable, parser, default and help.

hpo's own settings (:data:`hpo.config.settings.FIELDS`) and an objective's (its module's
``SETTINGS``, or the study config's ``objective_settings:``) are :class:`Field` rows alike,
parsed by the small parsers below: each raises :class:`~hpo.errors.UsageError` naming the
variable, the bad value and what is valid.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from hpo.errors import UsageError

Parser = Callable[[str, Any], Any]


def int_in(low: int, high: int) -> Callable[[str, Any], int]:
    def parse(name: str, raw: Any) -> int:
        text = str(raw).strip()
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"{name}={raw!r} is not an integer; valid: an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise UsageError(f"{name}={raw!r} is out of range; valid: an integer from {low} to {high}")
        return value

    return parse


def optional(inner: Parser) -> Parser:
    def parse(name: str, raw: Any) -> Any:
        if raw is None or str(raw).strip().lower() in ("", "none", "unlimited"):
            return None
        return inner(name, raw)

    return parse


def positive_float(name: str, raw: Any) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number; valid: a positive number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{name}={raw!r} is out of range; valid: a positive number of seconds")
    return value


def float_in(low: float | None, high: float | None) -> Parser:
    """A finite number within ``[low, high]`` (None: unbounded on that side)."""
    valid = ("a number" + (f" >= {low:g}" if low is not None else "")
             + (" and" if low is not None and high is not None else "") + (f" <= {high:g}" if high is not None else ""))

    def parse(name: str, raw: Any) -> float:
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise UsageError(f"{name}={raw!r} is not a number; valid: {valid}") from None
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            raise UsageError(f"{name}={raw!r} is out of range; valid: {valid}")
        return value

    return parse


def one_of(choices: tuple[Any, ...]) -> Parser:
    """One of ``choices``, compared as text (case-sensitive); returns the choice itself."""
    def parse(name: str, raw: Any) -> Any:
        for option in choices:
            if str(option) == str(raw).strip():
                return option
        raise UsageError(f"{name}={raw!r} is not valid; valid: {', '.join(map(str, choices))}")

    return parse


def boolean(name: str, raw: Any) -> bool:
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{name}={raw!r} is not a boolean; valid: true, false, 1, 0, yes, no, on, off")


def text(name: str, raw: Any) -> str:
    return str(raw)


def choice(choices: tuple[str, ...]) -> Parser:
    def parse(name: str, raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in choices:
            raise UsageError(f"{name}={raw!r} is not valid; valid: {', '.join(choices)}")
        return value

    return parse


@dataclass(frozen=True)
class Field:
    name: str  # attribute of Settings and key in the config's settings: section
    env: str  # environment variable
    parse: Parser
    default: Any
    help: str
    # A search-space parameter this setting fixes when set (None: sampled as usual).
    fixes: str | None = None
    # Other environment variables that set it too (a name users already type: N_TRIALS for MAX_TRIALS).
    aliases: tuple[str, ...] = ()
    # Set by hpo's launchers for the workers they start (a worker's rank, its launch): no
    # command-line flag, shown apart by ``hpo config``.
    internal: bool = False
    # A budget of each trial (epochs, dataset sizes): recorded per trial, and a launch that
    # changes it is refused unless asked to mix (hpo.study.budgets).
    budget: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


_SPEC_KEYS = ("type", "default", "env", "low", "high", "choices", "help", "budget")
_SPEC_TYPES = ("int", "float", "str", "bool", "choice")
_ENV_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def declared_field(where: str, name: str, spec: Any) -> Field:
    """A setting declared in a study config's ``objective_settings:`` section::

        n_steps_per_sample: {type: int, default: 800, low: 1, high: 100000, env: N_STEPS_PER_SAMPLE}
        method: {type: choice, choices: [sgld, hmc], default: sgld}
        n_samples: {type: int, default: 15, low: 1, budget: true}

    ``budget: true``: a budget of each trial (see :mod:`hpo.study.budgets`). ``env`` defaults to the name in capitals. The default is checked like any value."""
    label = f"{where}: objective_settings.{name}"
    if not isinstance(name, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise UsageError(f"{label}: not a valid setting name; valid: lower-case letters, digits and _")
    if not isinstance(spec, Mapping):
        raise UsageError(f"{label}: must be a mapping with {', '.join(_SPEC_KEYS)}")
    unknown = sorted(set(spec) - set(_SPEC_KEYS))
    if unknown:
        raise UsageError(f"{label}.{unknown[0]}: unknown key; valid: {', '.join(_SPEC_KEYS)}")
    kind = spec.get("type")
    if kind not in _SPEC_TYPES:
        raise UsageError(f"{label}.type: {kind!r} is not valid; valid: {', '.join(_SPEC_TYPES)}")
    env = spec.get("env", name.upper())
    if not isinstance(env, str) or not _ENV_RE.match(env):
        raise UsageError(f"{label}.env: {env!r} is not an environment variable name; valid: A-Z, 0-9 and _")
    low, high = spec.get("low"), spec.get("high")
    for key, bound in (("low", low), ("high", high)):
        if bound is not None and (kind not in ("int", "float") or isinstance(bound, bool)
                                  or not isinstance(bound, (int, float))):
            raise UsageError(f"{label}.{key}: {bound!r} is not valid; valid: a number, for type int or float")
    parse: Parser
    if kind == "int":
        if any(b is not None and b != int(b) for b in (low, high)):
            raise UsageError(f"{label}: low/high must be integers for type int")
        parse = int_in(int(low) if low is not None else -(2**63), int(high) if high is not None else 2**63 - 1)
    elif kind == "float":
        parse = float_in(low, high)
    elif kind == "bool":
        parse = boolean
    elif kind == "str":
        parse = text
    else:
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{label}.choices: must be a non-empty list for type choice")
        parse = one_of(tuple(choices))
    if "default" not in spec:
        raise UsageError(f"{label}.default: missing; valid: a value of type {kind}")
    default = None if spec["default"] is None else parse(f"{label}.default", spec["default"])
    budget = spec.get("budget", False)
    if not isinstance(budget, bool):
        raise UsageError(f"{label}.budget: {budget!r} is not valid; valid: true or false")
    return Field(name, env, optional(parse) if default is None else parse, default, str(spec.get("help", "")),
                 budget=budget)



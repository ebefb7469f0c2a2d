"""Optuna's sampler and pruner for a study, built from the tables of :mod:`hpo.config.search`
with hpo's defaults, updated by the config's ``sampler_args``/``pruner_args`` for that name;
unknown arguments are refused (exit 2, naming the argument and what is valid)."""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any, Mapping

from hpo.config.search import PRUNERS, SAMPLERS, Algorithm
from hpo.errors import UsageError

if TYPE_CHECKING:
    import optuna


def _construct(kind: str, algorithm: Algorithm, name: str, per_name: Mapping[str, Mapping[str, Any]],
               **fixed: Any) -> Any:
    """``algorithm``'s class with hpo's defaults, the config's arguments for ``name`` and ``fixed``."""
    args = per_name.get(name, {})
    key = f"{kind}_args.{name}"
    module_name = "hpo.study.pruners" if algorithm.hpo_own else f"optuna.{kind}s"
    label = f"{module_name}.{algorithm.class_name}"
    cls = getattr(importlib.import_module(module_name), algorithm.class_name)
    accepted = set(inspect.signature(cls).parameters) - set(fixed)
    unknown = sorted(set(args) - accepted)
    if unknown:
        raise UsageError(f"{key}.{unknown[0]}: not an argument of {label}; valid: {', '.join(sorted(accepted))}")
    try:
        return cls(**{**algorithm.defaults, **args, **fixed})
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{key}: {label} refused {dict(args)}: {exc}") from None


def make_sampler(name: str, seed: int | None, args: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> "optuna.samplers.BaseSampler":
    """The sampler ``OPTUNA_SAMPLER=name`` names, seeded with ``seed``."""
    sampler: optuna.samplers.BaseSampler = _construct("sampler", SAMPLERS[name], name, args or {}, seed=seed)
    return sampler


def make_pruner(name: str, args: Mapping[str, Mapping[str, Any]] | None = None) -> "optuna.pruners.BasePruner":
    """The pruner ``OPTUNA_PRUNER=name`` names."""
    pruner: optuna.pruners.BasePruner = _construct("pruner", PRUNERS[name], name, args or {})
    return pruner

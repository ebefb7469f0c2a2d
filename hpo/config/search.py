"""The samplers and pruners a study may name (``OPTUNA_SAMPLER``, ``OPTUNA_PRUNER``), with
hpo's defaults for each: the one list of their names, which settings validation, the
study config's ``sampler_args``/``pruner_args`` and :mod:`hpo.study.algorithms` (which
builds them) all read. Plain data: nothing here imports Optuna."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Algorithm:
    """A sampler or pruner: its class's name (in ``optuna.samplers``/``optuna.pruners``, or
    among hpo's own pruners) and hpo's default arguments, which the config's
    ``sampler_args: {name: {...}}`` (``pruner_args``) override."""

    class_name: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    hpo_own: bool = False  # one of hpo's own (hpo.study.pruners), not Optuna's
    one_objective: bool = False  # a sampler that cannot search several objectives (its trials would all fail)


SAMPLERS: Mapping[str, Algorithm] = {
    "tpe": Algorithm("TPESampler", {"multivariate": True, "constant_liar": True}),
    "random": Algorithm("RandomSampler"),
    "cmaes": Algorithm("CmaEsSampler", one_objective=True),
    "qmc": Algorithm("QMCSampler", {"scramble": True}),
    "gp": Algorithm("GPSampler"),
    "nsga2": Algorithm("NSGAIISampler"),
}
PRUNERS: Mapping[str, Algorithm] = {
    "hyperband": Algorithm("HyperbandPruner", {"min_resource": 1, "max_resource": "auto"}),
    "median": Algorithm("MedianPruner", {"n_startup_trials": 5, "n_warmup_steps": 1}),
    "sha": Algorithm("SuccessiveHalvingPruner"),
    "percentile": Algorithm("PercentilePruner", {"percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 1}),
    "wilcoxon": Algorithm("WilcoxonPruner"),
    # the median rule at the ends of a staged objective's stages (PhysAE: the end of A, of B1)
    "stage": Algorithm("StagePruner", hpo_own=True),
    "none": Algorithm("NopPruner"),
}
SAMPLER_NAMES = tuple(SAMPLERS)
PRUNER_NAMES = tuple(PRUNERS)

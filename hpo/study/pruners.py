"""hpo's own pruners, beside Optuna's (``OPTUNA_PRUNER`` picks one, see :mod:`hpo.study.shared`).

:class:`StagePruner` (``OPTUNA_PRUNER=stage``): the median rule, applied only at the
ends of a staged objective's stages. PhysAE trains A -> B1 -> B2 and reports one value
per epoch at its global step; each stage's length is a parameter (``A.epochs``,
``B1.epochs``), and each stage evaluates with its own refinement settings, so the
curve jumps at every stage boundary. At a given global step one trial may still be in
Stage A while another is in B1: Optuna's step-keyed pruners (median, Hyperband) then
compare values of different stages. This pruner compares like with like: a trial's
value at the end of its stage k against the other trials' values at the end of their
own stage k, whatever their epochs. No decision is taken inside a stage, nor in the
last stage (its end is the objective).

The measurement behind it is docs/benchmarks.md section 6 (``benchmarks/bench_search.py``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

# PhysAE's stages before the last one; their ends are the decision points.
PHYSAE_STAGE_EPOCHS: tuple[str, ...] = ("A.epochs", "B1.epochs")
# Written by hpo at a trial's creation: parameters fixed by a setting (STAGEA_EPOCHS ...).
FIXED_PARAMS_ATTR = "fixed_params"


def stage_ends(params: Mapping[str, Any], stage_epochs: Sequence[str]) -> tuple[int, ...] | None:
    """The global steps at which the stages named by ``stage_epochs`` end (cumulative
    sums: A.epochs, A.epochs + B1.epochs); None when a length is missing. Pure."""
    ends, total = [], 0
    for name in stage_epochs:
        value = params.get(name)
        if value is None:
            return None
        total += int(value)
        ends.append(total)
    return tuple(ends)


def should_prune_at_stage_end(value: float, others: Sequence[float], percentile: float, n_min_trials: int,
                              minimize: bool = True) -> bool:
    """The rule at one stage end: prune when ``value`` is worse than the ``percentile``-th
    (best first) of the other trials' values at that same stage end, once there are at
    least ``n_min_trials`` of them. Pure."""
    finite = sorted((v for v in others if not math.isnan(v)), reverse=not minimize)
    if len(finite) < max(1, n_min_trials):
        return False
    if math.isnan(value):
        return True
    # The percentile over the ordered values (linear interpolation, as numpy's default).
    position = (len(finite) - 1) * percentile / 100.0
    low = int(position)
    high = min(low + 1, len(finite) - 1)
    threshold = finite[low] + (finite[high] - finite[low]) * (position - low)
    return value > threshold if minimize else value < threshold


class StagePruner(optuna.pruners.BasePruner):
    """The median rule at stage ends only; see the module docstring.

    ``stage_epochs``: the parameters holding the lengths of the stages before the last
    (PhysAE's ``A.epochs``, ``B1.epochs`` by default), read from the trial's parameters,
    else from the parameters hpo fixed by a setting. A trial that has none of them is
    never pruned. ``percentile``: 50 is the median. ``n_min_trials``: how many other
    trials must have reached that stage end (COMPLETE, PRUNED or still RUNNING) before
    any trial is pruned there. ``first_end``: the stage ends before this one decide nothing
    (seed 004's transfer objective: at Stage A's end only A's own error is known, and
    judging A by it is what that search avoids; ``pruner_args: {stage: {first_end: 1}}``).
    """

    def __init__(self, stage_epochs: Sequence[str] = PHYSAE_STAGE_EPOCHS, percentile: float = 50.0,
                 n_min_trials: int = 5, first_end: int = 0) -> None:
        if not stage_epochs or not all(isinstance(n, str) for n in stage_epochs):
            raise ValueError(f"stage_epochs must be a non-empty list of parameter names, got {stage_epochs!r}")
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        if n_min_trials < 1:
            raise ValueError(f"n_min_trials must be >= 1, got {n_min_trials}")
        if not 0 <= first_end < len(stage_epochs):
            raise ValueError(f"first_end must be a stage end index from 0 to {len(stage_epochs) - 1}, got {first_end}")
        self.stage_epochs = tuple(stage_epochs)
        self.percentile = float(percentile)
        self.n_min_trials = int(n_min_trials)
        self.first_end = int(first_end)

    def _ends(self, trial: FrozenTrial) -> tuple[int, ...] | None:
        fixed = trial.user_attrs.get(FIXED_PARAMS_ATTR)
        params = {**fixed, **trial.params} if isinstance(fixed, Mapping) else trial.params
        return stage_ends(params, self.stage_epochs)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or len(study.directions) > 1:
            return False
        ends = self._ends(trial)
        if ends is None or step not in ends:
            return False
        stage = ends.index(step)
        if stage < self.first_end:
            return False
        others = []
        for other in study.get_trials(deepcopy=False,
                                      states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
            if other.number == trial.number:
                continue
            other_ends = self._ends(other)
            if other_ends is not None and other_ends[stage] in other.intermediate_values:
                others.append(other.intermediate_values[other_ends[stage]])
        return should_prune_at_stage_end(trial.intermediate_values[step], others, self.percentile, self.n_min_trials,
                                         minimize=study.direction == StudyDirection.MINIMIZE)

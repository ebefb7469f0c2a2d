"""The PhysAE objective named in ``configs/physae.yaml``: ``hpo.physae.objective:objective``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.physae.settings import SETTINGS

if TYPE_CHECKING:
    from hpo.api import TrialContext
    from hpo.physae.train import ReportedValue

# SETTINGS: the objective's own settings, which hpo reads from this module at
# start-up; torch is imported only when a trial runs.
__all__ = ["SETTINGS", "objective"]


def objective(params: dict[str, Any], ctx: TrialContext, reported: "ReportedValue | None" = None) -> float:
    """Train PhysAE through stages A, B1 and B2 and return the value to minimise.

    ``params`` must hold the twelve ``A.*``/``B1.*``/``B2.*`` parameters (sampled
    merged with fixed ones). Returns the validation RMSE of the normalised
    physical parameters after refinement at the end of B2. Writes only inside
    ``ctx.run_dir`` (see :mod:`hpo.physae.train` for the files). Raises
    :class:`hpo.api.Diverged` (-> PRUNED) on a non-finite loss,
    ``optuna.TrialPruned`` when the pruner stops it and
    :class:`hpo.api.TrialStopped` on a stop request; every other exception,
    out of memory included, is left to the worker's outcome policy. ``reported``: what
    the pruner gets each epoch instead of its error (a variant's weighted value).
    """
    from hpo.physae.train import train

    return train(params, ctx, reported)

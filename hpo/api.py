"""What an objective author uses: the one public module for objectives.

An objective is ``objective(params, ctx) -> float | Sequence[float]``, named in the
study config as ``package.module:function``. Its knobs arrive on one channel each:

- ``params``: the sampled (and fixed) search-space parameters;
- ``ctx.options``: the objective's own settings, declared in its module as
  ``SETTINGS = (Field(...), ...)`` and resolved by hpo (default < config
  ``settings:`` < environment < ``--arg NAME=VALUE``), plus the config's
  ``objective_args``;
- ``ctx.settings``: hpo's own settings (seeds, device, folders), read-only.

Raise :class:`Diverged` for a non-finite loss (PRUNED with the message),
``TrialPruned`` to prune; call ``ctx.report`` once per epoch and ``ctx.check_stop``
at safe points, and let :class:`TrialStopped` and :class:`TrialTaken` through.
"""

from __future__ import annotations

from optuna import TrialPruned

from hpo.objective import Objective, ObjectiveValue, TrialContext, TrialStopped, TrialTaken
from hpo.settings import Field, choice, int_in, optional, positive_float
from hpo.trial_errors import Diverged

__all__ = [
    "Diverged",
    "Field",
    "Objective",
    "ObjectiveValue",
    "TrialContext",
    "TrialPruned",
    "TrialStopped",
    "TrialTaken",
    "choice",
    "int_in",
    "optional",
    "positive_float",
]

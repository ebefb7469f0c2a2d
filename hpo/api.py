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
A config's ``setup: module:function`` gets a :class:`SetupContext`. Checkpoints go
through :func:`write_atomic` (``torch.save`` into it: readers never see half a file),
and the lines of ``ctx.log_metrics`` into ``run_dir / METRICS_FILE``.
"""

from __future__ import annotations

from optuna import TrialPruned

from hpo.config.fields import Field, choice, float_in, int_in, optional, positive_float
from hpo.system.files import write_atomic, write_bytes_atomic
from hpo.worker.context import (
    METRICS_FILE,
    Diverged,
    Objective,
    ObjectiveValue,
    TrialContext,
    TrialStopped,
    TrialTaken,
)
from hpo.worker.setup import SetupContext

__all__ = [
    "METRICS_FILE",
    "Diverged",
    "Field",
    "Objective",
    "ObjectiveValue",
    "SetupContext",
    "TrialContext",
    "TrialPruned",
    "TrialStopped",
    "TrialTaken",
    "choice",
    "float_in",
    "int_in",
    "optional",
    "positive_float",
    "write_atomic",
    "write_bytes_atomic",
]

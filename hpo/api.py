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
A config's ``setup: module:function`` gets a :class:`SetupContext` (its ``options``: the
``setup_inputs`` the config declares, which key its cache; all of them if none).
Checkpoints go through :func:`write_atomic` (``torch.save`` into it: readers never see
half a file), and the lines of ``ctx.log_metrics`` into ``run_dir / METRICS_FILE``.

Reading ``SETTINGS`` imports an objective's module when settings are resolved, by every
command: the names of a trial (its context, its exceptions) load only when first used,
so that ``from hpo.api import Field`` costs no more than the settings themselves.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hpo.config.fields import Field, choice, float_in, int_in, optional, positive_float
from hpo.system.files import write_atomic, write_bytes_atomic

if TYPE_CHECKING:
    from optuna import TrialPruned

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

_LAZY = {**dict.fromkeys(("METRICS_FILE", "Diverged", "Objective", "ObjectiveValue", "TrialContext", "TrialStopped",
                          "TrialTaken"), "hpo.worker.context"),
         "SetupContext": "hpo.worker.setup", "TrialPruned": "optuna"}


def __getattr__(name: str) -> Any:
    """The names of a trial, imported the first time an objective asks for one."""
    if name not in _LAZY:
        raise AttributeError(f"module 'hpo.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


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

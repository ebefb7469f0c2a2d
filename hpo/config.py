"""The study config: one YAML file that says what to optimise and over what.

Keys (unknown ones are refused)::

    study_name: physae                       # default of STUDY_NAME
    objective: hpo.physae.objective:objective
    direction: minimize                      # or directions: [minimize, minimize]
    settings: {n_train: 50000, ...}          # defaults of the settings (see hpo.settings)
    space: {...}                             # see hpo.space
    enqueue: [{param: value, ...}, ...]      # warm-start trials of a new study
    sampler_args: {tpe: {n_startup_trials: 10}}   # per sampler: used when OPTUNA_SAMPLER is that one
    pruner_args: {hyperband: {min_resource: 1}}   # per pruner, likewise
    objective_args: {...}                    # fixed knobs, handed to the objective in ctx.options

The objective's module may declare its own settings as ``SETTINGS`` (see
:mod:`hpo.settings`); the config's ``settings:`` section then also holds their values.

Storage, budgets, per-trial time budget and time-based pruning are settings
(``storage``, ``max_trials``, ``trial_timeout_seconds``, ``time_pruning_warmup`` ...).
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from hpo.errors import UsageError
from hpo.objective import Objective
from hpo.settings import PRUNERS, SAMPLERS, Field, Settings, config_path, parse_args, resolve
from hpo.space import Param, check_param_set, parse_space

_logger = logging.getLogger(__name__)

_TOP_KEYS = ("study_name", "objective", "direction", "directions", "settings", "space", "enqueue",
             "sampler_args", "pruner_args", "objective_args")
_DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True)
class StudyConfig:
    path: Path
    objective: str  # "package.module:function"
    directions: tuple[str, ...]
    space: Mapping[str, Param]
    enqueue: tuple[Mapping[str, Any], ...]
    settings: Mapping[str, Any]  # the settings: section, plus study_name when given
    sampler_args: Mapping[str, Any] = field(default_factory=dict)
    pruner_args: Mapping[str, Any] = field(default_factory=dict)
    objective_args: Mapping[str, Any] = field(default_factory=dict)
    text: str = ""  # the file as read, for the study's stored copy

    def import_folders(self) -> tuple[Path, ...]:
        """Where a user's objective module is found besides ``sys.path``: the config
        file's folder, then the current folder (no ``PYTHONPATH`` needed)."""
        return tuple(dict.fromkeys((self.path.resolve().parent, Path.cwd().resolve())))

    def _module(self) -> Any:
        """The objective's module; the one place objectives are imported.

        The config's folder and the current folder are appended to ``sys.path`` (after
        it, so they never shadow an installed package)."""
        module_name = self.objective.partition(":")[0]
        folders = self.import_folders()
        for folder in folders:
            if str(folder) not in sys.path:
                sys.path.append(str(folder))
        importlib.invalidate_caches()  # folders made after a first lookup (tests, notebooks)
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and f"{module_name}.".startswith(f"{exc.name}."):
                looked = ", ".join([*(str(f) for f in folders), "PYTHONPATH and the installed packages"])
                raise UsageError(
                    f"{self.path}: objective: no module {module_name!r} (module {exc.name!r} not found); "
                    f"looked in {looked}; valid: 'package.module:function' with the package in the "
                    "config's folder, the current folder, or on PYTHONPATH") from None
            raise UsageError(f"{self.path}: objective: module {module_name!r} was found but cannot be imported: "
                             f"{exc} (install it, or import it inside the objective function)") from None
        except ImportError as exc:
            raise UsageError(f"{self.path}: objective: cannot import {module_name!r}: {exc}") from None

    def objective_fields(self) -> tuple[Field, ...]:
        """The objective module's own settings (its ``SETTINGS``; none when absent).

        Importing the module must stay cheap: an objective imports torch and the
        like inside its function, as :mod:`hpo.physae.objective` does. A module that
        cannot be imported here (``hpo status`` on a login node without the objective's
        packages) has no settings to show; launchers refuse it (``check_runnable``)."""
        try:
            module = self._module()
        except UsageError as exc:
            _logger.debug("%s", exc)
            return ()
        declared = getattr(module, "SETTINGS", ())
        if not isinstance(declared, tuple) or not all(isinstance(f, Field) for f in declared):
            raise UsageError(f"{self.path}: objective: {self.objective.partition(':')[0]}.SETTINGS must be a "
                             "tuple of hpo.settings.Field")
        taken = sorted(set(self.objective_args) & {f.name for f in declared})
        if taken:
            env = next(f.env for f in declared if f.name == taken[0])
            raise UsageError(f"{self.path}: objective_args.{taken[0]} is a setting of the objective; "
                             f"valid: settings.{taken[0]} in the config, {env}=... or --arg {taken[0]}=...")
        return declared

    def load_objective(self) -> Objective:
        """Import the objective function named in the config."""
        module_name, _, func_name = self.objective.partition(":")
        func = getattr(self._module(), func_name, None)
        if not callable(func):
            raise UsageError(f"{self.path}: objective: {module_name!r} has no function {func_name!r}")
        return func  # type: ignore[no-any-return]


def _directions(path: Path, raw: Mapping[str, Any]) -> tuple[str, ...]:
    if "direction" in raw and "directions" in raw:
        raise UsageError(f"{path}: direction: give either 'direction' or 'directions', not both")
    if "directions" in raw:
        values = raw["directions"]
        key = "directions"
        if not isinstance(values, list) or not values:
            raise UsageError(f"{path}: directions: must be a non-empty list of {' or '.join(_DIRECTIONS)}")
    else:
        values, key = [raw.get("direction", "minimize")], "direction"
    for value in values:
        if value not in _DIRECTIONS:
            raise UsageError(f"{path}: {key}: {value!r} is not valid; valid: {', '.join(_DIRECTIONS)}")
    return tuple(values)


def _enqueue(path: Path, raw: Any, space: Mapping[str, Param]) -> tuple[Mapping[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise UsageError(f"{path}: enqueue: must be a list of parameter mappings")
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise UsageError(f"{path}: enqueue[{i}]: must be a mapping of parameter to value")
        check_param_set(space, entry, f"{path}: enqueue[{i}]")
    return tuple(raw)


def parse_config(path: Path, raw: Any) -> StudyConfig:
    """Validate a loaded YAML document; pure."""
    if not isinstance(raw, Mapping):
        raise UsageError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise UsageError(f"{path}: {unknown[0]}: unknown key; valid: {', '.join(_TOP_KEYS)}")
    objective = raw.get("objective")
    if not isinstance(objective, str) or ":" not in objective:
        raise UsageError(f"{path}: objective: {objective!r} is not valid; valid: 'package.module:function'")
    settings = raw.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise UsageError(f"{path}: settings: must be a mapping of setting name to value")
    settings = dict(settings)
    if "study_name" in raw:
        settings.setdefault("study_name", raw["study_name"])
    space = parse_space(path, raw.get("space"))
    extra = {}
    for key in ("sampler_args", "pruner_args", "objective_args"):
        value = raw.get(key) or {}
        if not isinstance(value, Mapping):
            raise UsageError(f"{path}: {key}: must be a mapping")
        extra[key] = dict(value)
    for key, names in (("sampler_args", SAMPLERS), ("pruner_args", PRUNERS)):
        for name, args in extra[key].items():
            if name not in names:
                raise UsageError(f"{path}: {key}.{name}: not a {key.split('_')[0]}; valid: {', '.join(names)}")
            if not isinstance(args, Mapping):
                raise UsageError(f"{path}: {key}.{name}: must be a mapping of argument name to value")
    return StudyConfig(
        sampler_args=extra["sampler_args"],
        pruner_args=extra["pruner_args"],
        objective_args=extra["objective_args"],
        path=path,
        objective=objective,
        directions=_directions(path, raw),
        space=space,
        enqueue=_enqueue(path, raw.get("enqueue"), space),
        settings=settings,
    )


def load_config(path: Path) -> StudyConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the study config: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None
    return replace(parse_config(path, raw), text=text)


def load_all(flags: Mapping[str, Any], env: Mapping[str, str]) -> tuple[Settings, StudyConfig]:
    """Settings and study config from flags (``args``: the ``--arg NAME=VALUE`` pairs),
    an environment mapping and the config file."""
    path, source = config_path(flags, env)
    config = load_config(path)
    fields = config.objective_fields()
    args = parse_args(tuple(flags.get("args") or ()), fields)
    return resolve(flags, env, config.settings, path, source, fields, args), config

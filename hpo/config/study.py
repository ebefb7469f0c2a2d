"""The study config: one YAML file that says what to optimise and over what.

Keys (unknown ones are refused)::

    study_name: physae                       # default of STUDY_NAME
    objective: hpo.physae.objective:objective
    direction: minimize                      # or directions: [minimize, minimize]
    settings: {n_train: 50000, ...}          # defaults of the settings (see hpo.config.settings)
    space: {...}                             # see hpo.config.space
    enqueue: [{param: value, ...}, ...]      # warm-start trials of a new study
    sampler_args: {tpe: {n_startup_trials: 10}}   # per sampler: used when OPTUNA_SAMPLER is that one
    pruner_args: {hyperband: {min_resource: 1}}   # per pruner, likewise
    objective_args: {...}                    # fixed knobs, handed to the objective in ctx.options
    objective_settings:                      # the objective's own settings, declared here
      n_steps_per_sample: {type: int, default: 800, low: 1, env: N_STEPS_PER_SAMPLE}
    metric_names: [error, latency_us]        # names of the objectives (Optuna's set_metric_names)
    setup: package.module:function           # a stage computed once per study and cached (hpo.worker.setup)
    setup_inputs: [problem]                  # the options the setup depends on (its cache key); default: all
    matrix: {problem: [a, b], method: [sgld, sghmc]}   # a sweep: one study per combination,
    study_name: llc_{problem}_{method}                 #   named from its values
    matrix_space: {method: {sghmc: {friction: {...}}}} # parameters only some cells have
    matrix_overrides:                                  # what one value brings to its studies:
      surrogate:                                       #   settings, objective_args, and parameters
        mlp: {settings: {max_trials: 30}, objective_args: {epochs: 10},
              space: {hidden_size: {type: int, low: 50, high: 500}}}   # (a shared one's range too)

A sweep (``matrix:``) is one study per combination of values (:func:`cells`), all in
the same journal folder; each cell's values reach the objective in ``ctx.options``.
``matrix_overrides`` give the studies of one value their own settings (a config layer of
their own, above ``settings:``, below the environment and flags), ``objective_args`` and
parameters (new ones, or another range for a shared one); ``space:`` may then be left
empty when every study gets its parameters that way. ``hpo config --study-name CELL``
names ``matrix_overrides.<variable>.<value>`` as the source of what an override set.
Workers go through the studies in order (:class:`Launch`, :class:`hpo.worker.loop.Worker`).
A ``setup:`` that depends on only some options says which (``setup_inputs: [problem]``):
cells that agree on them share one cached setup (seed 003's reference, once per problem
and not per method), and the setups of different cells run on different workers at once.

The objective's module may declare its own settings as ``SETTINGS`` (see
:mod:`hpo.config.settings`), and the config may declare more under ``objective_settings:``
(:func:`hpo.config.fields.declared_field`); both resolve like hpo's own (default < config
``settings:`` < environment < ``--arg NAME=VALUE``) and reach the objective as ``ctx.options``.

Storage, budgets, per-trial time budget and time-based pruning are settings
(``storage``, ``max_trials``, ``trial_timeout_seconds``, ``time_pruning_warmup`` ...).
"""

from __future__ import annotations

import importlib
import itertools
import logging
import math
import re
import string
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from hpo.config.fields import Field, declared_field
from hpo.config.search import PRUNER_NAMES, SAMPLER_NAMES
from hpo.config.settings import (
    FIELD_BY_NAME,
    Settings,
    check_declared,
    config_path,
    parse_args,
    parse_study_name,
    resolve,
)
from hpo.config.space import Param, check_param_set, parse_space
from hpo.errors import UsageError

_logger = logging.getLogger(__name__)

_TOP_KEYS = ("study_name", "objective", "direction", "directions", "settings", "space", "enqueue",
             "sampler_args", "pruner_args", "objective_args", "objective_settings", "metric_names", "setup",
             "setup_inputs", "matrix", "matrix_space", "matrix_overrides", "time_pruning_cap")
_OVERRIDE_KEYS = ("settings", "objective_args", "space")
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
    declared: tuple[Field, ...] = ()  # objective_settings: the config's own settings
    metric_names: tuple[str, ...] | None = None
    setup: str | None = None  # "package.module:function", see hpo.worker.setup
    # The options the setup depends on (objective_args, matrix variables, objective settings):
    # its cache key and its ctx.options. None: every option (a change of any runs it again).
    setup_inputs: tuple[str, ...] | None = None
    # A sweep: (name, values) per matrix variable, and extra parameters per variable and value.
    matrix: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    matrix_space: Mapping[str, Mapping[str, Mapping[str, Param]]] = field(default_factory=dict)
    matrix_overrides: Mapping[str, Mapping[str, "Override"]] = field(default_factory=dict)
    # A sweep's study: each setting its matrix_overrides set -> "matrix_overrides.<variable>.<value>".
    overridden: Mapping[str, str] = field(default_factory=dict)
    # Several objectives and HPO_TIME_PRUNING_WARMUP: a time-pruned trial ends COMPLETE with these
    # values, one per objective, each a number (the cap) or "elapsed" (the seconds it ran).
    time_pruning_cap: tuple[float | str, ...] | None = None
    cell: Mapping[str, Any] = field(default_factory=dict)  # a sweep's study: its matrix values
    text: str = ""  # the file as read, for the study's stored copy

    def import_folders(self) -> tuple[Path, ...]:
        """Where a user's objective module is found besides ``sys.path``: the config
        file's folder, then the current folder (no ``PYTHONPATH`` needed)."""
        return tuple(dict.fromkeys((self.path.resolve().parent, Path.cwd().resolve())))

    def _module(self, key: str = "objective") -> Any:
        """The module of the config's ``objective`` (or ``setup``); the one place they are imported.

        The config's folder and the current folder are appended to ``sys.path`` (after
        it, so they never shadow an installed package)."""
        module_name = str(getattr(self, key)).partition(":")[0]
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
                    f"{self.path}: {key}: no module {module_name!r} (module {exc.name!r} not found); "
                    f"looked in {looked}; valid: 'package.module:function' with the package in the "
                    "config's folder, the current folder, or on PYTHONPATH") from None
            raise UsageError(f"{self.path}: {key}: module {module_name!r} was found but cannot be imported: "
                             f"{exc} (install it, or import it inside the function)") from None
        except ImportError as exc:
            raise UsageError(f"{self.path}: {key}: cannot import {module_name!r}: {exc}") from None
        except SyntaxError as exc:
            raise UsageError(f"{self.path}: {key}: {module_name!r} has a syntax error at {exc.filename}:{exc.lineno}: "
                             f"{exc.msg}; valid: a module Python can import") from None
        except Exception as exc:  # noqa: BLE001 - the user's module ran code at import and it raised
            raise UsageError(f"{self.path}: {key}: importing {module_name!r} raised {type(exc).__name__}: {exc}; "
                             "valid: a module whose import succeeds (do heavy work inside the function)") from None

    def function(self, key: str) -> Any:
        """The function the config names under ``key`` (``objective`` or ``setup``)."""
        module_name, _, func_name = str(getattr(self, key)).partition(":")
        func = getattr(self._module(key), func_name, None)
        if not callable(func):
            raise UsageError(f"{self.path}: {key}: {module_name!r} has no function {func_name!r}")
        return func

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
            return self.declared
        declared = getattr(module, "SETTINGS", ())
        if not isinstance(declared, tuple) or not all(isinstance(f, Field) for f in declared):
            raise UsageError(f"{self.path}: objective: {self.objective.partition(':')[0]}.SETTINGS must be a "
                             "tuple of hpo.api.Field")
        check_declared(str(self.path), self.declared, declared)
        everything = declared + self.declared
        varied = sorted({n for n, _ in self.matrix} & {f.name for f in everything})
        if varied:
            raise UsageError(f"{self.path}: matrix.{varied[0]}: a setting of the objective, which a sweep cannot "
                             "vary (the setting would win); valid: another name, read from ctx.options")
        taken = sorted(set(self.objective_args) & {f.name for f in everything})
        if taken:
            env = next(f.env for f in everything if f.name == taken[0])
            raise UsageError(f"{self.path}: objective_args.{taken[0]} is a setting of the objective; "
                             f"valid: settings.{taken[0]} in the config, {env}=... or --arg {taken[0]}=...")
        return everything

    def load_objective(self) -> Callable[..., Any]:
        """Import the objective function named in the config (an :class:`hpo.api.Objective`)."""
        return self.function("objective")  # type: ignore[no-any-return]


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


def _declared(path: Path, raw: Any) -> tuple[Field, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise UsageError(f"{path}: objective_settings: must be a mapping of setting name to its declaration")
    out = tuple(declared_field(str(path), name, spec) for name, spec in raw.items())
    envs = [f.env for f in out]
    twice = sorted({e for e in envs if envs.count(e) > 1})
    if twice:
        raise UsageError(f"{path}: objective_settings: {twice[0]} is the variable of two settings; valid: one each")
    return out


def _metric_names(path: Path, raw: Any, n_objectives: int) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if (not isinstance(raw, list) or len(raw) != n_objectives
            or not all(isinstance(n, str) and n.strip() for n in raw) or len(set(raw)) != len(raw)):
        raise UsageError(f"{path}: metric_names: {raw!r} is not valid; valid: a list of {n_objectives} distinct "
                         "names, one per objective in the order of direction(s)")
    return tuple(raw)


_VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _matrix(path: Path, raw: Any, study_name: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not raw:
        raise UsageError(f"{path}: matrix: must be a mapping of variable name to a list of values")
    out = []
    for name, values in raw.items():
        if not isinstance(name, str) or not _VAR_RE.fullmatch(name):
            raise UsageError(f"{path}: matrix.{name}: not a valid variable name; valid: letters, digits and _")
        if name in FIELD_BY_NAME:
            raise UsageError(f"{path}: matrix.{name}: a setting of hpo's, which a sweep cannot vary; valid: a name "
                             "of the objective's own (it reaches the objective as ctx.options)")
        if (not isinstance(values, list) or not values
                or not all(isinstance(v, (str, int, float, bool)) for v in values)):
            raise UsageError(f"{path}: matrix.{name}: {values!r} is not valid; valid: a non-empty list of strings "
                             "or numbers, e.g. [narrow, wide]")
        if len({str(v) for v in values}) != len(values):
            raise UsageError(f"{path}: matrix.{name}: {values!r} repeats a value; valid: distinct values")
        out.append((name, tuple(values)))
    names = [n for n, _ in out]
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(study_name) if f is not None} \
            if isinstance(study_name, str) else set()
    except ValueError as exc:
        raise UsageError(f"{path}: study_name: {study_name!r} is not a valid pattern ({exc}); valid: "
                         "text with {variable} for each matrix variable") from None
    unknown = sorted(used - set(names))
    if unknown:
        raise UsageError(f"{path}: study_name: {study_name!r} names {', '.join(map(repr, unknown))}, not a matrix "
                         f"variable; valid: {', '.join('{' + n + '}' for n in names)}")
    missing = [n for n in names if n not in used]
    if missing:
        raise UsageError(f"{path}: study_name: {study_name!r} must name every matrix variable, e.g. "
                         f"{'_'.join('{' + n + '}' for n, _ in out)!r}; missing: {', '.join(missing)}")
    try:
        study_name.format(**{n: v[0] for n, v in out})
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(f"{path}: study_name: {study_name!r} is not a valid pattern ({exc}); valid: "
                         "text with {variable} for each matrix variable") from None
    return tuple(out)


def _matrix_space(path: Path, raw: Any, matrix: tuple[tuple[str, tuple[Any, ...]], ...],
                  space: Mapping[str, Param]) -> dict[str, dict[str, dict[str, Param]]]:
    if raw is None:
        return {}
    values = {n: {str(v) for v in vs} for n, vs in matrix}
    if not isinstance(raw, Mapping):
        raise UsageError(f"{path}: matrix_space: must be a mapping: variable -> value -> parameters")
    out: dict[str, dict[str, dict[str, Param]]] = {}
    for name, by_value in raw.items():
        if name not in values:
            raise UsageError(f"{path}: matrix_space.{name}: not a matrix variable; valid: {', '.join(values)}")
        if not isinstance(by_value, Mapping):
            raise UsageError(f"{path}: matrix_space.{name}: must be a mapping of value to parameters")
        out[name] = {}
        for value, spec in by_value.items():
            if str(value) not in values[name]:
                raise UsageError(f"{path}: matrix_space.{name}.{value}: not a value of matrix.{name}; "
                                 f"valid: {', '.join(sorted(values[name]))}")
            try:
                extra = parse_space(path, spec) if spec else {}
            except UsageError as exc:
                raise UsageError(f"{path}: matrix_space.{name}.{value}: {exc}") from None
            clash = sorted(set(extra) & set(space))
            if clash:
                raise UsageError(f"{path}: matrix_space.{name}.{value}.{clash[0]}: already a parameter of space:; "
                                 "valid: a parameter that only this value's studies have")
            out[name][str(value)] = extra
    return out


@dataclass(frozen=True)
class Override:
    """What one value of a matrix variable brings to its studies (``matrix_overrides``)."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    objective_args: Mapping[str, Any] = field(default_factory=dict)
    space: Mapping[str, Param] = field(default_factory=dict)


def _matrix_overrides(path: Path, raw: Any, matrix: tuple[tuple[str, tuple[Any, ...]], ...]
                      ) -> dict[str, dict[str, Override]]:
    if raw is None:
        return {}
    values = {n: {str(v) for v in vs} for n, vs in matrix}
    if not isinstance(raw, Mapping) or not matrix:
        raise UsageError(f"{path}: matrix_overrides: must be a mapping: variable -> value -> "
                         f"{{{', '.join(_OVERRIDE_KEYS)}}}, with a matrix:")
    out: dict[str, dict[str, Override]] = {}
    for name, by_value in raw.items():
        if name not in values:
            raise UsageError(f"{path}: matrix_overrides.{name}: not a matrix variable; valid: {', '.join(values)}")
        if not isinstance(by_value, Mapping):
            raise UsageError(f"{path}: matrix_overrides.{name}: must be a mapping of value to overrides")
        out[name] = {}
        for value, spec in by_value.items():
            where = f"matrix_overrides.{name}.{value}"
            if str(value) not in values[name]:
                raise UsageError(f"{path}: {where}: not a value of matrix.{name}; "
                                 f"valid: {', '.join(sorted(values[name]))}")
            if not isinstance(spec, Mapping) or set(spec) - set(_OVERRIDE_KEYS):
                bad = sorted(set(spec) - set(_OVERRIDE_KEYS)) if isinstance(spec, Mapping) else [spec]
                raise UsageError(f"{path}: {where}: {bad[0]!r} is not valid; valid: a mapping with "
                                 f"{', '.join(_OVERRIDE_KEYS)}")
            for key in ("settings", "objective_args"):
                if not isinstance(spec.get(key) or {}, Mapping):
                    raise UsageError(f"{path}: {where}.{key}: must be a mapping")
            settings = dict(spec.get("settings") or {})
            if "study_name" in settings:
                raise UsageError(f"{path}: {where}.settings.study_name: the sweep's study_name pattern names "
                                 "its studies; valid: any other setting")
            args = dict(spec.get("objective_args") or {})
            clash = sorted(set(args) & set(values))
            if clash:
                raise UsageError(f"{path}: {where}.objective_args.{clash[0]}: a matrix variable; valid: another name")
            try:
                space = parse_space(path, spec["space"]) if spec.get("space") else {}
            except UsageError as exc:
                raise UsageError(f"{path}: {where}: {exc}") from None
            out[name][str(value)] = Override(settings, args, space)
    return out


def cells(config: StudyConfig) -> list[StudyConfig]:
    """A sweep's studies, in order (the last variable varies fastest): each a plain config
    whose study name is the pattern filled in, whose space has the cell's extra parameters,
    and whose ``objective_args`` hold the cell's values. A plain config is its only cell."""
    if not config.matrix:
        return [config]
    names = [n for n, _ in config.matrix]
    out: list[StudyConfig] = []
    for combo in itertools.product(*(vs for _, vs in config.matrix)):
        values = dict(zip(names, combo))
        space = dict(config.space)
        settings, args, overridden = dict(config.settings), dict(config.objective_args), {}
        for name, value in values.items():
            space.update(config.matrix_space.get(name, {}).get(str(value), {}))
            override = config.matrix_overrides.get(name, {}).get(str(value))
            if override is not None:  # a later variable's override wins over an earlier one's
                space.update(override.space)
                settings.update(override.settings)
                args.update(override.objective_args)
                overridden.update(dict.fromkeys(override.settings, f"matrix_overrides.{name}.{value}"))
        study = str(config.settings["study_name"]).format(**values)
        parse_study_name(f"{config.path}: study_name for {values}", study)
        if any(c.settings["study_name"] == study for c in out):
            raise UsageError(f"{config.path}: study_name: {config.settings['study_name']!r} gives {study!r} twice; "
                             "valid: a pattern that names every combination apart, e.g. with _ between variables")
        if not space:
            raise UsageError(f"{config.path}: study {study!r} has no parameter: space: is empty and neither "
                             "matrix_space nor matrix_overrides give it any; valid: parameters for every study")
        out.append(replace(
            config, matrix=(), matrix_space={}, matrix_overrides={}, space=space, cell=values,
            objective_args={**args, **values}, settings={**settings, "study_name": study}, overridden=overridden,
        ))
    return out


def single_study_text(config: StudyConfig, study_name: str | None = None) -> str:
    """The YAML of one study: the file as written, or for a sweep's study (``config.cell``)
    the sweep without ``matrix``/``matrix_space``, its values in ``objective_args`` and its
    extra parameters in ``space`` (what ``hpo retrain`` and ``hpo refine`` start from)."""
    if not config.cell and study_name is None:
        return config.text
    raw = dict(yaml.safe_load(config.text))
    extra = raw.pop("matrix_space", None) or {}
    overrides = raw.pop("matrix_overrides", None) or {}
    raw.pop("matrix", None)
    raw["study_name"] = study_name or str(config.settings["study_name"])
    if config.cell:
        raw["objective_args"] = {**(raw.get("objective_args") or {}), **config.cell}
        space = dict(raw.get("space") or {})
        settings = dict(raw.get("settings") or {})
        for name, value in config.cell.items():
            by_value = {str(k): v for k, v in (extra.get(name) or {}).items()}
            space.update(by_value.get(str(value)) or {})
            override = {str(k): v for k, v in (overrides.get(name) or {}).items()}.get(str(value)) or {}
            for group, params in (override.get("space") or {}).items():  # a stage's group merges
                both = isinstance(params, dict) and "type" not in params and isinstance(space.get(group), dict)
                space[group] = {**space[group], **params} if both else params
            settings.update(override.get("settings") or {})
            raw["objective_args"].update(override.get("objective_args") or {})
        raw["space"] = space
        raw["settings"] = settings
    settings = dict(raw.pop("settings", None) or {})
    settings.pop("study_name", None)
    if settings:
        raw["settings"] = settings
    note = f"# One study of the sweep {config.path}: {dict(config.cell)}\n" if config.cell else ""
    text: str = yaml.safe_dump(raw, sort_keys=False)
    return note + text


def study_names(config: StudyConfig) -> list[str]:
    return [str(c.settings.get("study_name")) for c in cells(config)]


Study = tuple[Settings, StudyConfig]  # one study: its resolved settings and its config


@dataclass(frozen=True)
class Launch:
    """What one command works on: the config as loaded, and each study it selects, resolved.

    A plain config is one study. A sweep (``matrix:``) is every cell, or the one that
    ``STUDY_NAME`` selects. Every study's settings hold that study's own name; a sweep's
    ``study_name`` pattern (``llc_{problem}_{method}``) is :attr:`pattern`, never a name.
    """

    config: StudyConfig
    studies: tuple[Study, ...]

    @property
    def pattern(self) -> str | None:
        """A sweep's ``study_name`` pattern; None for a plain config."""
        return str(self.config.settings["study_name"]) if self.config.matrix else None

    @property
    def settings(self) -> Settings:
        """The first study's settings: what every study of the launch shares (folders,
        budgets, recovery) is the same in each."""
        return self.studies[0][0]

    @property
    def label(self) -> str:
        """The launch's name in messages and logs: the sweep's pattern, or the study's name."""
        return self.pattern if self.pattern is not None and len(self.studies) > 1 else self.settings.study_name

    def one(self) -> Study:
        """The launch's only study; several (a sweep) is bad input for a command that takes one."""
        if len(self.studies) > 1:
            raise UsageError(f"{self.config.path} is a sweep of {len(self.studies)} studies; this command takes "
                             f"one: give --study-name (STUDY_NAME); valid: {', '.join(study_names(self.config))}")
        return self.studies[0]

    def with_config(self, config: StudyConfig) -> "Launch":
        """The same studies (all of a sweep's, or the one selected) from another copy of
        the config (``--reuse-stored``: the one the study stored)."""
        selection = replace(self.settings, study_name=self.label, config=config.path)
        return Launch(config, tuple(_select(selection, config)))

    def to_env(self, **launcher: Any) -> dict[str, str]:
        """The environment that makes a child process (a worker) resolve the same settings
        and work on the same studies; ``launcher``: settings a launcher gives each of its
        workers (``worker_rank``, ``launch_id``, ``local_workers``). For a whole sweep,
        ``STUDY_NAME`` is left empty: the child takes the config's pattern, every study."""
        env = replace(self.settings, **launcher).to_env()
        env[FIELD_BY_NAME["study_name"].env] = "" if len(self.studies) > 1 else self.settings.study_name
        if len(self.studies) > 1:
            # A setting some studies override (matrix_overrides) and the launch was not given:
            # the child resolves it per study from the config, as this process did.
            variables = {f.name: f.env for f in self.settings.fields()}
            for name in {n for _, config in self.studies for n in config.overridden}:
                if not self.settings.sources.get(name, "default").startswith(("flag", "env:")):
                    env[variables[name]] = ""
        return env


def _select(settings: Settings, config: StudyConfig) -> list[Study]:
    """The studies a launch works on: one for a plain config; for a sweep, every cell, or
    the one ``settings.study_name`` selects (there, as resolved: the pattern or a study's
    name; in what this returns, each study's own name)."""
    if not config.matrix:
        return [(settings, config)]
    pattern = str(config.settings["study_name"])
    chosen = cells(config)
    if settings.study_name != pattern:
        names = study_names(config)
        if settings.study_name not in names:
            raise UsageError(f"STUDY_NAME={settings.study_name!r} ({settings.sources.get('study_name')}) is not a "
                             f"study of the sweep in {config.path}; valid: {pattern!r} (all of them) or one of "
                             f"{', '.join(names)}")
        chosen = [c for c in chosen if c.settings["study_name"] == settings.study_name]
    return [(_cell_settings(replace(settings, study_name=str(c.settings["study_name"])), c), c) for c in chosen]


def _time_pruning_cap(path: Path, raw: Any, n_objectives: int) -> tuple[float | str, ...] | None:
    if raw is None:
        return None
    valid = (f"valid: a list of {n_objectives} entries, one per objective, each a number (the capped value) "
             "or 'elapsed' (the seconds the trial ran), with several objectives")
    if n_objectives < 2 or not isinstance(raw, list) or len(raw) != n_objectives or not all(
            v == "elapsed" or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
            for v in raw):
        raise UsageError(f"{path}: time_pruning_cap: {raw!r} is not valid; {valid}")
    return tuple(v if v == "elapsed" else float(v) for v in raw)


def _function_name(path: Path, key: str, raw: Any) -> str:
    if not isinstance(raw, str) or ":" not in raw or not all(raw.partition(":")[::2]):
        raise UsageError(f"{path}: {key}: {raw!r} is not valid; valid: 'package.module:function'")
    return raw


def _setup_inputs(path: Path, raw: Any, setup: str | None) -> tuple[str, ...] | None:
    """``setup_inputs:``, checked for shape here; whether each name is an option is known
    only once the objective's settings are (:func:`hpo.worker.setup.check_setup_inputs`)."""
    if raw is None:
        return None
    if setup is None:
        raise UsageError(f"{path}: setup_inputs: {raw!r} given without setup:; valid: leave it out, or name the "
                         "setup function (setup: package.module:function)")
    if (not isinstance(raw, list) or not all(isinstance(n, str) and n for n in raw)
            or len(set(raw)) != len(raw)):
        raise UsageError(f"{path}: setup_inputs: {raw!r} is not valid; valid: a list of distinct names of the "
                         "objective's options (objective_args, matrix variables, objective settings), e.g. [problem]")
    return tuple(raw)


def parse_config(path: Path, raw: Any) -> StudyConfig:
    """Validate a loaded YAML document; pure."""
    if not isinstance(raw, Mapping):
        raise UsageError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise UsageError(f"{path}: {unknown[0]}: unknown key; valid: {', '.join(_TOP_KEYS)}")
    objective = _function_name(path, "objective", raw.get("objective"))
    settings = raw.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise UsageError(f"{path}: settings: must be a mapping of setting name to value")
    settings = dict(settings)
    if "study_name" in raw:
        settings.setdefault("study_name", raw["study_name"])
    # A sweep whose every study brings its own parameters may leave space: empty (checked per study).
    space = {} if raw.get("matrix") and not raw.get("space") else parse_space(path, raw.get("space"))
    extra = {}
    for key in ("sampler_args", "pruner_args", "objective_args"):
        value = raw.get(key) or {}
        if not isinstance(value, Mapping):
            raise UsageError(f"{path}: {key}: must be a mapping")
        extra[key] = dict(value)
    for key, names in (("sampler_args", SAMPLER_NAMES), ("pruner_args", PRUNER_NAMES)):
        for name, args in extra[key].items():
            if name not in names:
                raise UsageError(f"{path}: {key}.{name}: not a {key.split('_')[0]}; valid: {', '.join(names)}")
            if not isinstance(args, Mapping):
                raise UsageError(f"{path}: {key}.{name}: must be a mapping of argument name to value")
    directions = _directions(path, raw)
    setup = None if raw.get("setup") is None else _function_name(path, "setup", raw["setup"])
    matrix = _matrix(path, raw.get("matrix"), settings.get("study_name"))
    taken = sorted({n for n, _ in matrix} & set(extra["objective_args"]))
    if taken:
        raise UsageError(f"{path}: objective_args.{taken[0]}: also a matrix variable; valid: one of the two")
    return StudyConfig(
        matrix=matrix,
        matrix_space=_matrix_space(path, raw.get("matrix_space"), matrix, space),
        matrix_overrides=_matrix_overrides(path, raw.get("matrix_overrides"), matrix),
        declared=_declared(path, raw.get("objective_settings")),
        metric_names=_metric_names(path, raw.get("metric_names"), len(directions)),
        time_pruning_cap=_time_pruning_cap(path, raw.get("time_pruning_cap"), len(directions)),
        setup=setup,
        setup_inputs=_setup_inputs(path, raw.get("setup_inputs"), setup),
        sampler_args=extra["sampler_args"],
        pruner_args=extra["pruner_args"],
        objective_args=extra["objective_args"],
        path=path,
        objective=objective,
        directions=directions,
        space=space,
        enqueue=_enqueue(path, raw.get("enqueue"), space),
        settings=settings,
    )


def load_config(path: Path) -> StudyConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the study config: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                         "valid: a YAML file saved as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None
    return replace(parse_config(path, raw), text=text)


def load_launch(flags: Mapping[str, Any], env: Mapping[str, str]) -> Launch:
    """The studies a command works on, from flags (``args``: the ``--arg NAME=VALUE``
    pairs), an environment mapping and the config file: settings resolved once, here."""
    path, source = config_path(flags, env)
    config = load_config(path)
    fields = config.objective_fields()
    args = parse_args(tuple(flags.get("args") or ()), fields)
    settings = resolve(flags, env, config.settings, path, source, fields, args)
    return Launch(config, tuple(_select(settings, config)))


# What a sweep study's matrix_overrides may set of hpo's own settings: what each study reads
# for itself (its budget, search and trial limits), not what its workers share (their folders,
# device, wall time, trackers), besides the objective's settings.
PER_STUDY_SETTINGS = ("max_trials", "budget_counts", "sampler", "pruner", "trial_timeout_seconds",
                      "time_pruning_warmup")


def _cell_settings(settings: Settings, cell: StudyConfig) -> Settings:
    """A sweep study's settings: its ``matrix_overrides`` as a config layer above the sweep's
    ``settings:``, where no flag or variable set the value (those still win); each override's
    source named; its own name (STUDY_NAME only selected it)."""
    if not cell.overridden:
        return settings
    allowed = [*PER_STUDY_SETTINGS, *(f.name for f in settings.objective_fields)]
    for name, where in cell.overridden.items():
        if name not in allowed:
            raise UsageError(f"{cell.path}: {where}.settings.{name}: not a setting a study of a sweep may have "
                             f"of its own; valid: {', '.join(allowed)}")
    try:  # the one resolver, with the config layer only: the given layers are settings.sources'
        own = resolve({}, {}, cell.settings, settings.config, settings.sources.get("config", "default"),
                      settings.objective_fields)
    except UsageError as exc:
        raise UsageError(f"{exc} (in {', '.join(sorted(set(cell.overridden.values())))})") from None
    values: dict[str, Any] = {}
    objective, sources = dict(settings.objective), dict(settings.sources)
    for name, where in cell.overridden.items():
        if sources.get(name, "default").startswith(("flag", "env:")):
            continue
        if name in objective:
            objective[name] = own.objective[name]
        else:
            values[name] = getattr(own, name)
        sources[name] = f"{own.sources[name]} {where}"
    return replace(settings, **values, objective=objective, sources=sources)

"""Typed settings, read in one place.

Precedence, resolved in :func:`resolve` and nowhere else:
built-in defaults < the study config's ``settings:`` section < environment < CLI flags.

Two tables, one mechanism:

- :data:`FIELDS`: hpo's own settings (budgets, sampler, folders, recovery), the
  same for every objective;
- an objective's own settings, declared by the objective's module as
  ``SETTINGS: tuple[Field, ...]`` (PhysAE's sizes, batch size and stage epochs live
  in :mod:`hpo.physae.settings`). They resolve with the same precedence and
  validation, reach the objective as ``ctx.options`` and are set on the command line
  with ``--arg NAME=VALUE``. A field with ``fixes="A.epochs"`` fixes that search-space
  parameter when set (instead of sampling it): the generic layer knows no stage names.

Every field is declared once (its environment variable, parser, default and help);
the CLI builds its flags from the same table, ``hpo config`` prints it, and
launchers pass resolved settings to workers with :meth:`Settings.to_env`.
Nothing below this module reads the process environment for these values.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from hpo.errors import UsageError

SAMPLERS = ("tpe", "random", "cmaes", "qmc", "gp", "nsga2")
PRUNERS = ("hyperband", "median", "sha", "percentile", "wilcoxon", "stage", "none")
BUDGET_COUNTS = ("finished", "complete")
DEVICES_HELP = "auto, cpu, cuda or cuda:N"
RESULTS_DIR = Path("results")  # where hpo export, hpo plot and the end-of-study export write: results/<study>/

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


_STUDY_RE = re.compile(r"^[^\x00-\x1f/\\]{1,128}$")


def _study_name(name: str, raw: Any) -> str:
    value = str(raw)
    if not _STUDY_RE.match(value) or ".." in value or value.startswith((".", "-")) or value != value.strip():
        raise UsageError(
            f"{name}={raw!r} is not a valid study name; valid: 1-128 characters, no '/', '\\', '..', "
            "control characters, leading '.' or '-', or surrounding spaces"
        )
    return value


def _device(name: str, raw: Any) -> str:
    value = str(raw).strip().lower()
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise UsageError(f"{name}={raw!r} is not a device; valid: {DEVICES_HELP}")


def _directory(name: str, raw: Any) -> Path:
    """A directory we may create or write into. Checked, never created, here."""
    text = str(raw)
    if not text.strip() or "\x00" in text:
        raise UsageError(f"{name}={raw!r} is not a directory path; valid: a writable directory")
    path = Path(text).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"{name}={raw!r} is not usable: {str(probe)!r} exists and is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{name}={raw!r} is not writable (checked {str(probe)!r}); valid: a writable directory")
    return path


_STORAGE_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql://", "mysql+pymysql://")


def _storage_url(name: str, raw: Any) -> str:
    """'' (the journal file, the default) or an RDB URL that Optuna's RDBStorage takes."""
    value = str(raw).strip()
    if value in ("", "journal") or value.startswith(_STORAGE_SCHEMES):
        return "" if value == "journal" else value
    raise UsageError(f"{name}={raw!r} is not a storage; valid: journal (default), or a URL starting with "
                     + ", ".join(_STORAGE_SCHEMES))


def _non_negative_int(name: str, raw: Any) -> int:
    return int_in(0, 1_000_000)(name, raw)


def _config_path(name: str, raw: Any) -> Path:
    path = Path(str(raw)).expanduser()
    if not path.is_file():
        raise UsageError(f"{name}={raw!r}: no such config file; valid: a YAML study config, e.g. configs/physae.yaml")
    return path


@dataclass(frozen=True)
class Field:
    name: str  # attribute of Settings and key in the config's settings: section
    env: str  # environment variable
    parse: Parser
    default: Any
    help: str
    # A search-space parameter this setting fixes when set (None: sampled as usual).
    fixes: str | None = None
    # Other environment variables that set it too (a seed's own name: N_TRIALS for MAX_TRIALS).
    aliases: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


FIELDS: tuple[Field, ...] = (
    Field("max_trials", "MAX_TRIALS", int_in(1, 10_000_000), 100, "study-wide finished trials (COMPLETE+PRUNED)",
          aliases=("N_TRIALS",)),
    Field("trials_per_worker", "TRIALS_PER_WORKER", optional(int_in(1, 10_000_000)), None, "cap per worker"),
    Field("timeout_seconds", "TIMEOUT_SECONDS", optional(positive_float), None, "a worker's wall-time budget"),
    Field("optuna_seed", "OPTUNA_SEED", int_in(0, 2**31 - 1), 42, "base sampler seed (+ worker rank)"),
    Field("sampler", "OPTUNA_SAMPLER", choice(SAMPLERS), "tpe", "sampler"),
    Field("pruner", "OPTUNA_PRUNER", choice(PRUNERS), "hyperband", "pruner"),
    Field("journal_dir", "JOURNAL_DIR", _directory, Path("optuna_journal"), "journal folder (shared filesystem)"),
    Field("study_name", "STUDY_NAME", _study_name, "physae", "study name"),
    Field("log_dir", "LOG_DIR", _directory, Path("optuna_logs"), "worker logs"),
    Field("trial_output", "TRIAL_OUTPUT", _directory, Path("optuna_runs"), "per-trial run directories"),
    Field("device", "HPO_DEVICE", _device, "auto", f"training device: {DEVICES_HELP}"),
    Field("data_seed", "DATA_SEED", int_in(0, 2**31 - 1), 0, "seed of the generated dataset"),
    Field("train_seed", "TRAIN_SEED", int_in(0, 2**31 - 1), 0, "seed of weight init and batch order"),
    Field("max_retries", "HPO_MAX_RETRIES", int_in(0, 100), 2, "retries of a lost or preempted trial"),
    Field("heartbeat_seconds", "HPO_HEARTBEAT_SECONDS", positive_float, 10.0, "heartbeat period of running trials"),
    Field("stale_seconds", "HPO_STALE_SECONDS", positive_float, 60.0, "heartbeat age after which a trial is lost"),
    Field("max_failures", "HPO_MAX_FAILURES", int_in(1, 1_000_000), 10,
          "a worker stops after this many failed trials in a row (a broken objective)"),
    Field("storage", "HPO_STORAGE", _storage_url, "", "'' = the journal file; or sqlite:///… / postgresql://…"),
    Field("trial_timeout_seconds", "HPO_TRIAL_TIMEOUT_SECONDS", optional(positive_float), None,
          "per-trial time budget; a trial past it is stopped (PRUNED)"),
    Field("time_pruning_warmup", "HPO_TIME_PRUNING_WARMUP", _non_negative_int, 0,
          "0 = off; else after W completed trials, stop trials slower than mean + std"),
    Field("budget_counts", "HPO_BUDGET_COUNTS", choice(BUDGET_COUNTS), "finished",
          "what MAX_TRIALS counts: finished (COMPLETE + PRUNED) or complete (CODES: valid trials only)"),
    Field("retry_interrupted", "HPO_RETRY_INTERRUPTED", boolean, False,
          "retry a trial ended by Ctrl-C/SIGINT like a preempted one (a lost warm start runs again)"),
    Field("reuse_results", "HPO_REUSE_RESULTS", boolean, False,
          "keep COMPLETE trials in $TRIAL_OUTPUT/runs/p_<hash>/r_<hash>/ and reuse them for the same run"),
    Field("export_at_end", "HPO_EXPORT_AT_END", boolean, True,
          "when the study has its trials, the worker that sees it first writes results/<study>/ (exports and "
          "figures) as it stops; no other worker waits"),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}
CONFIG_ENV = "HPO_CONFIG"
# Set by `hpo run` and `hpo submit` for their workers: one id per launch (see launch_key).
LAUNCH_ENV = "HPO_LAUNCH_ID"


@dataclass(frozen=True)
class Settings:
    """Effective settings of a worker or launcher. Build with :func:`resolve`."""

    max_trials: int
    trials_per_worker: int | None
    timeout_seconds: float | None
    optuna_seed: int
    sampler: str
    pruner: str
    journal_dir: Path
    study_name: str
    log_dir: Path
    trial_output: Path
    device: str
    data_seed: int
    train_seed: int
    max_retries: int
    heartbeat_seconds: float
    stale_seconds: float
    max_failures: int
    storage: str
    trial_timeout_seconds: float | None
    time_pruning_warmup: int
    budget_counts: str
    retry_interrupted: bool
    reuse_results: bool
    export_at_end: bool
    config: Path
    # The objective's own settings (its module's SETTINGS), resolved like the above.
    objective: Mapping[str, Any] = field(default_factory=dict)
    objective_fields: tuple[Field, ...] = field(default=(), compare=False, repr=False)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def counted_states(self) -> frozenset[str]:
        """The trial states ``MAX_TRIALS`` counts (``HPO_BUDGET_COUNTS``)."""
        return frozenset({"COMPLETE"} if self.budget_counts == "complete" else {"COMPLETE", "PRUNED"})

    @property
    def journal_path(self) -> Path:
        """``$JOURNAL_DIR/$STUDY_NAME.journal``: the study's only state."""
        return self.journal_dir / f"{self.study_name}.journal"

    @property
    def storage_label(self) -> str:
        """Where the study lives, for messages (an RDB URL without its password)."""
        if not self.storage:
            return str(self.journal_path)
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", self.storage)

    @property
    def jobs_path(self) -> Path:
        """``$JOURNAL_DIR/$STUDY_NAME.jobs``: the study's SLURM job ids, one per line,
        appended by the sbatch scripts and ``hpo submit``."""
        return self.journal_dir / f"{self.study_name}.jobs"

    @property
    def study_dir(self) -> Path:
        """``$TRIAL_OUTPUT/$STUDY_NAME``: run directories of this study's trials."""
        return self.trial_output / self.study_name

    def fixed_params(self) -> dict[str, Any]:
        """Search-space parameters fixed by a setting instead of sampled (the objective's
        fields declared with ``fixes=``, e.g. PhysAE's ``STAGEA_EPOCHS`` -> ``A.epochs``)."""
        return {f.fixes: self.objective[f.name] for f in self.objective_fields
                if f.fixes is not None and self.objective.get(f.name) is not None}

    def fields(self) -> tuple[Field, ...]:
        """hpo's own fields, then the objective's."""
        return FIELDS + self.objective_fields

    def value(self, f: Field) -> Any:
        return self.objective[f.name] if f in self.objective_fields else getattr(self, f.name)

    def to_env(self) -> dict[str, str]:
        """Environment that makes a child process resolve exactly these settings."""
        env = {CONFIG_ENV: str(self.config)}
        for f in self.fields():
            value = self.value(f)
            env[f.env] = "" if value is None else str(value)
        return env

    def env_line(self) -> str:
        """``VAR=value ...`` of every value taken from the environment, quoted as bash's
        ``printf %q`` does: what reproduces this run when pasted before a command."""
        return " ".join(f"{f.env}={shell_word(str(self.value(f)))}" for f in self.fields()
                        if self.sources.get(f.name, "").startswith("env:"))

    def as_dict(self) -> dict[str, Any]:
        """Every setting by name (the objective's beside hpo's), as ``settings.json`` records it."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("sources", "objective", "objective_fields"):
                continue
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        out.update(self.objective)
        return out


def shell_word(text: str) -> str:
    """``text`` as one shell word, every special character backslash-escaped (bash's ``%q``)."""
    return re.sub(r"([^A-Za-z0-9_./:=+,@%^-])", r"\\\1", text) if text else "''"


def without_settings(env: Mapping[str, str], objective_fields: tuple[Field, ...] = ()) -> dict[str, str]:
    """``env`` without any hpo setting (and those of ``objective_fields``; PhysAE's by
    default), launcher variable or SLURM variable: what a child process needs so that
    only what is passed explicitly applies (tests, benchmarks)."""
    if not objective_fields:
        from hpo.physae.settings import SETTINGS as objective_fields
    drop = ({f.env for f in FIELDS + objective_fields} | {a for f in FIELDS + objective_fields for a in f.aliases}
            | {CONFIG_ENV, "HPO_WORKER_RANK", "HPO_LOCAL_WORKERS", "HPO_SEED_OFFSET", LAUNCH_ENV})
    return {k: v for k, v in env.items() if k not in drop and not k.startswith("SLURM_")}


def default_config_path() -> Path:
    """``configs/physae.yaml`` of the current folder, else of the checkout hpo runs from."""
    local = Path("configs/physae.yaml")
    if local.is_file():
        return local
    return Path(__file__).resolve().parent.parent / "configs" / "physae.yaml"


def config_path(flags: Mapping[str, Any], env: Mapping[str, str]) -> tuple[Path, str]:
    """Which study config to read, and where that choice came from."""
    if flags.get("config") is not None:
        return _config_path("--config", flags["config"]), "flag:--config"
    if env.get(CONFIG_ENV):
        return _config_path(CONFIG_ENV, env[CONFIG_ENV]), f"env:{CONFIG_ENV}"
    return _config_path("default config", default_config_path()), "default"


_SPEC_KEYS = ("type", "default", "env", "low", "high", "choices", "help")
_SPEC_TYPES = ("int", "float", "str", "bool", "choice")
_ENV_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def declared_field(where: str, name: str, spec: Any) -> Field:
    """A setting declared in a study config's ``objective_settings:`` section::

        n_steps_per_sample: {type: int, default: 800, low: 1, high: 100000, env: N_STEPS_PER_SAMPLE}
        method: {type: choice, choices: [sgld, hmc], default: sgld}

    ``env`` defaults to the name in capitals. The default is checked like any value."""
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
    return Field(name, env, optional(parse) if default is None else parse, default, str(spec.get("help", "")))


def check_declared(where: str, declared: tuple[Field, ...], module_fields: tuple[Field, ...]) -> None:
    """A config's own settings must not take a name or variable already in use."""
    taken = {f.name: "hpo" for f in FIELDS} | {f.name: "the objective's module" for f in module_fields}
    taken_env = ({v: "hpo" for f in FIELDS for v in (f.env, *f.aliases)}
                 | {f.env: "the objective's module" for f in module_fields} | {CONFIG_ENV: "hpo"})
    for f in declared:
        if f.name in taken:
            raise UsageError(f"{where}: objective_settings.{f.name}: already a setting of {taken[f.name]}; "
                             "valid: another name (set that one under settings:)")
        if f.env in taken_env:
            raise UsageError(f"{where}: objective_settings.{f.name}.env: {f.env} is already used by "
                             f"{taken_env[f.env]}; valid: another variable name")


# A trial is judged lost when its heartbeat is this many periods old, at the least:
# fewer lets one late write (a busy filesystem, a GC pause) kill a healthy trial.
MIN_STALE_HEARTBEATS = 3


def parse_args(pairs: tuple[str, ...] | list[str], fields_: tuple[Field, ...]) -> dict[str, str]:
    """``--arg NAME=VALUE`` flags (NAME: a field name or its variable) -> {field name: raw}."""
    by_key = {f.name: f for f in fields_} | {f.env: f for f in fields_}
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key.strip() not in by_key:
            valid = ", ".join(f.name for f in fields_) or "none (this objective declares no settings)"
            raise UsageError(f"--arg {pair!r} is not NAME=VALUE with a setting of the objective; valid names: {valid}")
        out[by_key[key.strip()].name] = raw
    return out


def _resolve_fields(
    fields_: tuple[Field, ...], flags: Mapping[str, Any], env: Mapping[str, str],
    config_settings: Mapping[str, Any], config: Path, flag_label: Callable[[Field], str],
) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in fields_:
        set_in_env = [v for v in (f.env, *f.aliases) if env.get(v, "") != ""]
        if len({env[v] for v in set_in_env}) > 1:
            raise UsageError(f"{set_in_env[0]}={env[set_in_env[0]]!r} and {set_in_env[1]}={env[set_in_env[1]]!r} "
                             f"disagree; they set the same thing ({f.name}): valid: set one of them")
        if flags.get(f.name) is not None:
            raw, label, source = flags[f.name], flag_label(f), "flag"
        elif set_in_env:
            var = set_in_env[0]
            raw, label, source = env[var], var, f"env:{var}"
        elif f.name in config_settings:
            raw, label, source = config_settings[f.name], f"{config}: settings.{f.name}", f"config:{config}"
        else:
            values[f.name], sources[f.name] = f.default, "default"
            continue
        values[f.name], sources[f.name] = f.parse(label, raw), source
    return values, sources


def resolve(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_settings: Mapping[str, Any],
    config: Path,
    config_source: str = "default",
    objective_fields: tuple[Field, ...] = (),
    args: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the four layers; validate every value; touch nothing on disk.

    ``flags`` maps hpo's field names to CLI values (None = not given); ``args`` maps
    the objective's field names to ``--arg`` values; ``env`` is the process
    environment; ``config_settings`` is the config's ``settings:`` section, which may
    hold both kinds. ``objective_fields`` is the objective module's ``SETTINGS``.
    """
    known = [f.name for f in FIELDS + objective_fields]
    unknown = sorted(set(config_settings) - set(known))
    if unknown:
        raise UsageError(f"{config}: settings.{unknown[0]} is not a setting; valid: {', '.join(known)}")
    values, sources = _resolve_fields(FIELDS, flags, env, config_settings, config, lambda f: f.flag)
    objective, objective_sources = _resolve_fields(objective_fields, args or {}, env, config_settings, config,
                                                   lambda f: f"--arg {f.name}")
    _check_recovery(values, sources)
    return Settings(**values, config=config, objective=objective, objective_fields=objective_fields,
                    sources={"config": config_source, **sources, **objective_sources})


def _check_recovery(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """Settings that parse one by one but cannot work together."""
    heartbeat, stale = values["heartbeat_seconds"], values["stale_seconds"]
    if stale < MIN_STALE_HEARTBEATS * heartbeat:
        raise UsageError(
            f"HPO_STALE_SECONDS={stale:g} ({sources['stale_seconds']}) is below {MIN_STALE_HEARTBEATS} x "
            f"HPO_HEARTBEAT_SECONDS={heartbeat:g} ({sources['heartbeat_seconds']}): a trial would be judged lost "
            f"while its worker is alive; valid: HPO_STALE_SECONDS >= {MIN_STALE_HEARTBEATS * heartbeat:g}"
        )


def new_launch_id() -> str:
    """A fresh ``HPO_LAUNCH_ID`` for the workers of one ``hpo run`` or ``hpo submit``. Only
    the order in which launches reach the study counts (hpo.worker.sampler_seed), never this text."""
    import uuid

    return uuid.uuid4().hex[:16]


def launch_key(env: Mapping[str, str], host: str, pid: int) -> str:
    """Which launch a worker belongs to: every worker of one ``hpo run``, ``hpo submit``,
    sbatch job or job array shares the key (pure). A SLURM requeue is a launch of its own.

    The study numbers its launches in the order their keys first reach it (0, 1, ...):
    that number, not the key, goes into the sampler seed."""
    if env.get(LAUNCH_ENV):
        key = f"hpo:{env[LAUNCH_ENV]}"
    elif env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID"):
        key = f"slurm:{env.get('SLURM_ARRAY_JOB_ID') or env['SLURM_JOB_ID']}"
    else:
        key = f"worker:{host}_{pid}"  # a lone `hpo worker`
    restarts = (env.get("SLURM_RESTART_COUNT") or "0").strip()
    return key if restarts == "0" else f"{key}+restart{restarts}"


@dataclass(frozen=True)
class WorkerIdentity:
    """Who this worker is, from the launcher's environment (SLURM, submitit or ``hpo run``)."""

    worker_id: str  # names the log file: worker_<worker_id>.log
    # Distinct per worker of a launch (SLURM_PROCID; the array task id, times SLURM_NTASKS
    # plus SLURM_PROCID; HPO_WORKER_RANK of hpo run/submit); offsets the sampler seed.
    rank: int
    host: str
    pid: int
    slurm_job_id: str | None
    slurm_array_job_id: str | None
    slurm_array_task_id: str | None
    slurm_procid: str | None
    visible_gpus: str | None  # CUDA_VISIBLE_DEVICES as given by the launcher
    seed_offset: int = 0  # HPO_SEED_OFFSET: the user's own shift of every seed (default 0)
    launch: str = ""  # launch_key(): the workers of one launch share it

    @classmethod
    def from_env(cls, env: Mapping[str, str], host: str, pid: int) -> "WorkerIdentity":
        job = env.get("SLURM_JOB_ID")
        array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        procid = env.get("SLURM_PROCID")
        local_rank = env.get("HPO_WORKER_RANK")
        if array_job and array_task:
            # One worker per array task; a requeued task keeps its id and appends to its log.
            worker_id = f"{array_job}_{array_task}"
            rank = int(array_task) * int(env.get("SLURM_NTASKS") or 1) + int(procid or 0)
        elif job and local_rank:
            # hpo run inside an allocation (HPO_LOCAL_WORKERS > 1: several workers share the
            # job and the task; their own number tells them and their logs apart), or one
            # worker per job from hpo submit (the job id does; the rank still seeds it).
            shared_task = int(env.get("HPO_LOCAL_WORKERS") or 1) > 1
            worker_id = f"{job}_{procid or 0}" + (f"_{local_rank}" if shared_task else "")
            rank = 1000 * int(procid or 0) + int(local_rank)
        elif job:
            worker_id, rank = f"{job}_{procid or 0}", int(procid or 0)
        else:
            worker_id, rank = f"{host}_{pid}", int(local_rank or 0)
        if procid and array_job and array_task and procid != "0":
            worker_id += f"_{procid}"
        return cls(
            worker_id=re.sub(r"[^A-Za-z0-9_.-]", "-", worker_id),
            rank=rank,
            host=host,
            pid=pid,
            slurm_job_id=job,
            slurm_array_job_id=array_job,
            slurm_array_task_id=array_task,
            slurm_procid=procid,
            visible_gpus=env.get("CUDA_VISIBLE_DEVICES"),
            seed_offset=int_in(0, 2**62)("HPO_SEED_OFFSET", env.get("HPO_SEED_OFFSET") or 0),
            launch=launch_key(env, host, pid),
        )

    def attrs(self) -> dict[str, Any]:
        """User attributes that link a trial back to its worker."""
        out: dict[str, Any] = {"worker": self.worker_id, "host": self.host, "pid": self.pid}
        for key in ("slurm_job_id", "slurm_array_job_id", "slurm_array_task_id", "slurm_procid"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["gpu"] = self.visible_gpus if self.visible_gpus not in (None, "") else "none"
        return out

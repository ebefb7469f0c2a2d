"""Typed settings, read in one place.

Precedence, resolved in :func:`resolve` and nowhere else:
built-in defaults < the study config's ``settings:`` section < environment < CLI flags.

Two tables, one mechanism:

- :data:`FIELDS`: hpo's own settings (budgets, sampler, folders, recovery), the
  same for every objective;
- an objective's own settings, declared by the objective's module as
  ``SETTINGS: tuple[Field, ...]`` (PhysAE's sizes, batch size and stage epochs live
  in :mod:`hpo.physae.settings`; a :class:`~hpo.config.fields.Field` each). They resolve with the same precedence and
  validation, reach the objective as ``ctx.options`` and are set on the command line
  with ``--arg NAME=VALUE``. A field with ``fixes="A.epochs"`` fixes that search-space
  parameter when set (instead of sampling it): the generic layer knows no stage names.

Every field is declared once (its environment variable, parser, default and help);
the CLI builds its flags from the same table, ``hpo config`` prints it, and
launchers pass resolved settings to workers with :meth:`Settings.to_env`.
Nothing below this module reads the process environment for these values.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from hpo.config.fields import Field, boolean, choice, float_in, int_in, optional, positive_float, text
from hpo.config.identity import Launcher
from hpo.config.search import PRUNER_NAMES, SAMPLER_NAMES
from hpo.errors import UsageError

BUDGET_COUNTS = ("finished", "complete")
TRACKER_NAMES = ("tensorboard", "mlflow", "wandb")  # HPO_TRACKERS (hpo.worker.trackers)
JOURNAL_LOCKS = ("auto", "file", "fcntl")  # see hpo.journal.locking
DEVICES_HELP = "auto, cpu, cuda or cuda:N"
# How a time-pruned trial's reason starts. Ended COMPLETE (``time_pruning_cap``), its values are
# made up, and ``HPO_BUDGET_COUNTS=complete`` does not count it (as CODES counts).
TIME_PRUNED = "time-pruned:"
RESULTS_DIR = Path("results")  # where hpo export, hpo plot and the end-of-study export write: results/<study>/
TRIAL_BUDGET_ATTR = "budget"  # the trial user attribute of its budgets (Settings.budgets; hpo.study.budgets)

_STUDY_RE = re.compile(r"^[^\x00-\x1f/\\]{1,128}$")


def _trackers(name: str, raw: Any) -> str:
    """A comma list of tracker names, normalised (``"tensorboard,mlflow"``; ``""``: none)."""
    names = [n.strip().lower() for n in str(raw).split(",") if n.strip()]
    bad = [n for n in names if n not in TRACKER_NAMES]
    if bad or len(set(names)) != len(names):
        raise UsageError(f"{name}={raw!r} is not valid; valid: a comma list of distinct names among "
                         f"{', '.join(TRACKER_NAMES)}, or empty for none")
    return ",".join(names)


def near_misses(env: Mapping[str, str], fields_: tuple[Field, ...]) -> list[tuple[str, str]]:
    """``(variable, the setting's variable it resembles)`` for each variable of ``env`` that
    looks like a misspelt setting (``MAX_TRIAL`` for ``MAX_TRIALS``): same first word as one
    of ours and close to it, yet none. A typo is otherwise silently ignored (pure)."""
    import difflib

    known = {v for f in fields_ for v in (f.env, *f.aliases)} | {CONFIG_ENV}
    heads = {v.split("_", 1)[0] + "_" for v in known if "_" in v}
    out = []
    for name in sorted(env):
        if name in known or not name.startswith(tuple(heads)):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.85)
        if close:
            out.append((name, close[0]))
    return out


def is_capped(state: str, reason: Any) -> bool:
    """Whether a trial ended COMPLETE with values ``time_pruning_cap`` made up."""
    return state == "COMPLETE" and isinstance(reason, str) and reason.startswith(TIME_PRUNED)


def parse_study_name(name: str, raw: Any) -> str:
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


def writable_directory(name: str, raw: Any) -> Path:
    """A directory we may create or write into. Checked, never created, here."""
    text = str(raw)
    if not text.strip() or "\x00" in text:
        raise UsageError(f"{name}={raw!r} is not a directory path; valid: a writable directory")
    path = Path(text).expanduser()
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # exists() is False through a loop or a missing target
            raise UsageError(f"{name}={raw!r} is not usable: {str(probe)!r} is a symbolic link that leads nowhere "
                             "(a loop, or a missing target); valid: a writable directory")
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


FIELDS: tuple[Field, ...] = (
    Field("max_trials", "MAX_TRIALS", int_in(1, 10_000_000), 100, "study-wide finished trials (COMPLETE+PRUNED)",
          aliases=("N_TRIALS",)),
    Field("trials_per_worker", "TRIALS_PER_WORKER", optional(int_in(1, 10_000_000)), None, "cap per worker"),
    Field("timeout_seconds", "TIMEOUT_SECONDS", optional(positive_float), None, "a worker's wall-time budget"),
    Field("optuna_seed", "OPTUNA_SEED", int_in(0, 2**31 - 1), 42, "base sampler seed (+ worker rank)"),
    Field("sampler", "OPTUNA_SAMPLER", choice(SAMPLER_NAMES), "tpe", "sampler"),
    Field("pruner", "OPTUNA_PRUNER", choice(PRUNER_NAMES), "hyperband", "pruner"),
    Field("journal_dir", "JOURNAL_DIR", writable_directory, Path("optuna_journal"), "journal folder (shared filesystem)"),
    Field("study_name", "STUDY_NAME", parse_study_name, "physae", "study name"),
    Field("log_dir", "LOG_DIR", writable_directory, Path("optuna_logs"), "worker logs"),
    Field("trial_output", "TRIAL_OUTPUT", writable_directory, Path("optuna_runs"), "per-trial run directories"),
    Field("device", "HPO_DEVICE", _device, "auto", f"training device: {DEVICES_HELP}"),
    Field("data_seed", "DATA_SEED", int_in(0, 2**31 - 1), 0, "seed of the generated dataset"),
    Field("train_seed", "TRAIN_SEED", int_in(0, 2**31 - 1), 0, "seed of weight init and batch order"),
    Field("max_retries", "HPO_MAX_RETRIES", int_in(0, 100), 2, "retries of a lost or preempted trial"),
    # At least 0.1 s: each beat replaces a file on the shared filesystem, per running trial.
    Field("heartbeat_seconds", "HPO_HEARTBEAT_SECONDS", float_in(0.1, 86400), 10.0, "heartbeat period of running trials"),
    Field("stale_seconds", "HPO_STALE_SECONDS", positive_float, 60.0, "heartbeat age after which a trial is lost"),
    Field("hang_seconds", "HPO_HANG_SECONDS", optional(positive_float), None,
          "a trial that showed life (ctx.report, check_stop, log_metrics, set_user_attr) and then none for this long "
          "is hung: its worker exits 70 and the trial is reaped and retried elsewhere; unset: never (set it above "
          "your longest gap between two reports)"),
    Field("max_failures", "HPO_MAX_FAILURES", int_in(1, 1_000_000), 10,
          "a worker stops after this many failed trials in a row (a broken objective)"),
    Field("storage", "HPO_STORAGE", _storage_url, "", "'' = the journal file; or sqlite:///… / postgresql://…"),
    Field("trial_timeout_seconds", "HPO_TRIAL_TIMEOUT_SECONDS", optional(positive_float), None,
          "per-trial time budget; a trial past it is stopped (PRUNED)", budget=True),
    Field("time_pruning_warmup", "HPO_TIME_PRUNING_WARMUP", _non_negative_int, 0,
          "0 = off; else after W completed trials, stop trials slower than mean + std"),
    Field("budget_counts", "HPO_BUDGET_COUNTS", choice(BUDGET_COUNTS), "finished",
          "what MAX_TRIALS counts: finished (COMPLETE + PRUNED) or complete (valid trials only: a pruned or capped one "
          "frees its slot)"),
    Field("trackers", "HPO_TRACKERS", _trackers, "",
          f"experiment trackers, each trial one run: a comma list of {', '.join(TRACKER_NAMES)} (pip install "
          "'hpo[trackers]'); empty: none"),
    Field("mix_budgets", "HPO_MIX_BUDGETS", boolean, False,
          "run although the study's trials ran with other budgets (the objective's budget settings: epochs, "
          "dataset sizes); recorded in the study, and each trial records its own"),
    Field("retry_interrupted", "HPO_RETRY_INTERRUPTED", boolean, False,
          "retry a trial ended by Ctrl-C/SIGINT like a preempted one (a lost warm start runs again)"),
    Field("reuse_results", "HPO_REUSE_RESULTS", boolean, False,
          "keep COMPLETE trials in $TRIAL_OUTPUT/runs/p_<hash>/r_<hash>/ and reuse them for the same run"),
    Field("export_at_end", "HPO_EXPORT_AT_END", boolean, True,
          "when the study has its trials, the worker that sees it first writes results/<study>/ (exports and "
          "figures) as it stops; no other worker waits"),
    Field("flush_seconds", "HPO_FLUSH_SECONDS", float_in(0, 3600), 30.0,
          "a running trial's reports and attributes reach the journal in one append at most this late (0: each at "
          "once); its parameters, start and end are written at once"),
    Field("snapshot_mb", "HPO_SNAPSHOT_MB", float_in(0, 1_000_000), 16.0,
          "once the journal is past this many MB (and twice what the last snapshot covers), a worker compacts it "
          "into <journal>.snapshot between two trials, so joining workers replay one record per trial; 0: never"),
    Field("journal_lock", "HPO_JOURNAL_LOCK", choice(JOURNAL_LOCKS), "auto",
          "the journal's lock: file (<journal>.lock), fcntl (a record lock: on local disk, or where `hpo doctor "
          "--prove-lock` proved it), auto (the journal's own; a new one: fcntl on local disk or where proved); one "
          "journal keeps one"),
    Field("seed_offset", "HPO_SEED_OFFSET", int_in(0, 2**62), 0,
          "your own shift of every sampler seed (an independent replicate)"),
    Field("worker_rank", "HPO_WORKER_RANK", optional(int_in(0, 1_000_000)), None,
          "this worker's number in its launch (set by hpo run and hpo submit)", internal=True),
    Field("local_workers", "HPO_LOCAL_WORKERS", int_in(1, 1_000_000), 1,
          "how many workers hpo run started in this task (set by hpo run)", internal=True),
    Field("launch_id", "HPO_LAUNCH_ID", optional(text), None,
          "one id per launch, shared by its workers (set by hpo run and hpo submit)", internal=True),
    Field("gpu_sharers", "HPO_GPU_SHARERS", int_in(1, 1_000_000), 1,
          "how many workers their launch put on this worker's GPU (set by hpo run --workers-per-gpu and hpo "
          "submit --workers-per-gpu): more on the card is warned about", internal=True),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}
_INTERNAL = frozenset(f.name for f in FIELDS if f.internal)
CONFIG_ENV = "HPO_CONFIG"


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
    hang_seconds: float | None
    max_failures: int
    storage: str
    trial_timeout_seconds: float | None
    time_pruning_warmup: int
    budget_counts: str
    trackers: str
    mix_budgets: bool
    retry_interrupted: bool
    reuse_results: bool
    export_at_end: bool
    flush_seconds: float
    snapshot_mb: float
    journal_lock: str
    seed_offset: int
    worker_rank: int | None
    local_workers: int
    launch_id: str | None
    gpu_sharers: int
    config: Path
    # The objective's own settings (its module's SETTINGS), resolved like the above.
    objective: Mapping[str, Any] = field(default_factory=dict)
    objective_fields: tuple[Field, ...] = field(default=(), compare=False, repr=False)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def spec(self) -> "StudySpec":
        """What sharing this study reads of the settings (:class:`StudySpec`)."""
        return StudySpec(self.study_name, self.journal_dir, self.storage, self.max_trials, self.budget_counts,
                         self.heartbeat_seconds, self.stale_seconds, self.max_retries, self.sampler, self.pruner,
                         self.journal_lock, self.snapshot_mb, self.budgets(), self.mix_budgets)

    @property
    def launcher(self) -> Launcher:
        """What this worker's launcher told it (its rank, its launch)."""
        return Launcher(self.worker_rank, self.local_workers, self.launch_id, self.gpu_sharers)

    @property
    def journal_path(self) -> Path:
        return self.spec.journal_path

    @property
    def storage_label(self) -> str:
        return self.spec.storage_label

    @property
    def jobs_path(self) -> Path:
        return self.spec.jobs_path

    @property
    def results_dir(self) -> Path:
        """``results/$STUDY_NAME``: where ``hpo export``, ``hpo plot`` and the end-of-study export write."""
        return RESULTS_DIR / self.study_name

    @property
    def study_dir(self) -> Path:
        """``$TRIAL_OUTPUT/$STUDY_NAME``: run directories of this study's trials."""
        return self.trial_output / self.study_name

    def fixed_params(self) -> dict[str, Any]:
        """Search-space parameters fixed by a setting instead of sampled (the objective's
        fields declared with ``fixes=``, e.g. PhysAE's ``STAGEA_EPOCHS`` -> ``A.epochs``)."""
        return {f.fixes: self.objective[f.name] for f in self.objective_fields
                if f.fixes is not None and self.objective.get(f.name) is not None}

    @property
    def tracker_names(self) -> tuple[str, ...]:
        """``HPO_TRACKERS`` as a tuple of names (none when empty)."""
        return tuple(self.trackers.split(",")) if self.trackers else ()

    def budgets(self) -> dict[str, Any]:
        """The budgets each trial runs with, by environment variable: the objective's settings
        declared ``budget`` (``{"STAGEA_EPOCHS": 2, "N_TRAIN": 50000}``; None: unset) and hpo's
        own when set (``HPO_TRIAL_TIMEOUT_SECONDS``: seed 003's budget is a time)."""
        own = {f.env: self.value(f) for f in FIELDS if f.budget and self.value(f) is not None}
        return {**own, **{f.env: self.objective.get(f.name) for f in self.objective_fields if f.budget}}

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
        """Every setting by name (the objective's beside hpo's), as ``settings.json`` records
        it; not those a launcher gives each worker (its rank, its launch): what a trial ran
        with is the same for every worker of a launch."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("sources", "objective", "objective_fields") or f.name in _INTERNAL:
                continue
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        out.update(self.objective)
        return out


@dataclass(frozen=True)
class StudySpec:
    """What sharing one study reads of the settings, and nothing else: where it lives, its
    budget, the ages the reaper judges by, its sampler and pruner. The study layer
    (:mod:`hpo.study`) and the reaper get this, not a worker's whole :class:`Settings`."""

    study_name: str
    journal_dir: Path
    storage: str  # '' = the journal file; else an RDB URL
    max_trials: int
    budget_counts: str
    heartbeat_seconds: float
    stale_seconds: float
    max_retries: int
    sampler: str
    pruner: str
    journal_lock: str = "auto"
    snapshot_mb: float = 16.0
    budgets: Mapping[str, Any] = field(default_factory=dict)  # Settings.budgets(): each trial's
    mix_budgets: bool = False  # HPO_MIX_BUDGETS: run although the study's trials ran with other budgets

    @property
    def counted_states(self) -> frozenset[str]:
        """The trial states ``MAX_TRIALS`` counts (``HPO_BUDGET_COUNTS``)."""
        return frozenset({"COMPLETE"} if self.budget_counts == "complete" else {"COMPLETE", "PRUNED"})

    def counted(self, states: Mapping[str, int], capped: int) -> int:
        """The trials ``MAX_TRIALS`` counts, from the study's counts by state name and its
        ``capped`` COMPLETE trials (:func:`is_capped`): valid trials only under ``complete``,
        so a capped one frees its slot as a pruned one does."""
        finished = sum(n for state, n in states.items() if state in self.counted_states)
        return finished - capped if self.budget_counts == "complete" else finished

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
    def slots_path(self) -> Path:
        """``<journal>.slots``: the slot lock's file, in JOURNAL_DIR with any storage (all workers share it)."""
        return Path(f"{self.journal_path}.slots")

    @property
    def beats_dir(self) -> Path:
        """``$JOURNAL_DIR/<study>.heartbeats/``: one beat file per running trial, beside the journal."""
        return self.journal_dir / f"{self.study_name}.heartbeats"


def shell_word(text: str) -> str:
    """``text`` as one shell word, every special character backslash-escaped (bash's ``%q``)."""
    return re.sub(r"([^A-Za-z0-9_./:=+,@%^-])", r"\\\1", text) if text else "''"


def default_config_path() -> Path:
    """``configs/physae.yaml`` of the current folder, else of the checkout hpo runs from."""
    local = Path("configs/physae.yaml")
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[2] / "configs" / "physae.yaml"


def config_path(flags: Mapping[str, Any], env: Mapping[str, str]) -> tuple[Path, str]:
    """Which study config to read, and where that choice came from."""
    if flags.get("config") is not None:
        return _config_path("--config", flags["config"]), "flag:--config"
    if env.get(CONFIG_ENV):
        return _config_path(CONFIG_ENV, env[CONFIG_ENV]), f"env:{CONFIG_ENV}"
    return _config_path("default config", str(default_config_path())), "default"


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
            key = f.name if f.name == "study_name" else f"settings.{f.name}"  # study_name is a top-level key
            raw, label, source = config_settings[f.name], f"{config}: {key}", f"config:{config}"
            if raw is None:  # YAML's null (`key:` or `key: null`): str() would make it the text "None"
                if f.default is not None:
                    raise UsageError(f"{label} is null (empty); valid: a value, or no {f.name} key for the "
                                     f"default ({f.default})")
                values[f.name], sources[f.name] = None, source  # the setting's own "unset"
                continue
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
    known = [f.name for f in FIELDS + objective_fields if f.name not in _INTERNAL]
    unknown = sorted(set(config_settings) - set(known))
    if unknown:
        why = ("is set by hpo's launchers for each worker, not in a config" if unknown[0] in _INTERNAL
               else "is not a setting")
        raise UsageError(f"{config}: settings.{unknown[0]} {why}; valid: {', '.join(known)}")
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
    hang = values["hang_seconds"]
    if hang is not None and hang < 2 * heartbeat:
        raise UsageError(
            f"HPO_HANG_SECONDS={hang:g} ({sources['hang_seconds']}) is below 2 x HPO_HEARTBEAT_SECONDS={heartbeat:g} "
            f"({sources['heartbeat_seconds']}): the heartbeat, which watches for it, could not tell; valid: unset, "
            f"or HPO_HANG_SECONDS >= {2 * heartbeat:g} (and above your longest epoch)"
        )



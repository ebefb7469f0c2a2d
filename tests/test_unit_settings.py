"""Settings resolution (hpo/config/settings.py) and its parsers (hpo/config/fields.py), in
process: every bound, every precedence step and every message a user reads when a value is
refused (the variable, the value, what is valid). A wrong bound or source here silently
runs a study with settings nobody asked for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hpo.config import fields as F
from hpo.config import settings as S
from hpo.config.fields import Field, declared_field
from hpo.config.settings import FIELDS, Settings, StudySpec, resolve
from hpo.errors import UsageError

CONFIG = Path("configs/physae.yaml")
COUNT = Field("count", "COUNT", F.int_in(1, 9), 3, "a count")
LABEL = Field("label", "LABEL", F.text, None, "a label", fixes="A.label")


def refused(call: Any, *args: Any) -> str:
    """The message of the UsageError that ``call(*args)`` raises."""
    with pytest.raises(UsageError) as err:
        call(*args)
    return str(err.value)


def settings(env: dict[str, str] | None = None, flags: dict[str, Any] | None = None,
             config: dict[str, Any] | None = None, objective: tuple[Field, ...] = (),
             args: dict[str, Any] | None = None, source: str = "default") -> Settings:
    return resolve(flags or {}, env or {}, config or {}, CONFIG, source, objective, args)


# -- the parsers of fields.py ------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "value"), [("1", 1), (" 9 ", 9), (5, 5), ("-0", 0)])
def test_int_in_takes_integers_within_its_bounds(raw: Any, value: int) -> None:
    assert F.int_in(0, 9)("N", raw) == value


@pytest.mark.parametrize(("raw", "message"), [
    ("10", "N='10' is out of range; valid: an integer from 0 to 9"),
    ("-1", "N='-1' is out of range; valid: an integer from 0 to 9"),
    ("1.5", "N='1.5' is not an integer; valid: an integer from 0 to 9"),
    ("", "N='' is not an integer; valid: an integer from 0 to 9"),
])
def test_int_in_refuses_with_its_bounds(raw: str, message: str) -> None:
    assert refused(F.int_in(0, 9), "N", raw) == message


@pytest.mark.parametrize("raw", [None, "", "  ", "none", "None", " NONE ", "unlimited", "Unlimited"])
def test_optional_reads_unset_words_as_none(raw: Any) -> None:
    assert F.optional(F.int_in(1, 5))("N", raw) is None


def test_optional_parses_anything_else_with_its_inner_parser() -> None:
    assert F.optional(F.int_in(1, 5))("N", " 4") == 4
    assert refused(F.optional(F.int_in(1, 5)), "N", "7") == "N='7' is out of range; valid: an integer from 1 to 5"


@pytest.mark.parametrize(("raw", "value"), [("2.5", 2.5), (" 1e-3 ", 0.001), (3, 3.0)])
def test_positive_float(raw: Any, value: float) -> None:
    assert F.positive_float("T", raw) == value


@pytest.mark.parametrize(("raw", "message"), [
    ("0", "T='0' is out of range; valid: a positive number of seconds"),
    ("-2", "T='-2' is out of range; valid: a positive number of seconds"),
    ("inf", "T='inf' is out of range; valid: a positive number of seconds"),
    ("nan", "T='nan' is out of range; valid: a positive number of seconds"),
    ("soon", "T='soon' is not a number; valid: a positive number of seconds"),
])
def test_positive_float_refuses(raw: str, message: str) -> None:
    assert refused(F.positive_float, "T", raw) == message


@pytest.mark.parametrize(("low", "high", "raw", "value"), [
    (0.0, 1.0, "0", 0.0), (0.0, 1.0, "1", 1.0), (0.0, 1.0, " 0.5 ", 0.5),
    (None, 1.0, "-1e9", -1e9), (0.0, None, "1e9", 1e9), (None, None, "-3", -3.0),
])
def test_float_in_takes_its_closed_range(low: float | None, high: float | None, raw: str, value: float) -> None:
    assert F.float_in(low, high)("X", raw) == value


@pytest.mark.parametrize(("low", "high", "raw", "message"), [
    (0.0, 1.0, "1.5", "X='1.5' is out of range; valid: a number >= 0 and <= 1"),
    (0.0, 1.0, "-0.5", "X='-0.5' is out of range; valid: a number >= 0 and <= 1"),
    (0.5, None, "0", "X='0' is out of range; valid: a number >= 0.5"),
    (None, 2.0, "3", "X='3' is out of range; valid: a number <= 2"),
    (None, None, "inf", "X='inf' is out of range; valid: a number"),
    (None, None, "nan", "X='nan' is out of range; valid: a number"),
    (0.0, 1.0, "half", "X='half' is not a number; valid: a number >= 0 and <= 1"),
])
def test_float_in_refuses_and_says_its_range(low: float | None, high: float | None, raw: str, message: str) -> None:
    assert refused(F.float_in(low, high), "X", raw) == message


def test_one_of_compares_as_text_and_returns_the_choice_itself() -> None:
    parse = F.one_of((1, "sgld", True))
    assert parse("M", " 1 ") == 1 and isinstance(parse("M", "1"), int)
    assert parse("M", "sgld") == "sgld" and parse("M", "True") is True
    assert refused(parse, "M", "SGLD") == "M='SGLD' is not valid; valid: 1, sgld, True"


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", " yes ", "on", True])
def test_boolean_true(raw: Any) -> None:
    assert F.boolean("B", raw) is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", " off", False])
def test_boolean_false(raw: Any) -> None:
    assert F.boolean("B", raw) is False


def test_boolean_refuses_anything_else() -> None:
    assert refused(F.boolean, "B", "2") == "B='2' is not a boolean; valid: true, false, 1, 0, yes, no, on, off"


def test_text_and_choice() -> None:
    assert F.text("L", 12) == "12" and F.text("L", " a ") == " a "
    assert F.choice(("tpe", "random"))("S", " TPE ") == "tpe"
    assert refused(F.choice(("tpe", "random")), "S", "bayes") == "S='bayes' is not valid; valid: tpe, random"


def test_a_field_is_set_on_the_command_line_by_its_dashed_name() -> None:
    assert S.FIELD_BY_NAME["trial_timeout_seconds"].flag == "--trial-timeout-seconds"
    field = Field("x", "X", F.text, None, "")
    assert (field.fixes, field.aliases, field.internal) == (None, (), False)


# -- objective_settings: declared in a config -------------------------------------------------
def test_a_declared_int_parses_its_bounds_and_its_default() -> None:
    field = declared_field("c.yaml", "n_steps", {"type": "int", "default": "800", "low": 1, "high": 1000,
                                                 "help": "steps"})
    assert (field.name, field.env, field.default, field.help, field.fixes) == ("n_steps", "N_STEPS", 800, "steps", None)
    assert field.parse("N_STEPS", "1000") == 1000
    assert refused(field.parse, "N_STEPS", "0") == "N_STEPS='0' is out of range; valid: an integer from 1 to 1000"
    assert refused(field.parse, "N_STEPS", "none") == "N_STEPS='none' is not an integer; valid: an integer from 1 to 1000"


def test_a_declared_int_without_bounds_takes_any_64_bit_integer() -> None:
    parse = declared_field("c.yaml", "n", {"type": "int", "default": 0}).parse
    assert parse("N", str(-(2**63))) == -(2**63) and parse("N", str(2**63 - 1)) == 2**63 - 1
    assert refused(parse, "N", str(2**63)).endswith(f"valid: an integer from {-(2**63)} to {2**63 - 1}")
    assert refused(parse, "N", str(-(2**63) - 1)).endswith(f"valid: an integer from {-(2**63)} to {2**63 - 1}")


def test_a_declared_int_with_one_bound() -> None:
    assert declared_field("c", "n", {"type": "int", "default": 5, "low": 5}).parse("N", "5") == 5
    assert declared_field("c", "n", {"type": "int", "default": 5, "high": 5}).parse("N", "5") == 5
    assert refused(declared_field("c", "n", {"type": "int", "default": 5, "high": 5}).parse, "N", "6").endswith(
        f"from {-(2**63)} to 5")
    assert refused(declared_field("c", "n", {"type": "int", "default": 5, "low": 5}).parse, "N", "4").endswith(
        f"from 5 to {2**63 - 1}")


def test_a_declared_field_of_each_type() -> None:
    assert declared_field("c", "lr", {"type": "float", "default": 0.1, "low": 0, "high": 1}).parse("LR", "1") == 1.0
    assert refused(declared_field("c", "lr", {"type": "float", "default": 0.1, "low": 0, "high": 1}).parse,
                   "LR", "2") == "LR='2' is out of range; valid: a number >= 0 and <= 1"
    assert declared_field("c", "fast", {"type": "bool", "default": "yes"}).default is True
    assert declared_field("c", "tag", {"type": "str", "default": 7}).default == "7"
    method = declared_field("c", "method", {"type": "choice", "choices": ["sgld", "hmc"], "default": "hmc",
                                            "env": "METHOD_X"})
    assert (method.env, method.default, method.parse("M", "sgld")) == ("METHOD_X", "hmc", "sgld")


def test_a_declared_field_without_help_has_an_empty_one() -> None:
    assert declared_field("c", "n", {"type": "int", "default": 1}).help == ""


def test_a_declared_field_without_default_value_is_optional() -> None:
    field = declared_field("c", "limit", {"type": "int", "default": None, "low": 1})
    assert field.default is None and field.parse("LIMIT", "") is None and field.parse("LIMIT", "3") == 3
    # with a default, "none" is a bad value, not "unset"
    assert refused(declared_field("c", "tag", {"type": "bool", "default": True}).parse, "T", "none") == (
        "T='none' is not a boolean; valid: true, false, 1, 0, yes, no, on, off")


@pytest.mark.parametrize(("name", "spec", "message"), [
    ("Bad", {"type": "int", "default": 1}, "c.yaml: objective_settings.Bad: not a valid setting name; "
     "valid: lower-case letters, digits and _"),
    ("9x", {"type": "int", "default": 1}, "c.yaml: objective_settings.9x: not a valid setting name; "
     "valid: lower-case letters, digits and _"),
    ("x-y", {"type": "int", "default": 1}, "c.yaml: objective_settings.x-y: not a valid setting name; "
     "valid: lower-case letters, digits and _"),
    (5, {"type": "int", "default": 1}, "c.yaml: objective_settings.5: not a valid setting name; "
     "valid: lower-case letters, digits and _"),
    ("x", [1, 2], "c.yaml: objective_settings.x: must be a mapping with type, default, env, low, high, choices, help, budget"),
    ("x", {"type": "int", "default": 1, "lo": 0, "zz": 1},
     "c.yaml: objective_settings.x.lo: unknown key; valid: type, default, env, low, high, choices, help, budget"),
    ("x", {"default": 1}, "c.yaml: objective_settings.x.type: None is not valid; valid: int, float, str, bool, choice"),
    ("x", {"type": "integer", "default": 1},
     "c.yaml: objective_settings.x.type: 'integer' is not valid; valid: int, float, str, bool, choice"),
    ("x", {"type": "int", "default": 1, "env": "lower"},
     "c.yaml: objective_settings.x.env: 'lower' is not an environment variable name; valid: A-Z, 0-9 and _"),
    ("x", {"type": "int", "default": 1, "env": "1X"},
     "c.yaml: objective_settings.x.env: '1X' is not an environment variable name; valid: A-Z, 0-9 and _"),
    ("x", {"type": "int", "default": 1, "env": 3},
     "c.yaml: objective_settings.x.env: 3 is not an environment variable name; valid: A-Z, 0-9 and _"),
    ("x", {"type": "str", "default": "a", "low": 1},
     "c.yaml: objective_settings.x.low: 1 is not valid; valid: a number, for type int or float"),
    ("x", {"type": "int", "default": 1, "high": True},
     "c.yaml: objective_settings.x.high: True is not valid; valid: a number, for type int or float"),
    ("x", {"type": "float", "default": 1, "high": "2"},
     "c.yaml: objective_settings.x.high: '2' is not valid; valid: a number, for type int or float"),
    ("x", {"type": "int", "default": 1, "low": 0.5}, "c.yaml: objective_settings.x: low/high must be integers for type int"),
    ("x", {"type": "int", "default": 1, "high": 2.5}, "c.yaml: objective_settings.x: low/high must be integers for type int"),
    ("x", {"type": "choice", "default": "a"}, "c.yaml: objective_settings.x.choices: must be a non-empty list for type choice"),
    ("x", {"type": "choice", "default": "a", "choices": []},
     "c.yaml: objective_settings.x.choices: must be a non-empty list for type choice"),
    ("x", {"type": "choice", "default": "a", "choices": "ab"},
     "c.yaml: objective_settings.x.choices: must be a non-empty list for type choice"),
    ("x", {"type": "int"}, "c.yaml: objective_settings.x.default: missing; valid: a value of type int"),
    ("x", {"type": "int", "default": 0, "low": 1},
     "c.yaml: objective_settings.x.default=0 is out of range; valid: an integer from 1 to 9223372036854775807"),
])
def test_a_bad_declaration_names_the_file_the_key_and_what_is_valid(name: Any, spec: Any, message: str) -> None:
    assert refused(declared_field, "c.yaml", name, spec) == message


def test_a_declared_int_accepts_whole_float_bounds() -> None:
    assert declared_field("c", "x", {"type": "int", "default": 2, "low": 1.0, "high": 3.0}).parse("X", "3") == 3


# -- the parsers of settings.py ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "x" * 128, "my study.v2", "a-b", "a.b", "日本"])
def test_study_names_that_are_valid(name: str) -> None:
    assert S.parse_study_name("STUDY_NAME", name) == name


@pytest.mark.parametrize("name", ["", "x" * 129, "a/b", "a\\b", "a..b", ".hidden", "-x", " a", "a ", "a\tb", "a\x00"])
def test_study_names_that_could_escape_the_journal_folder_are_refused(name: str) -> None:
    assert refused(S.parse_study_name, "STUDY_NAME", name) == (
        f"STUDY_NAME={name!r} is not a valid study name; valid: 1-128 characters, no '/', '\\', '..', "
        "control characters, leading '.' or '-', or surrounding spaces")


@pytest.mark.parametrize(("raw", "device"), [("auto", "auto"), (" CPU ", "cpu"), ("cuda", "cuda"),
                                             ("CUDA:12", "cuda:12")])
def test_devices(raw: str, device: str) -> None:
    assert S._device("HPO_DEVICE", raw) == device


@pytest.mark.parametrize("raw", ["tpu", "cuda:", "cuda:x", "cuda:1 2", "xcuda", "cuda:1x", ""])
def test_bad_devices(raw: str) -> None:
    assert refused(S._device, "HPO_DEVICE", raw) == f"HPO_DEVICE={raw!r} is not a device; valid: auto, cpu, cuda or cuda:N"


def test_a_directory_is_checked_never_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    assert S.writable_directory("LOG_DIR", str(target)) == target and not (tmp_path / "a").exists()
    assert S.writable_directory("LOG_DIR", tmp_path) == tmp_path


def test_a_directory_path_expands_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert S.writable_directory("LOG_DIR", "~/logs") == tmp_path / "logs"


@pytest.mark.parametrize("raw", ["", "  ", "a\x00b"])
def test_an_empty_directory_is_refused(raw: str) -> None:
    assert refused(S.writable_directory, "JOURNAL_DIR", raw) == (
        f"JOURNAL_DIR={raw!r} is not a directory path; valid: a writable directory")


def test_a_directory_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    raw = str(tmp_path / "f" / "j" / "k")
    assert refused(S.writable_directory, "JOURNAL_DIR", raw) == (
        f"JOURNAL_DIR={raw!r} is not usable: {str(tmp_path / 'f')!r} exists and is not a directory")
    assert refused(S.writable_directory, "JOURNAL_DIR", str(tmp_path / "f")) == (
        f"JOURNAL_DIR={str(tmp_path / 'f')!r} is not usable: {str(tmp_path / 'f')!r} exists and is not a directory")


def test_an_unwritable_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked on the nearest folder that exists, for writing and entering both."""
    asked: list[tuple[str, int]] = []

    def access(path: Any, mode: int) -> bool:
        asked.append((str(path), mode))
        return False

    monkeypatch.setattr(S.os, "access", access)
    raw = str(tmp_path / "new" / "deeper")
    assert refused(S.writable_directory, "TRIAL_OUTPUT", raw) == (
        f"TRIAL_OUTPUT={raw!r} is not writable (checked {str(tmp_path)!r}); valid: a writable directory")
    assert asked == [(str(tmp_path), os.W_OK | os.X_OK)]


def test_a_relative_directory_is_judged_by_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    asked: list[str] = []
    monkeypatch.setattr(S.os, "access", lambda path, mode: asked.append(str(path)) or True)
    assert S.writable_directory("LOG_DIR", "x/y") == Path("x/y") and asked == ["."]


@pytest.mark.parametrize(("raw", "storage"), [
    ("", ""), ("journal", ""), (" journal ", ""), ("sqlite:///a.db", "sqlite:///a.db"),
    (" postgresql://u:p@h/db ", "postgresql://u:p@h/db"), ("postgresql+psycopg2://h/db", "postgresql+psycopg2://h/db"),
    ("mysql://h/db", "mysql://h/db"), ("mysql+pymysql://h/db", "mysql+pymysql://h/db"),
])
def test_storages(raw: str, storage: str) -> None:
    assert S._storage_url("HPO_STORAGE", raw) == storage


@pytest.mark.parametrize("raw", ["redis://h", "sqlite://a.db", "journals", "file.journal"])
def test_bad_storages_list_the_schemes(raw: str) -> None:
    assert refused(S._storage_url, "HPO_STORAGE", raw) == (
        f"HPO_STORAGE={raw!r} is not a storage; valid: journal (default), or a URL starting with sqlite:///, "
        "postgresql://, postgresql+psycopg2://, mysql://, mysql+pymysql://")


def test_non_negative_int_bounds() -> None:
    assert S._non_negative_int("W", "0") == 0 and S._non_negative_int("W", "1000000") == 1_000_000
    assert refused(S._non_negative_int, "W", "-1") == "W='-1' is out of range; valid: an integer from 0 to 1000000"
    assert refused(S._non_negative_int, "W", "1000001").endswith("from 0 to 1000000")


# -- which config file --------------------------------------------------------------------------
def test_the_config_comes_from_the_flag_then_the_environment_then_the_default(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("x"), b.write_text("x")
    assert S.config_path({"config": str(a)}, {"HPO_CONFIG": str(b)}) == (a, "flag:--config")
    assert S.config_path({"config": None}, {"HPO_CONFIG": str(b)}) == (b, "env:HPO_CONFIG")
    assert S.config_path({}, {"HPO_CONFIG": ""}) == (S.default_config_path(), "default")


def test_a_missing_config_names_where_it_came_from(tmp_path: Path) -> None:
    missing = str(tmp_path / "no.yaml")
    assert refused(S.config_path, {"config": missing}, {}) == (
        f"--config={missing!r}: no such config file; valid: a YAML study config, e.g. configs/physae.yaml")
    assert refused(S.config_path, {}, {"HPO_CONFIG": missing}).startswith(f"HPO_CONFIG={missing!r}: no such")
    assert refused(S._config_path, "X", str(tmp_path)).startswith("X=")  # a folder is not a config file


def test_the_default_config_is_the_current_folders_else_the_checkouts(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    checkout = Path(S.__file__).resolve().parents[2] / "configs" / "physae.yaml"
    assert S.default_config_path() == checkout
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "physae.yaml").write_text("x")
    assert S.default_config_path() == Path("configs/physae.yaml")


def test_a_missing_default_config_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "default_config_path", lambda: tmp_path / "physae.yaml")
    assert refused(S.config_path, {}, {}) == (f"default config={str(tmp_path / 'physae.yaml')!r}: no such config "
                                              "file; valid: a YAML study config, e.g. configs/physae.yaml")


def test_a_directory_whose_folders_all_look_missing_is_still_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """(The current folder deleted under us.) The climb stops at the root; the path is returned."""
    monkeypatch.setattr(S.Path, "exists", lambda self: False)
    monkeypatch.setattr(S.os, "access", lambda path, mode: True)
    assert S.writable_directory("LOG_DIR", "logs/x") == Path("logs/x")


def test_a_config_path_expands_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.yaml").write_text("x")
    assert S._config_path("X", "~/c.yaml") == tmp_path / "c.yaml"


# -- resolving ---------------------------------------------------------------------------------
def test_every_default_and_its_source() -> None:
    s = settings()
    assert s.as_dict() == {
        "max_trials": 100, "trials_per_worker": None, "timeout_seconds": None, "optuna_seed": 42, "sampler": "tpe",
        "pruner": "hyperband", "journal_dir": "optuna_journal", "study_name": "physae", "log_dir": "optuna_logs",
        "trial_output": "optuna_runs", "device": "auto", "data_seed": 0, "train_seed": 0, "max_retries": 2,
        "heartbeat_seconds": 10.0, "stale_seconds": 60.0, "hang_seconds": None, "max_failures": 10, "storage": "",
        "trial_timeout_seconds": None, "time_pruning_warmup": 0, "budget_counts": "finished", "trackers": "", "mix_budgets": False,
        "retry_interrupted": False, "reuse_results": False, "export_at_end": True, "flush_seconds": 30.0,
        "snapshot_mb": 16.0, "journal_lock": "auto", "seed_offset": 0, "config": str(CONFIG)}
    assert s.sources == {"config": "default", **{f.name: "default" for f in FIELDS}}


def test_the_config_source_is_the_default_unless_told() -> None:
    assert resolve({}, {}, {}, CONFIG).sources["config"] == "default"


def test_env_line_of_settings_without_sources_is_empty() -> None:
    import dataclasses

    assert dataclasses.replace(settings(env={"MAX_TRIALS": "3"}), sources={}).env_line() == ""


def test_each_layer_overrides_the_one_below_and_says_so() -> None:
    s = settings(config={"max_trials": 5, "optuna_seed": 6, "sampler": "random", "count": 4},
                 env={"OPTUNA_SEED": "7", "OPTUNA_SAMPLER": "qmc", "COUNT": "5"},
                 flags={"sampler": "gp", "max_trials": None}, objective=(COUNT, LABEL), args={"count": "6"},
                 source="env:HPO_CONFIG")
    assert (s.max_trials, s.optuna_seed, s.sampler, s.objective) == (5, 7, "gp", {"count": 6, "label": None})
    assert {k: s.sources[k] for k in ("config", "max_trials", "optuna_seed", "sampler", "count", "label")} == {
        "config": "env:HPO_CONFIG", "max_trials": f"config:{CONFIG}", "optuna_seed": "env:OPTUNA_SEED",
        "sampler": "flag", "count": "flag", "label": "default"}


def test_an_empty_variable_is_unset() -> None:
    s = settings(env={"MAX_TRIALS": "", "N_TRIALS": ""}, config={"max_trials": 8})
    assert (s.max_trials, s.sources["max_trials"]) == (8, f"config:{CONFIG}")


def test_an_alias_sets_the_field_and_is_named_as_its_source() -> None:
    s = settings(env={"N_TRIALS": "12"})
    assert (s.max_trials, s.sources["max_trials"]) == (12, "env:N_TRIALS")
    both = settings(env={"MAX_TRIALS": "12", "N_TRIALS": "12"})
    assert (both.max_trials, both.sources["max_trials"]) == (12, "env:MAX_TRIALS")


def test_a_variable_and_its_alias_that_disagree_are_refused() -> None:
    assert refused(settings, {"MAX_TRIALS": "12", "N_TRIALS": "13"}) == (
        "MAX_TRIALS='12' and N_TRIALS='13' disagree; they set the same thing (max_trials): valid: set one of them")


def test_each_layer_names_itself_in_a_refusal() -> None:
    assert refused(settings, None, {"max_trials": "0"}).startswith("--max-trials='0' is out of range")
    assert refused(settings, {"N_TRIALS": "0"}).startswith("N_TRIALS='0' is out of range")
    assert refused(settings, None, None, {"max_trials": 0}) == (
        f"{CONFIG}: settings.max_trials=0 is out of range; valid: an integer from 1 to 10000000")
    assert refused(lambda: settings(objective=(COUNT,), args={"count": "0"})).startswith("--arg count='0' is out")


def test_a_null_in_the_config_is_refused_unless_the_setting_may_be_unset() -> None:
    """YAML's ``study_name:`` (null) once made a study named "None" (and a None.journal)."""
    assert refused(settings, None, None, {"study_name": None}) == (
        f"{CONFIG}: study_name is null (empty); valid: a value, or no study_name key for the default (physae)")
    assert refused(settings, None, None, {"max_trials": None}) == (
        f"{CONFIG}: settings.max_trials is null (empty); valid: a value, or no max_trials key for the default (100)")
    unset = settings(config={"timeout_seconds": None})  # a setting whose default is "unset"
    assert (unset.timeout_seconds, unset.sources["timeout_seconds"]) == (None, f"config:{CONFIG}")


@pytest.mark.parametrize("raw", ["0.001", "0", "-1", "1e9"])
def test_a_heartbeat_period_out_of_range_is_refused(raw: str) -> None:
    """Each beat replaces a file on the shared filesystem per running trial: 1 ms would spin it."""
    assert refused(settings, {"HPO_HEARTBEAT_SECONDS": raw}) == (
        f"HPO_HEARTBEAT_SECONDS={raw!r} is out of range; valid: a number >= 0.1 and <= 86400")


def test_an_unknown_config_setting_lists_the_known_ones() -> None:
    message = refused(lambda: settings(config={"zz": 1, "aa": 2, "count": 1}, objective=(COUNT,)))
    known = ", ".join(f.name for f in FIELDS + (COUNT,) if not f.internal)  # launcher fields: not a config's
    assert message == f"{CONFIG}: settings.aa is not a setting; valid: {known}"


@pytest.mark.parametrize(("heartbeat", "stale"), [("10", "30"), ("2", "6.0"), ("0.5", "1.5")])
def test_the_stale_age_may_be_exactly_three_heartbeats(heartbeat: str, stale: str) -> None:
    s = settings(env={"HPO_HEARTBEAT_SECONDS": heartbeat, "HPO_STALE_SECONDS": stale})
    assert (s.heartbeat_seconds, s.stale_seconds) == (float(heartbeat), float(stale))


def test_a_stale_age_under_three_heartbeats_is_refused_with_both_sources() -> None:
    assert refused(lambda: settings(env={"HPO_STALE_SECONDS": "29.5"}, config={"heartbeat_seconds": 10})) == (
        f"HPO_STALE_SECONDS=29.5 (env:HPO_STALE_SECONDS) is below 3 x HPO_HEARTBEAT_SECONDS=10 "
        f"(config:{CONFIG}): a trial would be judged lost while its worker is alive; valid: HPO_STALE_SECONDS >= 30")


# -- --arg and declared settings --------------------------------------------------------------
def test_args_by_name_or_variable() -> None:
    assert S.parse_args(["count=4", " LABEL =a=b", "count="], (COUNT, LABEL)) == {"count": "", "label": "a=b"}
    assert S.parse_args([], (COUNT,)) == {}


@pytest.mark.parametrize(("pairs", "fields_", "message"), [
    (["count"], (COUNT, LABEL), "--arg 'count' is not NAME=VALUE with a setting of the objective; "
     "valid names: count, label"),
    (["nope=1"], (COUNT,), "--arg 'nope=1' is not NAME=VALUE with a setting of the objective; valid names: count"),
    (["x=1"], (), "--arg 'x=1' is not NAME=VALUE with a setting of the objective; "
     "valid names: none (this objective declares no settings)"),
])
def test_a_bad_arg_lists_the_valid_names(pairs: list[str], fields_: tuple[Field, ...], message: str) -> None:
    assert refused(S.parse_args, pairs, fields_) == message


@pytest.mark.parametrize(("declared", "message"), [
    (Field("max_trials", "MY_MAX", F.text, "", ""), "c.yaml: objective_settings.max_trials: already a setting "
     "of hpo; valid: another name (set that one under settings:)"),
    (Field("count", "OTHER", F.text, "", ""), "c.yaml: objective_settings.count: already a setting of the "
     "objective's module; valid: another name (set that one under settings:)"),
    (Field("mine", "OPTUNA_SEED", F.text, "", ""), "c.yaml: objective_settings.mine.env: OPTUNA_SEED is already "
     "used by hpo; valid: another variable name"),
    (Field("mine", "N_TRIALS", F.text, "", ""), "c.yaml: objective_settings.mine.env: N_TRIALS is already used by "
     "hpo; valid: another variable name"),
    (Field("mine", "COUNT", F.text, "", ""), "c.yaml: objective_settings.mine.env: COUNT is already used by the "
     "objective's module; valid: another variable name"),
    (Field("mine", "HPO_CONFIG", F.text, "", ""), "c.yaml: objective_settings.mine.env: HPO_CONFIG is already "
     "used by hpo; valid: another variable name"),
])
def test_a_declared_setting_may_not_take_a_name_or_variable_in_use(declared: Field, message: str) -> None:
    assert refused(S.check_declared, "c.yaml", (Field("ok", "OK", F.text, "", ""), declared), (COUNT,)) == message


def test_free_declared_settings_pass() -> None:
    S.check_declared("c.yaml", (Field("mine", "MINE", F.text, "", ""),), (COUNT,))


# -- what a Settings gives ---------------------------------------------------------------------
def test_the_study_spec_and_its_paths(tmp_path: Path) -> None:
    s = settings(env={"JOURNAL_DIR": str(tmp_path / "j"), "STUDY_NAME": "s1", "TRIAL_OUTPUT": str(tmp_path / "o"),
                      "MAX_TRIALS": "7", "HPO_BUDGET_COUNTS": "complete", "HPO_HEARTBEAT_SECONDS": "3",
                      "HPO_STALE_SECONDS": "11", "HPO_MAX_RETRIES": "4", "OPTUNA_SAMPLER": "random",
                      "OPTUNA_PRUNER": "none"})
    j = tmp_path / "j"
    assert s.spec == StudySpec("s1", j, "", 7, "complete", 3.0, 11.0, 4, "random", "none")
    assert (s.journal_path, s.jobs_path, s.study_dir) == (j / "s1.journal", j / "s1.jobs", tmp_path / "o" / "s1")
    assert (s.spec.slots_path, s.spec.beats_dir) == (j / "s1.journal.slots", j / "s1.heartbeats")
    assert s.storage_label == str(j / "s1.journal")


@pytest.mark.parametrize(("counts", "states"), [("finished", {"COMPLETE", "PRUNED"}), ("complete", {"COMPLETE"})])
def test_what_max_trials_counts(counts: str, states: set[str]) -> None:
    assert settings(env={"HPO_BUDGET_COUNTS": counts}).spec.counted_states == states


@pytest.mark.parametrize(("url", "label"), [
    ("postgresql://hpo:s3cr:et@db:5432/x", "postgresql://hpo:***@db:5432/x"),
    ("mysql+pymysql://u:p@h/d", "mysql+pymysql://u:***@h/d"),
    ("sqlite:///a.db", "sqlite:///a.db"),
    ("postgresql://db/x", "postgresql://db/x"),
])
def test_a_storage_label_hides_the_password(url: str, label: str) -> None:
    assert settings(env={"HPO_STORAGE": url}).storage_label == label


def test_fixed_params_come_from_the_objectives_fields_that_fix_one() -> None:
    assert settings(objective=(COUNT, LABEL)).fixed_params() == {}
    assert settings(objective=(COUNT, LABEL), env={"LABEL": "x", "COUNT": "2"}).fixed_params() == {"A.label": "x"}


def test_fields_and_values_of_hpo_then_the_objective() -> None:
    s = settings(objective=(COUNT,), env={"COUNT": "2"})
    assert s.fields() == FIELDS + (COUNT,)
    assert (s.value(COUNT), s.value(S.FIELD_BY_NAME["max_trials"])) == (2, 100)


def test_to_env_sets_every_variable_and_clears_the_unset_ones() -> None:
    s = settings(objective=(COUNT, LABEL), env={"COUNT": "2", "TIMEOUT_SECONDS": "5"})
    env = s.to_env()
    assert (env["HPO_CONFIG"], env["COUNT"], env["LABEL"], env["TIMEOUT_SECONDS"], env["TRIALS_PER_WORKER"],
            env["JOURNAL_DIR"]) == (str(CONFIG), "2", "", "5.0", "", "optuna_journal")
    assert set(env) == {"HPO_CONFIG"} | {f.env for f in FIELDS + (COUNT, LABEL)}


def test_env_line_repeats_the_environment_only_quoted_as_bash_does() -> None:
    s = settings(objective=(LABEL,), env={"LABEL": "a b'c", "MAX_TRIALS": "3"}, flags={"sampler": "random"},
                 config={"optuna_seed": 1})
    assert s.env_line() == "MAX_TRIALS=3 LABEL=a\\ b\\'c"
    assert settings().env_line() == ""


@pytest.mark.parametrize(("text", "word"), [
    ("", "''"), ("plain-./:=+,@%^_9", "plain-./:=+,@%^_9"), ("ABC_Z", "ABC_Z"), ("a b", "a\\ b"), ("$x;`y`", "\\$x\\;\\`y\\`"),
    ("é", "\\é"),
])
def test_shell_word(text: str, word: str) -> None:
    assert S.shell_word(text) == word


def test_as_dict_holds_the_objectives_values_beside_hpos() -> None:
    record = settings(objective=(COUNT,), env={"COUNT": "5", "JOURNAL_DIR": "/tmp/j"}).as_dict()
    assert (record["count"], record["journal_dir"], record["config"]) == (5, "/tmp/j", str(CONFIG))
    assert not {"sources", "objective", "objective_fields"} & set(record)

"""Bad input, as a careless user types it: one table of cases, each run as a real ``hpo``
process in a fresh folder. Each refusal must exit with its code, say one ``hpo: error:``
line naming the field and what is valid, print no traceback, and write nothing.

To add a case, add a row to ``CASES``: the command, the environment (``{d}`` is the case's
folder), the files to make first, the exit status and a fragment of the one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import clean_env, run_hpo, tree

TOY = "study_name: toy\nobjective: objectives:quadratic\nspace:\n  x: {type: float, low: -5, high: 5}\n"
TWO = ("study_name: two\nobjective: objectives:two_costs\ndirections: [minimize, minimize]\n"
       "space:\n  x: {type: float, low: 0, high: 1}\n")


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    env: dict[str, str]
    code: int
    says: str  # a fragment of the error line (or, for code 0, of stderr)
    files: dict[str, bytes | str] = field(default_factory=lambda: {"toy.yaml": TOY})


def case(id: str, args: str, code: int, says: str, files: dict[str, bytes | str] | None = None,
         **env: str) -> Case:
    return Case(id, tuple(args.split()), env, code, says, {"toy.yaml": TOY} if files is None else files)


CASES = [
    # -- settings: environment and flags --
    case("max-trials-negative", "run", 2, "MAX_TRIALS='-1' is out of range; valid: an integer from 1", MAX_TRIALS="-1"),
    case("max-trials-text", "run", 2, "MAX_TRIALS='abc' is not an integer", MAX_TRIALS="abc"),
    case("max-trials-flag", "run --max-trials 0", 2, "--max-trials='0' is out of range"),
    case("sampler", "run", 2, "OPTUNA_SAMPLER='bayes' is not valid; valid: tpe, random", OPTUNA_SAMPLER="bayes"),
    case("pruner", "run", 2, "OPTUNA_PRUNER='early' is not valid; valid: hyperband", OPTUNA_PRUNER="early"),
    case("device", "run", 2, "HPO_DEVICE='tpu'", HPO_DEVICE="tpu"),
    case("device-cuda-without-gpu", "run", 2, "HPO_DEVICE='cuda': this worker sees no GPU", HPO_DEVICE="cuda"),
    case("heartbeat-too-fast", "run", 2, "HPO_HEARTBEAT_SECONDS='0.001' is out of range",
         HPO_HEARTBEAT_SECONDS="0.001"),
    case("stale-below-heartbeats", "run", 2, "HPO_STALE_SECONDS", HPO_STALE_SECONDS="5", HPO_HEARTBEAT_SECONDS="10"),
    case("trackers", "run", 2, "HPO_TRACKERS='tensorbord' is not valid; valid: a comma list", HPO_TRACKERS="tensorbord"),
    case("budget-counts", "run", 2, "HPO_BUDGET_COUNTS='all' is not valid; valid: finished, complete",
         HPO_BUDGET_COUNTS="all"),
    case("mix-budgets", "run", 2, "HPO_MIX_BUDGETS='perhaps' is not a boolean", HPO_MIX_BUDGETS="perhaps"),
    case("worker-rank", "worker", 2, "HPO_WORKER_RANK='abc'", HPO_WORKER_RANK="abc"),
    case("journal-lock", "run", 2, "HPO_JOURNAL_LOCK='maybe' is not valid", HPO_JOURNAL_LOCK="maybe"),
    case("timeout", "run", 2, "TIMEOUT_SECONDS='-5'", TIMEOUT_SECONDS="-5"),
    case("trial-timeout", "run", 2, "HPO_TRIAL_TIMEOUT_SECONDS='soon'", HPO_TRIAL_TIMEOUT_SECONDS="soon"),
    case("journal-dir-is-a-file", "run", 2, "exists and is not a directory", {"toy.yaml": TOY, "afile": "x"},
         JOURNAL_DIR="{d}/afile"),
    case("journal-dir-symlink-loop", "run", 2, "is a symbolic link that leads nowhere", JOURNAL_DIR="{d}/loop"),
    case("log-dir-symlink-loop", "worker", 2, "is a symbolic link that leads nowhere", LOG_DIR="{d}/loop/logs"),
    case("storage-unreachable", "run", 3, "HPO_STORAGE=sqlite:////nonexistent/x.db: cannot open the database",
         HPO_STORAGE="sqlite:////nonexistent/x.db"),
    case("storage-driver-missing", "run", 2, "HPO_STORAGE=mysql://u@h/db: its database driver is not installed",
         HPO_STORAGE="mysql://u@h/db"),
    case("study-name-slash", "run", 2, "STUDY_NAME='a/b'", STUDY_NAME="a/b"),
    case("trials-per-worker", "run", 2, "TRIALS_PER_WORKER='0'", TRIALS_PER_WORKER="0"),
    case("optuna-seed", "run", 2, "OPTUNA_SEED='abc'", OPTUNA_SEED="abc"),
    case("data-seed", "run", 2, "DATA_SEED='-1'", DATA_SEED="-1"),
    case("train-seed", "run", 2, "TRAIN_SEED='x'", TRAIN_SEED="x"),
    case("max-retries", "run", 2, "HPO_MAX_RETRIES='101'", HPO_MAX_RETRIES="101"),
    case("max-failures", "run", 2, "HPO_MAX_FAILURES='0'", HPO_MAX_FAILURES="0"),
    case("hang-seconds", "run", 2, "HPO_HANG_SECONDS='soon'", HPO_HANG_SECONDS="soon"),
    case("flush-seconds", "run", 2, "HPO_FLUSH_SECONDS='-1'", HPO_FLUSH_SECONDS="-1"),
    case("snapshot-mb", "run", 2, "HPO_SNAPSHOT_MB='-1'", HPO_SNAPSHOT_MB="-1"),
    case("seed-offset", "run", 2, "HPO_SEED_OFFSET='x'", HPO_SEED_OFFSET="x"),
    case("time-pruning-warmup", "run", 2, "HPO_TIME_PRUNING_WARMUP='-1'", HPO_TIME_PRUNING_WARMUP="-1"),
    case("reuse-results", "run", 2, "HPO_REUSE_RESULTS='maybe' is not a boolean", HPO_REUSE_RESULTS="maybe"),
    case("export-at-end", "run", 2, "HPO_EXPORT_AT_END='2' is not a boolean", HPO_EXPORT_AT_END="2"),
    case("retry-interrupted", "run", 2, "HPO_RETRY_INTERRUPTED='x' is not a boolean", HPO_RETRY_INTERRUPTED="x"),
    case("n-trials-disagrees", "run", 2, "disagree", MAX_TRIALS="3", N_TRIALS="4"),
    case("log-dir-is-a-file", "worker", 2, "exists and is not a directory", {"toy.yaml": TOY, "afile": "x"},
         LOG_DIR="{d}/afile"),
    case("trial-output-is-a-file", "run", 2, "exists and is not a directory", {"toy.yaml": TOY, "afile": "x"},
         TRIAL_OUTPUT="{d}/afile"),
    case("storage-ftp", "run", 2, "HPO_STORAGE='ftp://x'", HPO_STORAGE="ftp://x"),
    case("run-zero-workers", "run --workers 0", 2,
         "Invalid value for '--workers' / '-n': 0 is not in the range 1<=x<=1024; see `hpo run --help`"),
    case("reuse-and-overwrite", "run --reuse-stored --overwrite", 2, "--reuse-stored and --overwrite exclude each other"),
    case("arg-unknown", "run --arg nosuch=1", 2, "nosuch"),
    case("arg-without-value", "run --arg epochs", 2, "--arg"),
    case("objective-setting-out-of-range", "run", 2, "TOY_EPOCHS='0' is out of range",
         {"toy.yaml": TOY + "objective_settings:\n  epochs: {type: int, default: 2, low: 1, env: TOY_EPOCHS}\n"},
         TOY_EPOCHS="0"),
    # -- the study config --
    case("config-missing", "run", 2, "HPO_CONFIG=", HPO_CONFIG="{d}/nope.yaml"),
    case("config-not-utf8", "run", 2, "not UTF-8 text (byte 9", {"bad.yaml": b"objective\xff: x\n"},
         HPO_CONFIG="{d}/bad.yaml"),
    case("config-not-yaml", "run", 2, "not valid YAML", {"bad.yaml": "space: [\n"}, HPO_CONFIG="{d}/bad.yaml"),
    case("config-unknown-key", "run", 2, "spaec: unknown key; valid:", {"toy.yaml": TOY + "spaec: {}\n"}),
    case("objective-syntax-error", "run", 2, "'broken' has a syntax error at",
         {"toy.yaml": TOY.replace("objectives:quadratic", "broken:f"), "broken.py": "def f(:\n"}),
    case("objective-raises-at-import", "run", 2, "importing 'raising' raised RuntimeError: no GPU driver",
         {"toy.yaml": TOY.replace("objectives:quadratic", "raising:f"),
          "raising.py": "raise RuntimeError('no GPU driver')\n"}),
    case("objective-missing-module", "run", 2, "no module 'nosuch'",
         {"toy.yaml": TOY.replace("objectives:quadratic", "nosuch:f")}),
    case("objective-missing-function", "run", 2, "has no function 'nosuch'",
         {"toy.yaml": TOY.replace("quadratic", "nosuch")}),
    case("space-empty", "run", 2, "space: must be a non-empty mapping",
         {"toy.yaml": "objective: objectives:quadratic\nspace: {}\n"}),
    case("space-low-above-high", "run", 2, "space.x",
         {"toy.yaml": TOY.replace("low: -5, high: 5", "low: 5, high: -5")}),
    case("direction", "run", 2, "direction: 'down' is not valid; valid: minimize, maximize",
         {"toy.yaml": TOY + "direction: down\n"}),
    case("cmaes-two-objectives", "run", 2, "OPTUNA_SAMPLER=cmaes (env:OPTUNA_SAMPLER) searches one objective",
         {"two.yaml": TWO}, HPO_CONFIG="{d}/two.yaml", OPTUNA_SAMPLER="cmaes"),
    case("setup-inputs-unknown", "run", 2, "setup_inputs: 'probem' is not an option",
         {"toy.yaml": TOY + "setup: objectives:counted_setup\nsetup_inputs: [probem]\n"}),
    case("sampler-args-unknown", "run", 2, "sampler_args.tpe.warmup: not an argument",
         {"toy.yaml": TOY + "sampler_args: {tpe: {warmup: 3}}\n"}),
    case("config-top-level-list", "run", 2, "expected a mapping at the top level", {"toy.yaml": "- 1\n"}),
    case("objective-not-text", "run", 2, "objective: 5 is not valid; valid: 'package.module:function'",
         {"toy.yaml": TOY.replace("objectives:quadratic", "5")}),
    case("objective-no-colon", "run", 2, "objective: 'objectives.quadratic' is not valid",
         {"toy.yaml": TOY.replace("objectives:quadratic", "objectives.quadratic")}),
    case("directions-empty", "run", 2, "directions: must be a non-empty list", {"toy.yaml": TOY + "directions: []\n"}),
    case("direction-and-directions", "run", 2, "give either 'direction' or 'directions'",
         {"toy.yaml": TOY + "direction: minimize\ndirections: [minimize]\n"}),
    case("metric-names-length", "run", 2, "metric_names: ['a', 'b'] is not valid",
         {"toy.yaml": TOY + "metric_names: [a, b]\n"}),
    case("enqueue-not-a-list", "run", 2, "enqueue: must be a list", {"toy.yaml": TOY + "enqueue: {x: 1}\n"}),
    case("enqueue-out-of-range", "run", 2, "enqueue[0]", {"toy.yaml": TOY + "enqueue: [{x: 50}]\n"}),
    case("param-type-unknown", "run", 2, "space.x", {"toy.yaml": TOY.replace("type: float", "type: real")}),
    case("param-log-nonpositive", "run", 2, "space.x",
         {"toy.yaml": TOY.replace("low: -5, high: 5", "low: -5, high: 5, log: true")}),
    case("param-categorical-empty", "run", 2, "space.c",
         {"toy.yaml": TOY + "  c: {type: categorical, choices: []}\n"}),
    case("param-when-unknown-parent", "run", 2, "space.y.when",
         {"toy.yaml": TOY + "  y: {type: float, low: 0, high: 1, when: {z: 1}}\n"}),
    case("sampler-args-unknown-sampler", "run", 2, "sampler_args.bayes: not a sampler",
         {"toy.yaml": TOY + "sampler_args: {bayes: {}}\n"}),
    case("pruner-args-unknown-pruner", "run", 2, "pruner_args.early: not a pruner",
         {"toy.yaml": TOY + "pruner_args: {early: {}}\n"}),
    case("objective-setting-type", "run", 2, "objective_settings.n.type: 'number' is not valid",
         {"toy.yaml": TOY + "objective_settings:\n  n: {type: number, default: 1}\n"}),
    case("objective-setting-budget", "run", 2, "objective_settings.n.budget: 'yes' is not valid",
         {"toy.yaml": TOY + "objective_settings:\n  n: {type: int, default: 1, budget: 'yes'}\n"}),
    case("matrix-not-mapping", "run", 2, "matrix: must be a mapping", {"toy.yaml": TOY + "matrix: [a, b]\n"}),
    case("matrix-repeated-value", "run", 2, "repeats a value",
         {"toy.yaml": TOY.replace("study_name: toy", "study_name: toy_{m}") + "matrix: {m: [a, a]}\n"}),
    case("matrix-name-without-variable", "run", 2, "must name every matrix variable",
         {"toy.yaml": TOY + "matrix: {m: [a, b]}\n"}),
    case("matrix-space-unknown-variable", "run", 2, "matrix_space.q: not a matrix variable",
         {"toy.yaml": TOY.replace("study_name: toy", "study_name: toy_{m}") + "matrix: {m: [a, b]}\n"
                                                                             "matrix_space: {q: {}}\n"}),
    case("time-pruning-cap-one-objective", "run", 2, "time_pruning_cap: [1.0] is not valid",
         {"toy.yaml": TOY + "time_pruning_cap: [1.0]\n"}),
    case("settings-unknown-key", "run", 2, "settings.max_trial is not a setting",
         {"toy.yaml": TOY + "settings: {max_trial: 3}\n"}),
    case("settings-internal-key", "run", 2, "settings.worker_rank is set by hpo's launchers",
         {"toy.yaml": TOY + "settings: {worker_rank: 1}\n"}),
    case("setup-not-a-function", "run", 2, "setup: 'nothing' is not valid", {"toy.yaml": TOY + "setup: nothing\n"}),
    case("objective-args-not-mapping", "run", 2, "objective_args: must be a mapping",
         {"toy.yaml": TOY + "objective_args: [1]\n"}),
    # -- commands --
    case("export-out-is-a-file", "export --out {d}/afile", 2, "--out='", {"toy.yaml": TOY, "afile": "x"}),
    case("plot-out-is-a-file", "plot --out {d}/afile", 2, "--out='", {"toy.yaml": TOY, "afile": "x"}),
    case("best-format", "best --format xml", 2, "Invalid value for '--format': 'xml' is not one of 'yaml', 'json'"),
    case("export-top-zero", "export --top 0", 2, "Invalid value for '--top'"),
    case("no-such-command", "runn", 2, "No such command 'runn'. Did you mean 'run'?; see `hpo --help`"),
    case("no-such-option", "run --workerz 2", 2, "No such option '--workerz'"),
    case("enqueue-neither", "enqueue", 2, "give a FILE of parameter sets or --from-study NAME"),
    case("status-no-study", "status --no-slurm", 2, "no journal 'optuna_journal/toy.journal' for STUDY_NAME='toy'"),
    case("best-no-study", "best", 2, "no journal 'optuna_journal/toy.journal' for STUDY_NAME='toy'"),
    case("logs-no-study", "logs", 2, "no such study"),
    case("enqueue-missing-file", "enqueue {d}/none.json", 2, "none.json"),
    case("retrain-no-study", "retrain", 2, "no journal 'optuna_journal/toy.journal' for STUDY_NAME='toy'"),
    case("refine-no-study", "refine --from nosuch", 2, "no such study"),
    case("reap-no-study", "reap", 2, "no such study"),
]

# Not refusals: what a user meant is done, and a typo is named.
ACCEPTED = [
    case("yaml-1e-4-is-a-number", "config", 0, "",
         {"toy.yaml": TOY.replace("low: -5, high: 5", "low: 1e-4, high: 1e-1, log: true")}),
    case("misspelt-variable-named", "config", 0, "MAX_TRIAL is not a setting and is ignored; did you mean MAX_TRIALS?",
         MAX_TRIAL="1"),
]


def _prepare(folder: Path, c: Case) -> tuple[list[str], dict[str, str]]:
    for name, content in c.files.items():
        path = folder / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    (folder / "loop").symlink_to(folder / "loop")  # a symbolic link to itself, for the loop cases
    env = clean_env(HPO_CONFIG=str(folder / "toy.yaml"), MAX_TRIALS="1")
    env.update({k: v.format(d=folder) for k, v in c.env.items()})
    return [a.format(d=folder) for a in c.args], env


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_a_refusal_is_one_line_and_writes_nothing(tmp_path: Path, c: Case) -> None:
    args, env = _prepare(tmp_path, c)
    before = tree(tmp_path)
    result = run_hpo(args, tmp_path, env, timeout=120)
    shown = result.stdout + result.stderr
    assert result.returncode == c.code, shown
    assert "Traceback" not in shown, shown
    errors = [line for line in result.stderr.splitlines() if line.startswith("hpo: error:")]
    assert len(errors) == 1 and c.says in errors[0], result.stderr
    assert tree(tmp_path) == before, sorted(set(tree(tmp_path)) - set(before))


@pytest.mark.parametrize("c", ACCEPTED, ids=[c.id for c in ACCEPTED])
def test_what_the_user_meant_is_done(tmp_path: Path, c: Case) -> None:
    args, env = _prepare(tmp_path, c)
    result = run_hpo(args, tmp_path, env, timeout=120)
    assert result.returncode == c.code and "Traceback" not in result.stderr, result.stderr
    assert c.says in result.stderr


def test_the_table_is_what_its_docstring_says() -> None:
    assert len({c.id for c in CASES + ACCEPTED}) == len(CASES + ACCEPTED)  # ids name the cases apart
    assert all(c.code in (2, 3) for c in CASES) and os.sep not in "".join(c.id for c in CASES)


# -- faults and read-only commands -----------------------------------------------------------

def test_a_worker_killed_by_a_signal_is_named_and_hpo_run_exits_as_a_shell_would(tmp_path: Path) -> None:
    """A segfault in native code: exit 128 + 11 (not 245), one line naming the worker."""
    (tmp_path / "toy.yaml").write_text(TOY.replace("quadratic", "segfaults"))
    result = run_hpo(["run"], tmp_path, clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"), MAX_TRIALS="1"))
    assert result.returncode == 139, result.stderr
    assert "hpo: worker rank 0 (pid " in result.stderr and "was killed by SIGSEGV" in result.stderr
    # Its trial is a zombie at once in hpo status on this host (its pid is gone), not after HPO_STALE_SECONDS.
    import json

    status = run_hpo(["status", "--json", "--no-slurm"], tmp_path, clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml")))
    assert json.loads(status.stdout)["zombies"] == [0], status.stdout


def test_read_only_commands_leave_the_journal_as_it_was(tmp_path: Path) -> None:
    """``hpo reap`` (with the default MAX_TRIALS of 100 in its environment), status, best,
    studies and export change no byte of the journal: the study keeps the budget its workers ran."""
    import json

    (tmp_path / "toy.yaml").write_text(TOY)
    env = clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"))
    assert run_hpo(["worker"], tmp_path, {**env, "MAX_TRIALS": "2"}).returncode == 0
    journal = tmp_path / "optuna_journal/toy.journal"
    before = journal.read_bytes()
    for args in (["reap"], ["status", "--no-slurm"], ["best"], ["studies", "--json"], ["export"]):
        result = run_hpo(args, tmp_path, env)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr)
        assert journal.read_bytes() == before, args
    status = json.loads(run_hpo(["status", "--json", "--no-slurm"], tmp_path, env).stdout)
    assert status["max_trials"] == 2
    # Every line of hpo studies --json is strict JSON (a best of -inf would be null).
    rows = run_hpo(["studies", "--json"], tmp_path, env).stdout.splitlines()
    assert [json.loads(r, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))["study"] for r in rows] == ["toy"]


@pytest.mark.parametrize("flag", [[], ["--overwrite"]])
def test_other_directions_are_refused_before_anything_is_written(tmp_path: Path, flag: list[str]) -> None:
    """A study keeps its directions: a config that asks for others is refused (exit 2) before
    the log, the stored config or provenance is written, and the journal gets no record (a
    study record with the wrong direction would be one), --overwrite or not."""
    (tmp_path / "toy.yaml").write_text(TOY)
    env = clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"), MAX_TRIALS="1")
    assert run_hpo(["worker"], tmp_path, env).returncode == 0
    (tmp_path / "toy.yaml").write_text(TOY + "direction: maximize\n")
    before, journal = tree(tmp_path), (tmp_path / "optuna_journal/toy.journal").read_bytes()
    result = run_hpo(["worker", *flag], tmp_path, env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "study 'toy' in optuna_journal/toy.journal optimises ['minimize'], but" in result.stderr
    assert tree(tmp_path) == before and (tmp_path / "optuna_journal/toy.journal").read_bytes() == journal
    assert (tmp_path / "optuna_runs/toy/provenance.jsonl").read_text().count("\n") == 1


def test_damage_that_appears_while_a_worker_runs_ends_it_with_one_line(tmp_path: Path) -> None:
    """A bad line with a record after it, written into the journal under a running worker:
    the worker stops with exit 3 and one line naming the record and `hpo doctor` (at start-up
    the same damage gets the same), not a JSONDecodeError traceback."""
    import subprocess
    import sys
    import time

    (tmp_path / "toy.yaml").write_text(TOY)
    env = clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"), MAX_TRIALS="50", TOY_STEP_SECONDS="0.2",
                    HPO_FLUSH_SECONDS="0")
    worker = subprocess.Popen([sys.executable, "-m", "hpo", "worker", "--quiet"], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    journal = tmp_path / "optuna_journal/toy.journal"
    deadline = time.time() + 60
    while time.time() < deadline and journal.read_text().count('"op_code":6') < 1 if journal.exists() else True:
        time.sleep(0.1)  # until a trial has ended: the worker is in its loop
    first = journal.read_text().splitlines()[0]
    with journal.open("a") as handle:
        handle.write("{not json\n" + first + "\n")
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 3, err
    assert "Traceback" not in err and "is damaged" in err and "hpo doctor" in err, err


def test_a_trial_time_budget_the_objective_never_lets_hpo_enforce_is_said(tmp_path: Path) -> None:
    """HPO_TRIAL_TIMEOUT_SECONDS acts at ctx.report/ctx.check_stop: an objective that calls
    neither runs to its end (COMPLETE), and the worker log says why, once for that trial."""
    (tmp_path / "toy.yaml").write_text(TOY.replace("quadratic", "sleeps_quietly"))
    env = clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"), MAX_TRIALS="1", HPO_TRIAL_TIMEOUT_SECONDS="0.5")
    assert run_hpo(["worker"], tmp_path, env).returncode == 0
    log = "".join(p.read_text() for p in (tmp_path / "optuna_logs").glob("worker_*.log"))
    assert log.count("past its HPO_TRIAL_TIMEOUT_SECONDS=0.5: the objective never called ctx.report or "
                     "ctx.check_stop") == 1, log

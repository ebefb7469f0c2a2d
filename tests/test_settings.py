"""Settings: precedence, sources, and every bad value refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.config.identity import WorkerIdentity
from hpo.config.settings import FIELDS, Settings, parse_args, resolve
from hpo.config.study import load_launch
from hpo.errors import UsageError
from hpo.physae.settings import SETTINGS as PHYSAE

CONFIG = Path("configs/physae.yaml")


def settings(env: dict[str, str] | None = None, flags: dict[str, object] | None = None,
             config: dict[str, object] | None = None, args: dict[str, str] | None = None) -> Settings:
    return resolve(flags or {}, env or {}, config or {}, CONFIG, objective_fields=PHYSAE, args=args)


def identity(env: dict[str, str], host: str, pid: int) -> WorkerIdentity:
    """Who a worker with this environment is: the scheduler's variables and hpo's own launcher settings."""
    return WorkerIdentity.from_env(env, host, pid, settings(env=env).launcher)


def o(s: Settings, *names: str) -> tuple[object, ...]:
    """PhysAE's own settings, as the objective gets them (ctx.options)."""
    return tuple(s.objective[n] for n in names)


def test_defaults_match_seed_000() -> None:
    s = settings()
    assert o(s, "n_train", "n_val", "n_points") == (50000, 4000, 256)
    assert o(s, "stagea_epochs", "stageb1_epochs", "stageb2_epochs") == (None, None, None)
    assert (s.sampler, s.pruner, s.optuna_seed) == ("tpe", "hyperband", 42)
    assert s.journal_path == Path("optuna_journal/physae.journal")
    assert s.log_dir == Path("optuna_logs") and s.trial_output == Path("optuna_runs")
    assert s.fixed_params() == {}


def test_precedence_default_config_env_flag() -> None:
    s = settings(env={"N_VAL": "300", "N_POINTS": "128"},
                 args={"n_points": "64"},
                 config={"n_train": 1000, "n_val": 999})
    assert o(s, "n_train", "n_val", "n_points", "batch_size") == (1000, 300, 64, 512)
    assert s.sources["n_train"].startswith("config:")
    assert s.sources["n_val"] == "env:N_VAL"
    assert s.sources["n_points"] == "flag"
    assert s.sources["batch_size"] == "default"


def test_stage_epochs_become_fixed_parameters() -> None:
    s = settings(env={"STAGEA_EPOCHS": "24", "STAGEB2_EPOCHS": "18"})
    assert s.fixed_params() == {"A.epochs": 24, "B2.epochs": 18}


def test_to_env_round_trips() -> None:
    s = settings(env={"STAGEA_EPOCHS": "3", "STUDY_NAME": "a b'c", "TIMEOUT_SECONDS": "12.5"})
    again = resolve({}, s.to_env(), {}, CONFIG, objective_fields=PHYSAE)
    assert again == s


@pytest.mark.parametrize(
    ("var", "value", "valid"),
    [
        ("N_TRAIN", "abc", "integer from 1"),
        ("N_TRAIN", "-5", "integer from 1"),
        ("N_VAL", "0", "integer from 1"),
        ("N_POINTS", "4", "integer from 16"),
        ("STAGEA_EPOCHS", "1.5", "integer"),
        ("STAGEB1_EPOCHS", "-1", "integer from 1"),
        ("MAX_TRIALS", "0", "integer from 1"),
        ("TRIALS_PER_WORKER", "x", "integer"),
        ("TIMEOUT_SECONDS", "-3", "positive number"),
        ("TIMEOUT_SECONDS", "nan", "positive number"),
        ("OPTUNA_SEED", "-1", "integer from 0"),
        ("OPTUNA_SAMPLER", "bayes", "tpe, random, cmaes, qmc, gp, nsga2"),
        ("OPTUNA_PRUNER", "early", "hyperband, median, sha, percentile, wilcoxon, stage, none"),
        ("STUDY_NAME", "a/b", "study name"),
        ("STUDY_NAME", "..", "study name"),
        ("STUDY_NAME", "", None),  # empty means unset: the default applies
        ("HPO_DEVICE", "tpu", "auto, cpu, cuda"),
    ],
)
def test_bad_values_name_variable_value_and_valid(var: str, value: str, valid: str | None) -> None:
    if valid is None:
        assert settings(env={var: value}).study_name == "physae"
        return
    with pytest.raises(UsageError) as err:
        settings(env={var: value})
    message = str(err.value)
    assert message.startswith(f"{var}={value!r}")
    assert valid in message


def test_directory_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match="JOURNAL_DIR=.*is not a directory"):
        settings(env={"JOURNAL_DIR": str(tmp_path / "afile" / "journal")})
    assert not (tmp_path / "afile" / "journal").exists()


def test_unknown_config_setting_is_refused() -> None:
    with pytest.raises(UsageError, match=r"settings\.n_trian is not a setting"):
        settings(config={"n_trian": 5})


def test_flag_error_names_the_flag() -> None:
    with pytest.raises(UsageError, match=r"^--max-trials='many'"):
        settings(flags={"max_trials": "many"})


def test_every_field_has_distinct_env_var() -> None:
    envs = [f.env for f in FIELDS]
    assert len(envs) == len(set(envs))


def test_generic_settings_know_no_objective() -> None:
    """PhysAE's settings are declared by its package: the generic table has no stage names."""
    assert not {f.name for f in FIELDS} & {f.name for f in PHYSAE}
    assert all(f.fixes is None for f in FIELDS)
    plain = resolve({}, {"N_TRAIN": "12", "STAGEA_EPOCHS": "3"}, {}, CONFIG)
    assert plain.objective == {} and plain.fixed_params() == {}


def test_objective_settings_come_from_the_config_objective(tmp_path: Path) -> None:
    s, config = load_launch({"args": ("N_VAL=300", "batch_size=64")}, {"N_TRAIN": "1000", "HPO_CONFIG": str(CONFIG)}).one()
    assert o(s, "n_train", "n_val", "batch_size") == (1000, 300, 64)
    assert (s.sources["n_train"], s.sources["n_val"], s.sources["n_points"]) == ("env:N_TRAIN", "flag", "config:"
                                                                                 + str(CONFIG))
    assert s.as_dict()["n_train"] == 1000 and s.to_env()["N_VAL"] == "300"


def test_bad_arg_names_the_valid_settings() -> None:
    with pytest.raises(UsageError, match=r"--arg 'n_trian=5' .* valid names: n_train, n_val"):
        parse_args(["n_trian=5"], PHYSAE)
    with pytest.raises(UsageError, match=r"^--arg n_val='x' is not an integer"):
        settings(args={"n_val": "x"})


@pytest.mark.parametrize("name", ["worker_rank", "local_workers", "launch_id"])
def test_a_config_cannot_set_what_a_launcher_gives_each_worker(name: str) -> None:
    """A config's launch_id would give every launch the same number, and the same seeds."""
    with pytest.raises(UsageError, match=rf"settings\.{name} is set by hpo's launchers for each worker, not in a "
                                         r"config; valid: max_trials, "):
        settings(config={name: "1"})


@pytest.mark.parametrize(("env", "bad"), [
    ({"HPO_STALE_SECONDS": "20"}, "HPO_STALE_SECONDS=20 (env:HPO_STALE_SECONDS) is below 3 x HPO_HEARTBEAT_SECONDS=10"),
    ({"HPO_HEARTBEAT_SECONDS": "30"}, "HPO_STALE_SECONDS=60 (default) is below 3 x HPO_HEARTBEAT_SECONDS=30"),
])
def test_stale_age_must_cover_three_heartbeats(env: dict[str, str], bad: str) -> None:
    with pytest.raises(UsageError) as err:
        settings(env=env)
    assert str(err.value).startswith(bad) and "valid: HPO_STALE_SECONDS >= " in str(err.value)
    assert settings(env={"HPO_HEARTBEAT_SECONDS": "2", "HPO_STALE_SECONDS": "6"}).stale_seconds == 6


def test_worker_identity_from_slurm_and_local() -> None:
    local = identity({"HPO_WORKER_RANK": "2", "CUDA_VISIBLE_DEVICES": "1"}, "node1", 77)
    assert (local.worker_id, local.rank, local.attrs()["gpu"]) == ("node1_77", 2, "1")
    step = identity({"SLURM_JOB_ID": "123", "SLURM_PROCID": "3"}, "n", 1)
    assert (step.worker_id, step.rank, step.attrs()["slurm_job_id"]) == ("123_3", 3, "123")
    array = identity({"SLURM_JOB_ID": "130", "SLURM_ARRAY_JOB_ID": "128",
                                     "SLURM_ARRAY_TASK_ID": "2", "SLURM_PROCID": "0"}, "n", 1)
    assert (array.worker_id, array.rank) == ("128_2", 2)


def test_workers_of_hpo_run_inside_one_allocation_are_told_apart() -> None:
    """`hpo run -n 3` inside an salloc/sbatch job (and hpo submit's jobs): one job and task,
    three workers: three ids (logs, who ran a trial) and three sampler ranks."""
    ids = [identity({"SLURM_JOB_ID": "77", "SLURM_PROCID": "0", "HPO_WORKER_RANK": str(r),
                                    "HPO_LOCAL_WORKERS": "3"}, "n", 9) for r in range(3)]
    assert [(i.worker_id, i.rank) for i in ids] == [("77_0_0", 0), ("77_0_1", 1), ("77_0_2", 2)]
    # hpo submit: one worker per job; the job id names it (worker_<job>_<procid>.log), the rank seeds it.
    submitted = identity({"SLURM_JOB_ID": "78", "SLURM_PROCID": "0", "HPO_WORKER_RANK": "4"}, "n", 9)
    assert (submitted.worker_id, submitted.rank) == ("78_0", 4)


# -- sampler seeds ------------------------------------------------------------------------

# Literal SLURM environments: srun tasks of one job, tasks of an array (one and two tasks
# each), the same job requeued. Job ids differ between reruns; seeds must not.
SRUN = {"SLURM_JOB_ID": "4711", "SLURM_PROCID": "2", "SLURM_NTASKS": "4"}
ARRAY = {"SLURM_JOB_ID": "5003", "SLURM_ARRAY_JOB_ID": "5000", "SLURM_ARRAY_TASK_ID": "3", "SLURM_PROCID": "0",
         "SLURM_NTASKS": "1"}
ARRAY_2 = {"SLURM_JOB_ID": "5004", "SLURM_ARRAY_JOB_ID": "5000", "SLURM_ARRAY_TASK_ID": "1", "SLURM_PROCID": "1",
           "SLURM_NTASKS": "2"}


@pytest.mark.parametrize(("env", "key", "rank"), [
    (SRUN, "slurm:4711", 2),
    ({**SRUN, "SLURM_JOB_ID": "9999"}, "slurm:9999", 2),
    (ARRAY, "slurm:5000", 3),
    (ARRAY_2, "slurm:5000", 3),  # task 1 of 2 tasks each, second task
    ({**ARRAY, "SLURM_RESTART_COUNT": "1"}, "slurm:5000+restart1", 3),
    ({**SRUN, "SLURM_RESTART_COUNT": "0"}, "slurm:4711", 2),
    ({"HPO_LAUNCH_ID": "abc", "HPO_WORKER_RANK": "1"}, "hpo:abc", 1),  # hpo run
    ({**ARRAY, "HPO_LAUNCH_ID": "abc"}, "hpo:abc", 3),  # hpo submit on SLURM
    ({}, "worker:n_7", 0),  # a lone hpo worker
])
def test_launch_and_rank_from_the_launcher_environment(env: dict[str, str], key: str, rank: int) -> None:
    who = identity(env, "n", 7)
    assert (who.launch, who.rank) == (key, rank)


def test_seed_depends_on_seed_rank_launch_number_and_offset_only() -> None:
    from hpo.worker.loop import sampler_seed

    s = settings(env={"OPTUNA_SEED": "7"})
    first, rerun = identity(SRUN, "a", 1), identity({**SRUN, "SLURM_JOB_ID": "9"}, "b", 2)
    assert sampler_seed(s, first, 0) == sampler_seed(s, rerun, 0) == 7 + 2
    assert sampler_seed(s, first, 1) == 7 + 100_000 + 2  # the study's second launch
    shifted = settings(env={"OPTUNA_SEED": "7", "HPO_SEED_OFFSET": "1000"})
    assert sampler_seed(shifted, first, 0) == 7 + 1000 + 2
    # Every task of a 2-task array gets its own seed.
    tasks = [identity({**ARRAY_2, "SLURM_ARRAY_TASK_ID": str(t), "SLURM_PROCID": str(p)}, "n", 1)
             for t in range(3) for p in range(2)]
    assert sorted(sampler_seed(s, t, 0) for t in tasks) == [7 + r for r in range(6)]
    with pytest.raises(UsageError, match=r"^HPO_SEED_OFFSET='x' is not an integer"):
        settings(env={"HPO_SEED_OFFSET": "x"})


def test_same_launch_into_a_fresh_study_samples_the_same_and_a_second_launch_anew(tmp_path: Path) -> None:
    from conftest import TOY_CONFIG, clean_env, load_study, run_hpo

    (tmp_path / "toy.yaml").write_text(TOY_CONFIG.format(objective="quadratic"))
    env = clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"), OPTUNA_SAMPLER="random", OPTUNA_PRUNER="none",
                    TOY_STEP_SECONDS="0")
    params = {}
    for run in ("first", "rerun"):
        (tmp_path / run).mkdir()
        result = run_hpo(["run", "--max-trials", "3"], tmp_path / run, env)
        assert result.returncode == 0, result.stderr
        params[run] = [t.params for t in load_study(tmp_path / run / "optuna_journal/toy.journal", "toy").trials]
    assert len(params["first"]) == 3 and params["first"] == params["rerun"]
    again = run_hpo(["run", "--max-trials", "6"], tmp_path / "first", env)
    assert again.returncode == 0, again.stderr
    later = [t.params for t in load_study(tmp_path / "first/optuna_journal/toy.journal", "toy").trials][3:]
    assert len(later) == 3 and not [p for p in later if p in params["first"]]
    logs = "".join(p.read_text() for p in (tmp_path / "first/optuna_logs").glob("worker_*.log"))
    assert "seed=42 (OPTUNA_SEED 42 + HPO_SEED_OFFSET 0 + launch 0 x 100000 + rank 0)" in logs
    assert "seed=100042 (OPTUNA_SEED 42 + HPO_SEED_OFFSET 0 + launch 1 x 100000 + rank 0)" in logs

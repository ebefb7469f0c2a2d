"""Lose nothing: kill storms, preemption with resume. Real processes, bounded in time."""

from __future__ import annotations

import base64
import json
import random
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import clean_env, load_study, run_hpo
from test_worker import first_log, start_worker, wait_for

REPO = Path(__file__).resolve().parent.parent


def test_kill_storm_loses_nothing(toy) -> None:
    cwd, env = toy(TOY_STEP_SECONDS="0.5")  # 1.5 s trials: most kills land mid-trial
    env = {**env, "MAX_TRIALS": "60", "OPTUNA_PRUNER": "none", "HPO_MAX_RETRIES": "3", "OMP_NUM_THREADS": "1"}
    rng = random.Random(7)
    workers = [start_worker(cwd, env) for _ in range(4)]
    kills = 0
    deadline = time.monotonic() + 180
    while kills < 20 and time.monotonic() < deadline:
        i = rng.randrange(len(workers))
        # Kill a worker only once it runs trials (start-up takes seconds on a loaded machine).
        log = cwd / "optuna_logs" / f"worker_{socket.gethostname()}_{workers[i].pid}.log"
        wait_for(lambda: log.is_file() and " started on " in log.read_text(), timeout=60, what="a trial")
        time.sleep(rng.uniform(0.0, 1.5))
        assert workers[i].poll() is None, "a worker stopped by itself: the study finished before the storm"
        workers[i].send_signal(signal.SIGKILL)
        workers[i].wait()
        kills += 1
        workers[i] = start_worker(cwd, env)
    for w in workers:
        w.kill()
        w.wait()
    assert kills == 20, f"{kills} kills before the deadline"
    # Let the study finish without kills.
    done = run_hpo(["run", "--workers", "2"], cwd, env, timeout=300)
    assert done.returncode == 0, done.stderr

    study = load_study(cwd / "optuna_journal/toy.journal", "toy")
    states = Counter(t.state.name for t in study.trials)
    assert states["RUNNING"] == 0, states
    assert states["COMPLETE"] == 60, states
    # Every result told COMPLETE (trial.json is written, fsynced, after the tell) is still there.
    by_number = {t.number: t for t in study.trials}
    records = [json.loads(p.read_text()) for p in (cwd / "optuna_runs/toy").glob("trial_*/trial.json")]
    told = [r for r in records if r["state"] == "COMPLETE"]
    assert told, "no side records"
    for r in told:
        assert by_number[r["number"]].state.name == "COMPLETE" and by_number[r["number"]].values == r["values"]
    assert len({r["number"] for r in records}) == len(records)
    # Every failure has a reason; lost trials were retried at most HPO_MAX_RETRIES times.
    for t in study.trials:
        if t.state.name == "FAIL":
            assert t.user_attrs.get("reason") == "worker lost", t.user_attrs
    lineage = Counter(t.user_attrs["retry_origin"] for t in study.trials if "retry_origin" in t.user_attrs)
    assert all(n <= 3 for n in lineage.values()), lineage
    assert states["FAIL"] >= 1  # the storm did hit trials in flight


def test_a_trial_whose_slurm_job_left_the_queue_is_failed_at_once(toy, monkeypatch: pytest.MonkeyPatch) -> None:
    """A RUNNING trial whose SLURM job (user attribute ``slurm_job_id``) is no longer in the
    queue is failed ``worker lost`` by the next reap, though its heartbeat is fresh, and
    retried with the same parameters; a trial whose job is still queued is left alone, and so
    is every trial while squeue cannot answer. ``squeue`` is a literal answer here."""
    from hpo.config.study import load_launch
    from hpo.errors import SchedulerError
    from hpo.study.shared import open_study
    from hpo.system import slurm
    from hpo.worker.recovery import reap, write_beat

    cwd, env = toy()
    settings, config = load_launch({}, {**env, "JOURNAL_DIR": str(cwd / "optuna_journal")}).one()
    shared = open_study(settings.spec, config)
    trials = {}
    for job in ("4711", "4712"):  # 4711 has left the queue (scancel, node failure); 4712 runs
        trial = shared.study.ask()
        trial.suggest_float("x", -5, 5)
        for key, value in {"worker": f"{job}_0", "host": "gpu-node-7", "pid": 4242, "slurm_job_id": job}.items():
            trial.set_user_attr(key, value)
        write_beat(settings.spec.beats_dir, trial._trial_id, f"{job}_0", time.time())  # alive by its heartbeat
        trials[job] = trial
    asked: list[list[str]] = []

    def unavailable(args: list[str], timeout: float) -> str:
        raise SchedulerError("squeue failed (1): slurm_load_jobs error: Unable to contact slurm controller")

    monkeypatch.setattr(slurm, "run_command", unavailable)
    assert reap(shared, "login-node") == []  # no answer from SLURM: judged by the heartbeat alone

    def squeue(args: list[str], timeout: float) -> str:
        asked.append(list(args))
        return "4712|4712|4712|RUNNING|hpo-optuna|5:02|1|gpu-node-7\n99|99|99|RUNNING|other|1:00|1|gpu-node-1\n"

    monkeypatch.setattr(slurm, "run_command", squeue)
    assert reap(shared, "login-node") == [trials["4711"].number]
    assert asked == [["squeue", "--noheader", "--format=%A|%F|%i|%T|%j|%M|%D|%R"]]
    study = load_study(settings.journal_path, "toy")
    gone, running = study.trials[trials["4711"].number], study.trials[trials["4712"].number]
    assert (gone.state.name, gone.user_attrs["reason"], running.state.name) == ("FAIL", "worker lost", "RUNNING")
    (retry,) = [t for t in study.trials if t.state.name == "WAITING"]
    assert (retry.system_attrs["fixed_params"], retry.user_attrs["retry_of"]) == (gone.params, gone.number)
    assert sorted(p.name for p in settings.spec.beats_dir.iterdir()) == [f"trial_{running._trial_id}.json"]


def test_preempted_physae_trial_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    env = clean_env(HPO_CONFIG=str(REPO / "configs/physae.yaml"), N_TRAIN="512", N_VAL="64", N_POINTS="64",
                    BATCH_SIZE="32", STAGEA_EPOCHS="2", STAGEB1_EPOCHS="2", STAGEB2_EPOCHS="2",
                    OPTUNA_PRUNER="none", MAX_TRIALS="1", OMP_NUM_THREADS="1")
    proc = start_worker(tmp_path, env)
    wait_for(lambda: "B1 epoch 1/2" in first_log(tmp_path), timeout=120, what="B1 epoch 1")
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    study = load_study(tmp_path / "optuna_journal/physae.journal", "physae")
    first = study.trials[0]
    assert first.state.name == "FAIL" and first.user_attrs["reason"] == "preempted"
    stopped_at = len((tmp_path / "optuna_runs/physae/trial_0/metrics.jsonl").read_text().splitlines())
    assert 3 <= stopped_at < 6

    result = run_hpo(["worker"], tmp_path, env, timeout=300)
    assert result.returncode == 0, result.stderr
    study = load_study(tmp_path / "optuna_journal/physae.journal", "physae")
    retry = study.trials[1]
    assert retry.state.name == "COMPLETE" and retry.user_attrs["retry_of"] == 0
    assert retry.params == first.params
    # It resumed: the epochs run before preemption were not run again.
    resumed = json.loads((tmp_path / "optuna_runs/physae/trial_1/result.json").read_text())
    assert resumed["resumed_from"] is not None
    steps = [json.loads(x)["global_step"] for x in
             (tmp_path / "optuna_runs/physae/trial_1/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
    log = (tmp_path / "optuna_runs/physae/trial_1/trial.log").read_text()
    assert "A epoch 1/2" not in log  # not trained again
    assert Counter(t.state.name for t in study.trials) == Counter({"FAIL": 1, "COMPLETE": 1})


@pytest.mark.parametrize("tail", [b'{"op_code": 5, "worker_id": "x", "tri', b"\0" * 64, b"garbage\n"])
def test_worker_repairs_a_damaged_tail_and_goes_on(toy, tail: bytes) -> None:
    cwd, env = toy(TOY_STEP_SECONDS="0.01")
    env = {**env, "OPTUNA_PRUNER": "none"}
    assert run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "3"}).returncode == 0
    journal = cwd / "optuna_journal/toy.journal"
    clean = journal.read_bytes()
    with journal.open("ab") as handle:  # a writer that died mid-append
        handle.write(tail)
    result = run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "5"})
    assert result.returncode == 0, result.stderr
    assert journal.read_bytes().startswith(clean)
    backups = list(journal.parent.glob("toy.journal.tail-*.bak"))
    assert len(backups) == 1 and backups[0].read_bytes() == tail
    study = load_study(journal, "toy")
    assert Counter(t.state.name for t in study.trials) == Counter({"COMPLETE": 5})
    doctor = run_hpo(["doctor"], cwd, env)
    assert doctor.returncode == 0 and "damage: none" in doctor.stdout


def test_middle_damage_is_named_and_repaired(toy) -> None:
    """Bytes overwritten in the middle: the worker refuses with the byte and line, `hpo
    doctor` names the line, `hpo repair` needs --yes, then quarantines exactly those bytes."""
    cwd, env = toy(TOY_STEP_SECONDS="0.01")
    env = {**env, "OPTUNA_PRUNER": "none"}
    assert run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "4"}).returncode == 0
    journal = cwd / "optuna_journal/toy.journal"
    lines = journal.read_bytes().split(b"\n")
    offset, length = sum(len(line) + 1 for line in lines[:5]), len(lines[5])
    lines[5] = b"#" * length  # bytes overwritten in the middle
    journal.write_bytes(b"\n".join(lines))
    damage = f"line 6, byte {offset} ({length} bytes, middle): not an Optuna record (not a JSON object)"
    refused = run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "6"})
    assert (refused.returncode, refused.stderr) == (3, (
        f"hpo: error: optuna_journal/toy.journal: damaged journal record at byte {offset} (line 6): not an Optuna "
        "record (not a JSON object). Optuna cannot load this journal as it is. Run `hpo doctor` to see which trials "
        "are affected, then stop every worker and run `hpo repair` to quarantine the damage (a full backup is "
        "kept).\n"))
    doctor = run_hpo(["doctor"], cwd, env)
    assert doctor.returncode == 3 and f"\n  {damage}\n" in doctor.stdout, doctor.stdout
    not_yet = run_hpo(["repair"], cwd, env)  # not without --yes: workers must be stopped
    assert (not_yet.returncode, not_yet.stderr) == (2, "not repaired: stop every worker of the study, then rerun "
                                                       "with --yes\n")
    repaired = run_hpo(["repair", "--yes"], cwd, env)
    assert repaired.returncode == 0, repaired.stderr
    assert run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "6"}).returncode == 0
    study = load_study(journal, "toy")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 6
    (quarantine,) = journal.parent.glob("toy.journal.quarantine-*.jsonl")
    (record,) = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert (record["offset"], record["line"], record["length"], record["action"]) == (offset, 6, length, "quarantine")
    assert base64.b64decode(record["base64"]) == b"#" * length


def files_in(folder: Path) -> dict[str, int]:
    """Name -> modification time of each file in ``folder`` ({} when there is no folder)."""
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.exists() else {}


def journal_records(journal: Path) -> list[dict]:
    return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]


def test_stalled_worker_learns_its_trial_was_reaped_and_goes_on(toy) -> None:
    """SIGSTOP a worker mid-trial past HPO_STALE_SECONDS; another process reaps and
    retries its trial; on SIGCONT the worker does not crash, records nothing more for
    that trial (journal, run directory), logs one WARNING naming the retry, and goes on."""
    cwd, env = toy(TOY_STEP_SECONDS="1.0")  # 3 s trials: the stop lands mid-trial
    env = {**env, "MAX_TRIALS": "4", "OPTUNA_PRUNER": "none", "OPTUNA_SAMPLER": "random",
           "HPO_HEARTBEAT_SECONDS": "1", "HPO_STALE_SECONDS": "3"}
    proc = start_worker(cwd, env)
    wait_for(lambda: "trial 0 started" in first_log(cwd), what="trial 0 to start")
    time.sleep(0.5)
    proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(4.5)  # past HPO_STALE_SECONDS: its heartbeat is stale
        reaped = run_hpo(["reap"], cwd, env)
        assert (reaped.returncode, reaped.stdout) == (0, "reaped 1 lost trial(s): 0\n"), reaped.stderr
        journal = cwd / "optuna_journal/toy.journal"
        at_reap = len(journal_records(journal))
        run_dir = cwd / "optuna_runs/toy/trial_0"
        files_at_reap = files_in(run_dir)  # none: made with its first metrics line, 1 s into the trial
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "UpdateFinishedTrialError" not in first_log(cwd)

    log = first_log(cwd)
    warnings = [line for line in log.splitlines() if " WARNING " in line and "trial 0 was ended by another worker" in line]
    assert len(warnings) == 1, log
    study = load_study(journal, "toy")
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 0)
    assert f"its retry is trial {retry.number}" in warnings[0]
    # Nothing more about trial 0 in the journal after the reap; its run directory untouched.
    trial0_id = study.trials[0]._trial_id
    later = journal_records(journal)[at_reap:]
    assert not [r for r in later if r.get("trial_id") == trial0_id], later
    assert files_in(run_dir) == files_at_reap  # not even made after the reap
    assert not (run_dir / "trial.json").exists()
    # The trial stays FAIL "worker lost"; the study ends at exactly MAX_TRIALS, none RUNNING.
    assert (study.trials[0].state.name, study.trials[0].user_attrs["reason"]) == ("FAIL", "worker lost")
    states = Counter(t.state.name for t in study.trials)
    assert states["COMPLETE"] == 4 and states["RUNNING"] == 0, states
    assert retry.state.name == "COMPLETE"

"""Journal records and bytes per trial: an ``hpo worker`` against plain Optuna's ``optimize``
on the same objective, in the same run (issue 14, item 3).

Two objectives, each run both ways into a fresh journal, ``--trials`` trials, one worker,
no pruner (a pruned trial adds one record in hpo: its reason):

- ``toy4``: four float parameters, three reported steps, 0.2 s per trial (so a 0.1 s
  heartbeat period would beat ~2 times a trial, were beats still journal records);
- ``physae``: the PhysAE objective (twelve parameters, a report per epoch) on the tiny
  preset (N_TRAIN=256, N_VAL=64, N_POINTS=64, one epoch per stage).

Plain Optuna calls the same objective function through a minimal context whose
``report`` is ``trial.report`` + ``should_prune``; hpo runs it as ``hpo worker`` does.
Counts are per finished trial, by op code; the study's own records (creation, study
attributes) are counted apart.

    python benchmarks/bench_records.py --trials 20
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
OPS = {0: "CREATE_STUDY", 1: "DELETE_STUDY", 2: "SET_STUDY_USER_ATTR", 3: "SET_STUDY_SYSTEM_ATTR",
       4: "CREATE_TRIAL", 5: "SET_TRIAL_PARAM", 6: "SET_TRIAL_STATE_VALUES", 7: "SET_TRIAL_INTERMEDIATE_VALUE",
       8: "SET_TRIAL_USER_ATTR", 9: "SET_TRIAL_SYSTEM_ATTR"}
TOY = """\
study_name: bench
objective: bench_records:toy4
settings: {sampler: tpe, pruner: none}
space:
  a: {type: float, low: -1, high: 1}
  b: {type: float, low: -1, high: 1}
  c: {type: float, low: 1.0e-3, high: 1, log: true}
  d: {type: float, low: 0, high: 5}
"""
TINY_PHYSAE = {"N_TRAIN": "256", "N_VAL": "64", "N_POINTS": "64", "BATCH_SIZE": "64",
               "STAGEA_EPOCHS": "1", "STAGEB1_EPOCHS": "1", "STAGEB2_EPOCHS": "1"}


def toy4(params: dict[str, Any], ctx: Any) -> float:
    value = params["a"] ** 2 + params["b"] ** 2 + params["c"] + (params["d"] - 2) ** 2
    for step in range(1, 4):
        time.sleep(float(os.environ.get("TOY_STEP_SECONDS", "0.066")))
        ctx.report(step, value + 1 / step)
    return value


def count(journal: Path) -> tuple[Counter[str], int, int, int]:
    """Records by op name (trial records only), trial-record bytes, finished trials, study records."""
    ops: Counter[str] = Counter()
    trial_bytes = study_records = 0
    states: dict[int, int] = {}
    for line in journal.read_bytes().splitlines(keepends=True):
        record = json.loads(line)
        op = record["op_code"]
        if op in (0, 1, 2, 3):
            study_records += 1
            continue
        ops[OPS[op]] += 1
        trial_bytes += len(line)
        if op == 6:
            states[record["trial_id"]] = record["state"]
    finished = sum(1 for s in states.values() if s in (1, 2))
    return ops, trial_bytes, finished, study_records


def run_hpo(root: Path, env: dict[str, str], config: Path, trials: int) -> Path:
    from hpo.config.environment import without_settings
    from hpo.physae.settings import SETTINGS as PHYSAE_SETTINGS

    child = {**without_settings(os.environ, PHYSAE_SETTINGS), **env, "HPO_CONFIG": str(config), "MAX_TRIALS": str(trials),
             "JOURNAL_DIR": str(root / "journal"), "LOG_DIR": str(root / "logs"), "TRIAL_OUTPUT": str(root / "runs"),
             "HPO_EXPORT_AT_END": "0", "OMP_NUM_THREADS": "1",
             "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "hpo", "worker", "--quiet"], cwd=root, env=child,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    name = "bench" if config.name == "toy.yaml" else "physae"
    return root / "journal" / f"{name}.journal"


class _Context:
    """What plain Optuna hands the same objective: report -> trial.report + should_prune."""

    def __init__(self, trial: Any, run_dir: Path, options: dict[str, Any], settings: Any) -> None:
        import optuna

        self._trial, self.run_dir, self.options, self.settings = trial, run_dir, options, settings
        self.number, self.device, self.resume_dir, self.fixed = trial.number, "cpu", None, {}
        self.logger = logging.getLogger("bench")
        self.setup: dict[str, Any] = {}
        self._pruned = optuna.TrialPruned

    def report(self, step: int, value: float) -> None:
        self._trial.report(value, step)
        if self._trial.should_prune():
            raise self._pruned()

    def check_stop(self) -> None:
        return None

    def stop_requested(self) -> None:
        return None

    def time_left(self) -> None:
        return None

    def set_user_attr(self, key: str, value: Any) -> None:
        self._trial.set_user_attr(key, value)

    def log_metrics(self, step: int, **metrics: Any) -> None:
        return None


def run_plain(root: Path, env: dict[str, str], config: Path, trials: int) -> Path:
    import optuna

    from hpo.config.space import suggest
    from hpo.config.study import load_launch

    os.environ.update(env)
    settings, cfg = load_launch({"config": str(config)}, {**env, "HPO_CONFIG": str(config)}).one()
    objective = cfg.load_objective()
    journal = root / "plain.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="plain", storage=storage, directions=list(cfg.directions),
                                sampler=optuna.samplers.TPESampler(seed=0), pruner=optuna.pruners.NopPruner())
    options = {**cfg.objective_args, **settings.objective}

    def wrapped(trial: optuna.Trial) -> Any:
        params = suggest(trial, cfg.space, settings.fixed_params())
        run_dir = root / "plain_runs" / f"trial_{trial.number}"
        run_dir.mkdir(parents=True, exist_ok=True)
        return objective(params, _Context(trial, run_dir, options, settings))  # type: ignore[arg-type]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(wrapped, n_trials=trials)
    return journal


def table(rows: list[tuple[str, str, Counter[str], int, int, int]]) -> str:
    ops = sorted({op for row in rows for op in row[2]}, key=lambda o: list(OPS.values()).index(o))
    head = ["objective", "writer", "records / trial", *[o.lower() for o in ops], "bytes / trial", "study records"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, writer, counter, nbytes, finished, study in rows:
        per = [f"{counter[o] / finished:.2f}" for o in ops]
        lines.append(f"| {name} | {writer} | {sum(counter.values()) / finished:.2f} | " + " | ".join(per)
                     + f" | {nbytes / finished:.0f} | {study} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--heartbeat", type=float, default=0.1, help="HPO_HEARTBEAT_SECONDS of the hpo runs")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start; {args.trials} trials each")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "toy.yaml").write_text(TOY)
        beat = {"HPO_HEARTBEAT_SECONDS": str(args.heartbeat), "HPO_STALE_SECONDS": str(max(3 * args.heartbeat, 1))}
        cases = [("toy4", root / "toy.yaml", {}), ("physae", REPO / "configs/physae.yaml", TINY_PHYSAE)]
        for name, config, env in cases:
            for writer, run in (("plain optuna", run_plain), ("hpo worker", run_hpo)):
                folder = root / name / writer.replace(" ", "_")
                folder.mkdir(parents=True)
                journal = run(folder, {**env, **beat, "OPTUNA_PRUNER": "none"}, config, args.trials)
                rows.append((name, writer, *count(journal)))
    print(table(rows))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

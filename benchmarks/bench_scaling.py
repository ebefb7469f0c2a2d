"""Scaling on the dev SLURM cluster: N workers (one sbatch job, N tasks) running
fixed-duration trials; trials/s against the ideal N / duration.

    bash slurm/dev-cluster/cluster.sh start
    python benchmarks/bench_scaling.py --workers 1 2 4 8 --seconds 2 --per-worker 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parent.parent
SLEEP_OBJECTIVE = '''
import os, time
def objective(params, ctx=None):
    time.sleep(float(os.environ["SLEEP_SECONDS"]))
    return float(params["x"])
'''
CONFIG = "objective: sleep_objective:objective\nspace:\n  x: {type: float, low: 0.0, high: 1.0}\n"


def run(root: Path, n: int, seconds: float, per_worker: int) -> tuple[float, float, float]:
    name = f"scale{n}"
    env = {**os.environ, "PYTHONPATH": str(root), "SLEEP_SECONDS": str(seconds), "HPO_CONFIG": "scale.yaml",
           "STUDY_NAME": name, "MAX_TRIALS": str(n * per_worker), "OPTUNA_PRUNER": "none",
           "OPTUNA_SAMPLER": "random", "HPO_PYTHON": sys.executable, "HPO_EXPORT_AT_END": "0"}
    # Sleeping workers need no GPU (the dev cluster declares 4): --gpus-per-task=0.
    job = subprocess.run(["sbatch", "--parsable", f"--ntasks={n}", "--gpus-per-task=0", "--cpus-per-task=1", "--mem-per-cpu=200M",
                          "--time=10", "slurm/bash_optuna.sh"], cwd=root, env=env, text=True,
                         capture_output=True, check=True).stdout.strip()
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        time.sleep(0.5)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(root / "optuna_journal" / f"{name}.journal")))
    trials = optuna.load_study(study_name=name, storage=storage).trials
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    span = (end - start).total_seconds()
    rate = len(trials) / span
    ideal = n / seconds
    return rate, ideal, rate / ideal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--per-worker", type=int, default=8)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{'workers':>7} {'trials/s':>9} {'ideal':>7} {'efficiency':>11}")
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "slurm", root / "slurm")
        (root / "logs").mkdir()
        (root / "sleep_objective.py").write_text(SLEEP_OBJECTIVE)
        (root / "scale.yaml").write_text(CONFIG)
        for n in args.workers:
            rate, ideal, eff = run(root, n, args.seconds, args.per_worker)
            print(f"{n:>7} {rate:>9.3f} {ideal:>7.3f} {100 * eff:>10.1f}%", flush=True)


if __name__ == "__main__":
    main()

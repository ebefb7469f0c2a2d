"""One worker, local disk, ``--trials`` (1,000) null trials: the whole process, start-up
included, ``hpo worker`` against a plain Optuna script, as paired runs (A B A B ...).

Each run starts on a fresh journal in its own temporary folder. The objective returns
its one parameter; random sampler, no pruner. hpo writes what a worker always writes (the
worker log, the journal's record lock or lock file); a null trial keeps nothing, so it
has no run directory (hpo.worker.run_dir). ``--run-dir`` makes the objective write one
small file into ``ctx.run_dir``, the cost of a trial that keeps something (its folder and
hpo's four files). ``HPO_EXPORT_AT_END=0``: the end-of-study exports are not counted.

    python benchmarks/bench_null_trials.py --trials 1000 --pairs 5 [--run-dir]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

OBJECTIVE = "def objective(params, ctx):\n    return params['x']\n"
WRITES = "def objective(params, ctx):\n    (ctx.run_dir / 'out.txt').write_text('x')\n    return params['x']\n"
CONFIG = "study_name: nulltrial\nobjective: null_trial:objective\nspace:\n  x: {type: float, low: 0.0, high: 1.0}\n"
PLAIN = r'''
import sys, optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
optuna.logging.set_verbosity(optuna.logging.WARNING)
path = sys.argv[1]
study = optuna.create_study(study_name="nulltrial", storage=JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path))),
                            sampler=optuna.samplers.RandomSampler(seed=0))
study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=int(sys.argv[2]))
'''


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.monotonic()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def one_pair(trials: int, folder: Path, run_dir: bool) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(prefix="null-", dir=folder))
    try:
        (work / "null_trial.py").write_text(WRITES if run_dir else OBJECTIVE)
        (work / "null.yaml").write_text(CONFIG)
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{work}", "HPO_CONFIG": str(work / "null.yaml"),
               "MAX_TRIALS": str(trials), "OPTUNA_SAMPLER": "random", "OPTUNA_PRUNER": "none", "OPTUNA_SEED": "0",
               "HPO_DEVICE": "cpu", "HPO_EXPORT_AT_END": "0", "OMP_NUM_THREADS": "1"}
        hpo = timed([sys.executable, "-m", "hpo", "worker", "--quiet"], work, env)
        plain = timed([sys.executable, "-c", PLAIN, str(work / "plain.journal"), str(trials)], work, env)
        return hpo, plain
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--run-dir", action="store_true", help="the objective writes a file into ctx.run_dir")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start; {args.trials} null trials"
          f"{' writing into their run directory' if args.run_dir else ''}, {args.folder}")
    pairs = [one_pair(args.trials, args.folder, args.run_dir) for _ in range(args.pairs)]
    hpo, plain = [p[0] for p in pairs], [p[1] for p in pairs]
    ratios = [h / p for h, p in pairs]
    print(f"load {os.getloadavg()[0]:.1f} at the end")
    print("| | median s | min s | max s |")
    print("|---|---:|---:|---:|")
    for name, values in (("hpo worker", hpo), ("plain Optuna", plain), ("hpo / plain (paired)", ratios)):
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()

"""Late joiner: time from a worker's start to its first trial running, on big journals.

Compares `hpo worker` with a plain Optuna script doing the same (load the study,
optimize one trial), both as fresh processes on a copy of the same journal.

    python benchmarks/bench_join.py --sizes 5000 20000
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_overhead import STUDY, prefill  # noqa: E402

STAMP_OBJECTIVE = '''
import os, time
def objective(params, ctx=None):
    with open(os.environ["STAMP_FILE"], "a") as f:
        f.write(f"{time.time()}\\n")
    return float(params["x"])
'''
PLAIN = '''
import os, time, optuna
from stamp_objective import objective
optuna.logging.set_verbosity(optuna.logging.WARNING)
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
study = optuna.load_study(study_name="bench", storage=JournalStorage(JournalFileBackend(os.environ["JOURNAL"])),
                          sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, constant_liar=True))
study.optimize(lambda t: objective({"x": t.suggest_float("x", 0.0, 1.0)}), n_trials=1)
'''
CONFIG = "objective: stamp_objective:objective\nspace:\n  x: {type: float, low: 0.0, high: 1.0}\n"


def first_trial_seconds(cmd: list[str], env: dict[str, str], stamp: Path) -> float:
    stamp.unlink(missing_ok=True)
    start = time.time()
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    return float(stamp.read_text().split()[0]) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'trials in study':>15} {'plain optuna s':>15} {'hpo worker s':>13}")
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        root = Path(tmp)
        (root / "stamp_objective.py").write_text(STAMP_OBJECTIVE)
        (root / "plain.py").write_text(PLAIN)
        (root / "join.yaml").write_text(CONFIG)
        for n in args.sizes:
            seed = root / f"seed{n}" / f"{STUDY}.journal"
            seed.parent.mkdir()
            prefill(seed, n)
            plain_times, hpo_times = [], []
            for i in range(args.repeat):
                for kind in ("plain", "hpo"):
                    journal = root / f"{kind}{n}_{i}" / f"{STUDY}.journal"
                    journal.parent.mkdir()
                    shutil.copy(seed, journal)
                    env = {**os.environ, "PYTHONPATH": str(root), "STAMP_FILE": str(root / "stamp"),
                           "JOURNAL": str(journal), "HPO_CONFIG": str(root / "join.yaml"), "STUDY_NAME": STUDY,
                           "JOURNAL_DIR": str(journal.parent), "MAX_TRIALS": str(n + 1), "HPO_DEVICE": "cpu",
                           "HPO_EXPORT_AT_END": "0",
                           "LOG_DIR": str(journal.parent / "logs"), "TRIAL_OUTPUT": str(journal.parent / "runs"),
                           "OPTUNA_PRUNER": "none"}
                    cmd = [sys.executable, str(root / "plain.py")] if kind == "plain" else \
                        [sys.executable, "-m", "hpo", "worker", "--quiet"]
                    (plain_times if kind == "plain" else hpo_times).append(
                        first_trial_seconds(cmd, env, root / "stamp"))
            print(f"{n:>15} {sorted(plain_times)[len(plain_times) // 2]:>15.2f} "
                  f"{sorted(hpo_times)[len(hpo_times) // 2]:>13.2f}", flush=True)


if __name__ == "__main__":
    main()

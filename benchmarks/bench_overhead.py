"""Overhead per trial: an hpo worker against a plain Optuna optimize loop on the same journal.

Both run a null objective on a copy of the same pre-filled journal (N finished trials),
in-process, and the cost per trial is the median gap between consecutive objective calls
(so journal replay at start-up is excluded: see bench_late_joiner.py for that).

    python benchmarks/bench_overhead.py --sizes 1000 5000 20000 --trials 200
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
import null_objective  # noqa: E402

from hpo.config.identity import WorkerIdentity
from hpo.config.settings import resolve  # noqa: E402
from hpo.config.study import Launch, parse_config  # noqa: E402
from hpo.journal.backend import open_journal  # noqa: E402
from hpo.study.algorithms import make_sampler
from hpo.worker.loop import Worker  # noqa: E402

STUDY = "bench"
CONFIG = {"objective": "null_objective:objective", "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}


def prefill(path: Path, n: int) -> None:
    """A study with n COMPLETE trials (one journal record each)."""
    storage = open_journal(path)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    rng = optuna.samplers.RandomSampler(seed=0)._rng.rng
    trials = [optuna.trial.create_trial(params={"x": float(v)}, distributions=dist, value=float(v))
              for v in rng.uniform(0, 1, n)]
    study.add_trials(trials)


def per_trial_ms() -> float:
    calls = null_objective.CALLS
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    null_objective.CALLS = []
    return 1000 * statistics.median(gaps)


def run_plain(path: Path, k: int, sampler: str) -> float:
    settings = resolve({}, {"OPTUNA_SAMPLER": sampler}, {}, Path("bench.yaml"))
    study = optuna.load_study(study_name=STUDY, storage=open_journal(path), sampler=make_sampler(settings.sampler, 0))
    null_objective.CALLS = []
    study.optimize(lambda t: null_objective.objective({"x": t.suggest_float("x", 0.0, 1.0)}), n_trials=k)
    return per_trial_ms()


def run_hpo(path: Path, work: Path, n: int, k: int, sampler: str) -> float:
    config = parse_config(Path("bench.yaml"), CONFIG)
    env = {"OPTUNA_SAMPLER": sampler, "OPTUNA_PRUNER": "none", "MAX_TRIALS": str(n + k),
           "JOURNAL_DIR": str(path.parent), "STUDY_NAME": STUDY, "LOG_DIR": str(work / "logs"),
           "TRIAL_OUTPUT": str(work / "runs"), "HPO_DEVICE": "cpu",
           "HPO_EXPORT_AT_END": "0"}  # the study's cost per trial, not its exports
    settings = resolve({}, env, {}, Path("bench.yaml"))
    identity = WorkerIdentity.from_env({}, "bench", 1)
    null_objective.CALLS = []
    Worker(Launch(config, ((settings, config),)), identity).run()
    return per_trial_ms()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--samplers", nargs="+", default=["random", "tpe"])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hpo").setLevel(logging.WARNING)
    print(f"{'trials in study':>15} {'sampler':>8} {'plain ms/trial':>15} {'hpo ms/trial':>13} {'hpo/plain':>10}")
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        root = Path(tmp)
        for n in args.sizes:
            seed_file = root / f"seed_{n}.journal"
            t0 = time.perf_counter()
            prefill(seed_file, n)
            print(f"# prefilled {n} trials in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            for sampler in args.samplers:
                plain_path, hpo_path = root / f"p{n}{sampler}" / f"{STUDY}.journal", root / f"h{n}{sampler}" / f"{STUDY}.journal"
                for p in (plain_path, hpo_path):
                    p.parent.mkdir()
                    shutil.copy(seed_file, p)
                plain = run_plain(plain_path, args.trials, sampler)
                hpo = run_hpo(hpo_path, hpo_path.parent, n, args.trials, sampler)
                print(f"{n:>15} {sampler:>8} {plain:>15.2f} {hpo:>13.2f} {hpo / plain:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()

"""Search efficiency: trial-seconds TPE + Hyperband needs to match random search's best of 40 trials.

For each seed, two studies run one after the other, each as one real ``hpo worker``
process on a tiny PhysAE (N_TRAIN=512, N_VAL=128, N_POINTS=64, BATCH_SIZE=64):

- random search: ``OPTUNA_SAMPLER=random OPTUNA_PRUNER=none MAX_TRIALS=40``;
- TPE + Hyperband: ``OPTUNA_SAMPLER=tpe OPTUNA_PRUNER=hyperband MAX_TRIALS=60``.

The search space is ``configs/physae.yaml``'s with the three epoch ranges divided by
about 5 (A 15-30 -> 3-6, B1 8-20 -> 2-4, B2 10-25 -> 2-5) so a trial takes ~4-5 s on
one CPU core; every other range is the seed's, exactly. The warm-start trial is left
out (its 22/12/18 epochs are outside the scaled ranges, and it would hand both
searches the same known-good point). Trials are read back with plain Optuna;
trial-seconds = the running sum of ``datetime_complete - datetime_start`` over the
trials in start order (pruned ones count what they ran).

target = the best value random search reached in its 40 trials. Reported per seed:
random's trial-seconds to reach its own best, TPE + Hyperband's trial-seconds until
its best-so-far <= target ("not reached" otherwise), and their ratio (goal <= 1/3).

    python benchmarks/bench_search.py --seeds 0 1 2 --threads 1    # ~17 min on 2 shared cores
    python benchmarks/bench_search.py --analyze DIR --seeds 0 1 2   # re-read the journals of a run
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

REPO = Path(__file__).resolve().parent.parent
SEED_CONFIG = REPO / "configs" / "physae.yaml"
SCALED_EPOCHS = {"A": (3, 6), "B1": (2, 4), "B2": (2, 5)}  # seed ranges 15-30, 8-20, 10-25 divided by ~5
TINY = {"N_TRAIN": "512", "N_VAL": "128", "N_POINTS": "64", "BATCH_SIZE": "64"}
GOAL_RATIO = 1 / 3


@dataclass(frozen=True)
class Curve:
    """One study's trials in start order."""

    name: str
    trials: list[FrozenTrial]

    @property
    def seconds(self) -> list[float]:
        return [(t.datetime_complete - t.datetime_start).total_seconds() for t in self.trials]  # type: ignore[operator]

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds)

    def best(self) -> float:
        return min(t.value for t in self.trials if t.state == TrialState.COMPLETE and t.value is not None)

    def seconds_to_reach(self, target: float) -> tuple[float | None, int | None]:
        """Cumulative trial-seconds (and trials) until a COMPLETE trial's value <= target."""
        elapsed = 0.0
        for i, (t, s) in enumerate(zip(self.trials, self.seconds), start=1):
            elapsed += s
            if t.state == TrialState.COMPLETE and t.value is not None and t.value <= target:
                return elapsed, i
        return None, None

    def best_within(self, seconds: float) -> float | None:
        """Best COMPLETE value among the trials that ended within ``seconds`` trial-seconds."""
        elapsed, best = 0.0, None
        for t, s in zip(self.trials, self.seconds):
            elapsed += s
            if elapsed > seconds:
                break
            if t.state == TrialState.COMPLETE and t.value is not None:
                best = t.value if best is None else min(best, t.value)
        return best

    def counts(self) -> str:
        states = [t.state for t in self.trials]
        return f"{states.count(TrialState.COMPLETE)} complete, {states.count(TrialState.PRUNED)} pruned, " \
               f"{states.count(TrialState.FAIL)} failed"


def tiny_config(path: Path) -> Path:
    """``configs/physae.yaml`` with the epoch ranges scaled down and no warm start."""
    raw: dict[str, Any] = yaml.safe_load(SEED_CONFIG.read_text())
    config = copy.deepcopy(raw)
    for stage, (low, high) in SCALED_EPOCHS.items():
        config["space"][stage]["epochs"] = {"type": "int", "low": low, "high": high}
    config.pop("enqueue", None)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without hpo or SLURM variables, plus ``extra``."""
    from hpo.settings import without_settings

    env = without_settings(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def study_name(kind: str, seed: int) -> str:
    return f"{kind}_s{seed}"


def run_study(work: Path, config: Path, kind: str, seed: int, trials: int, threads: int) -> float:
    """One ``hpo worker`` process running a whole study; returns its wall seconds."""
    sampler, pruner = ("random", "none") if kind == "random" else ("tpe", "hyperband")
    env = clean_env({**TINY, "HPO_CONFIG": str(config), "STUDY_NAME": study_name(kind, seed),
                     "JOURNAL_DIR": str(work / "journal"), "LOG_DIR": str(work / "logs"),
                     "TRIAL_OUTPUT": str(work / "runs"), "OPTUNA_SAMPLER": sampler, "OPTUNA_PRUNER": pruner,
                     "OPTUNA_SEED": str(seed), "MAX_TRIALS": str(trials), "HPO_DEVICE": "cpu",
                     "OMP_NUM_THREADS": str(threads)})  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hpo", "worker", "--quiet"], cwd=work, env=env, check=False,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"hpo worker ({kind}, seed {seed}) exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - t0


def load_curve(work: Path, kind: str, seed: int) -> Curve:
    name = study_name(kind, seed)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(work / "journal" / f"{name}.journal")))
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    done = [t for t in trials if t.state.is_finished() and t.datetime_start and t.datetime_complete]
    return Curve(name, sorted(done, key=lambda t: t.datetime_start))  # type: ignore[arg-type, return-value]


def fmt(value: float | None, spec: str = ".1f", missing: str = "not reached") -> str:
    return missing if value is None else format(value, spec)


def report(work: Path, seeds: list[int], random_trials: int) -> None:
    header = (f"{'seed':>4} {'random best':>11} {'random s to best':>16} {'random s (40)':>13} "
              f"{'TPE+HB best':>11} {'TPE+HB s to target':>18} {'trials':>6} {'ratio':>6} {'ratio vs 40':>11} "
              f"{'TPE+HB best @1/3':>16}")
    print("\n" + header)
    ratios: list[float | None] = []
    ratios_full: list[float | None] = []
    details = []
    for seed in seeds:
        rnd, tpe = load_curve(work, "random", seed), load_curve(work, "tpe", seed)
        rnd = Curve(rnd.name, rnd.trials[:random_trials])
        target = rnd.best()
        rnd_seconds, _ = rnd.seconds_to_reach(target)
        tpe_seconds, tpe_trials = tpe.seconds_to_reach(target)
        ratio = None if tpe_seconds is None or not rnd_seconds else tpe_seconds / rnd_seconds
        ratio_full = None if tpe_seconds is None else tpe_seconds / rnd.total_seconds
        ratios.append(ratio)
        ratios_full.append(ratio_full)
        print(f"{seed:>4} {target:>11.4f} {fmt(rnd_seconds):>16} {rnd.total_seconds:>13.1f} {tpe.best():>11.4f} "
              f"{fmt(tpe_seconds):>18} {fmt(tpe_trials, 'd', '-'):>6} {fmt(ratio, '.2f', '-'):>6} "
              f"{fmt(ratio_full, '.2f', '-'):>11} {fmt(tpe.best_within(rnd.total_seconds * GOAL_RATIO), '.4f', '-'):>16}")
        details.append(f"seed {seed}: random {len(rnd.trials)} trials ({rnd.counts()}), {rnd.total_seconds:.1f} "
                       f"trial-s; TPE+HB {len(tpe.trials)} trials ({tpe.counts()}), {tpe.total_seconds:.1f} trial-s")

    def median(values: list[float | None]) -> str:
        # "not reached" counts as infinitely bad, so it can be the median
        ordered = sorted(values, key=lambda v: float("inf") if v is None else v)
        mid = ordered[len(ordered) // 2] if len(ordered) % 2 else None
        if len(ordered) % 2 == 0:
            a, b = ordered[len(ordered) // 2 - 1], ordered[len(ordered) // 2]
            mid = None if a is None or b is None else (a + b) / 2
        return fmt(mid, ".2f", "not reached")

    print("\n".join(details))
    print(f"median ratio (TPE+HB s to target / random s to its best): {median(ratios)} "
          f"(goal <= {GOAL_RATIO:.2f})")
    print(f"median ratio (TPE+HB s to target / random's 40-trial s): {median(ratios_full)}")
    print("@1/3: TPE+HB's best among the trials that ended within 1/3 of random's 40-trial seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--random-trials", type=int, default=40)
    parser.add_argument("--tpe-trials", type=int, default=60)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP_NUM_THREADS of each worker")
    parser.add_argument("--work", type=Path, default=None, help="folder of the studies (default: a new one in the temp dir, kept)")
    parser.add_argument("--analyze", type=Path, default=None, help="only re-read the journals in this folder")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.analyze is not None:
        report(args.analyze, args.seeds, args.random_trials)
        return
    work = (args.work or Path(tempfile.gettempdir()) / f"bench_search_{time.strftime('%Y%m%d_%H%M%S')}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    config = tiny_config(work / "physae_tiny_search.yaml")
    print(f"# work folder {work}; {os.cpu_count()} cores, OMP_NUM_THREADS={args.threads}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for seed in args.seeds:
        for kind, trials in (("random", args.random_trials), ("tpe", args.tpe_trials)):
            wall = run_study(work, config, kind, seed, trials, args.threads)
            print(f"# seed {seed} {kind}: {trials} trials in {wall:.0f} s wall; load average "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    report(work, args.seeds, args.random_trials)


if __name__ == "__main__":
    main()

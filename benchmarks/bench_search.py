"""Search efficiency: trial-seconds each sampler/pruner needs to reach one fixed target, over 20+ seeds.

Methods (``METHODS``), each through hpo's own sampler and pruner tables
(``hpo.study.shared.make_sampler``/``make_pruner``, i.e. ``OPTUNA_SAMPLER``/``OPTUNA_PRUNER``):
random search; TPE without pruning; TPE + Hyperband (hpo's default); TPE + median
pruning; TPE + the stage-end median rule (``OPTUNA_PRUNER=stage``, hpo.study.pruners).

How a trial runs: in-process, on an in-memory Optuna study, through hpo's own
``hpo.worker.trial.TrialRunner.run``: hpo's ``suggest``, the ``TrialContext`` it builds,
PhysAE's ``ctx.report`` -> ``trial.report``/``should_prune`` (``TrialRunner._report``),
the outcome policy (``hpo.worker.outcome``) and ``tell``. Left out: the journal file, the
heartbeat thread and the slot lock (stubs below), which cost the same for every
method; one ``hpo worker`` process per study would add seconds of start-up per study
and would not let a study stop at the target or be timed in CPU seconds.

Preset (``PRESET``): PhysAE with N_TRAIN/N_VAL/N_POINTS/BATCH_SIZE small enough for a
~1-2 s trial on one CPU core, and ``configs/physae.yaml``'s space with the three epoch
ranges divided by 5 (A 15-30 -> 3-6, B1 8-20 -> 2-4, B2 10-25 -> 2-5: the seed's
proportions); every other range is the seed's. No warm-start trial.

Trial-seconds: the CPU seconds of the process over ``ask`` + ``TrialRunner.run`` (the
sampler's time included); one torch thread per process, so CPU seconds are the work
done and do not grow when other processes share the cores (wall seconds are recorded
too). Pruned trials count what they ran.

Protocol, all in one run (so every ratio is taken within the run):

1. random search, ``--random-trials`` (40) trials per seed;
   target = the median over seeds of random's best value after those 40 trials;
   R = random's median trial-seconds for 40 trials.
2. per seed, every other method from scratch (same sampler seed: TPE's random start-up
   trials are random's first ones, a paired design), and random continued (fresh
   sampler seed: random trials are i.i.d.) where it had not reached the target: each
   study stops at the first COMPLETE trial with value <= target, or at its budget:
   ``--cap`` x R (1.25) trial-seconds, ``--random-cap`` x R (2) for random.
   Per method: the median and interquartile range over seeds of the trial-seconds
   to the target ("not reached" = infinite), the ratio of medians to random's, and
   a bootstrap 90 % interval of that ratio (seeds resampled).
3. noise: a few parameter sets re-trained with other ``TRAIN_SEED``s (same data)
   and other ``DATA_SEED``s (new training and validation sets): the spread of the
   value of one parameter set, and the part of it that can reorder parameter sets
   (a new data draw shifts them all alike), beside the gaps the methods are judged on.
4. how well an early value predicts the final one: Spearman's rank correlation, over
   random's COMPLETE trials, of the value at step 1, 2, 3, at the trial's end of Stage
   A and of B1 against the final value.

Two processes, one per core (``--jobs``), take the studies in turn; every study's
trials are saved under ``--work`` as one JSON file, so an interrupted run resumes.
The machine's load (1-min load average, the share of all cores busy and this
benchmark's own share, from /proc) is sampled during each phase and kept in
``--work``/phases.json with the phase's wall time.

    nice -n 19 python benchmarks/bench_search.py --work /tmp/bench/search --figure docs/search_curve.png
    python benchmarks/bench_search.py --work /tmp/bench/search --seeds 2 --random-trials 6 --cap 1   # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import multiprocessing
import os
import random
import shutil
import socket
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parent.parent
SEED_CONFIG = REPO / "configs" / "physae.yaml"
SCALED_EPOCHS = {"A": (3, 6), "B1": (2, 4), "B2": (2, 5)}  # the seed's 15-30, 8-20, 10-25 divided by 5
PRESET = {"N_TRAIN": "128", "N_VAL": "512", "N_POINTS": "64", "BATCH_SIZE": "64"}
# name: (OPTUNA_SAMPLER, OPTUNA_PRUNER)
METHODS: dict[str, tuple[str, str]] = {
    "random": ("random", "none"),
    "tpe": ("tpe", "none"),
    "tpe+hyperband": ("tpe", "hyperband"),
    "tpe+median": ("tpe", "median"),
    "tpe+stage": ("tpe", "stage"),
}
GOAL_RATIO = 1 / 3
CONTINUATION_SEED = 10_000  # random's continuation study of seed s uses sampler seed s + this


# ------------------------------------------------------------------ one study, in a worker process


@dataclass(frozen=True)
class Job:
    method: str
    seed: int  # the benchmark seed (OPTUNA_SEED of the study)
    sampler_seed: int
    n_trials: int | None  # stop after this many trials (phase 1)
    budget: float | None  # stop once the trials' CPU seconds reach this
    target: float | None  # stop at the first COMPLETE value <= target
    part: str = ""  # "" or "cont" (random's continuation)
    env: tuple[tuple[str, str], ...] = ()  # extra settings (noise phase: TRAIN_SEED, DATA_SEED)
    params: tuple[tuple[str, Any], ...] = ()  # enqueue these parameters (noise phase)

    @property
    def name(self) -> str:
        extra = "".join(f"_{k}{v}" for k, v in self.env)
        return f"{self.method}_s{self.seed}{'_' + self.part if self.part else ''}{extra}"


class _Shared:
    """The parts of hpo.study.shared.SharedStudy that TrialRunner touches, on an in-memory study."""

    def __init__(self, study: Any) -> None:
        self.study = study

    def is_finished(self, trial_id: int, fresh: bool = False) -> bool:
        return False  # one process, no reaper: never taken

    def frozen(self, trial_id: int) -> Any:
        return next(t for t in self.study.get_trials(deepcopy=False) if t._trial_id == trial_id)

    def trials(self, states: Any = None) -> Any:
        return self.study.get_trials(deepcopy=False, states=states)


class _NoHeartbeat:
    @contextlib.contextmanager
    def watching(self, trial_id: int, started: float, on_taken: Any = None) -> Iterator[None]:
        yield

    def suspect(self) -> bool:
        return False


def _init_worker(work: Path, config_path: Path) -> None:
    """One torch thread; then one throw-away 3-epoch trial, so that no study pays for the
    process's first-call costs (torch's kernels, the dataset: ~2 s)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    run_job(Job("random", -1, os.getpid(), 1, None, None, part="warmup",
                env=(("STAGEA_EPOCHS", "1"), ("STAGEB1_EPOCHS", "1"), ("STAGEB2_EPOCHS", "1"))), work, config_path,
            save=False)


def runs_folder(work: Path, pid: int) -> Path:
    """A worker process's run directories: on tmpfs when there is one."""
    return (Path("/dev/shm") if Path("/dev/shm").is_dir() else work) / f"bench_search_{pid}"


def run_job(job: Job, work: Path, config_path: Path, save: bool = True) -> dict[str, Any]:
    """Run one study to its stopping rule; returns (and saves) its trials."""
    out = work / "results" / f"{job.name}.json"
    if save and out.is_file():
        return json.loads(out.read_text())  # type: ignore[no-any-return]
    import optuna

    from hpo.config.environment import without_settings
    from hpo.config.identity import WorkerIdentity
    from hpo.config.study import load_launch
    from hpo.physae.settings import SETTINGS as PHYSAE_SETTINGS
    from hpo.study.algorithms import make_pruner, make_sampler
    from hpo.worker.trial import TrialRunner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_name, pruner_name = METHODS[job.method]
    # Run directories on tmpfs when there is one: each trial writes ~28 MB of fsynced
    # checkpoints (removed after the trial), which would otherwise measure the disk.
    runs = runs_folder(work, os.getpid()) / job.name
    env = {**without_settings(os.environ, PHYSAE_SETTINGS), **PRESET, "HPO_CONFIG": str(config_path), "HPO_DEVICE": "cpu",
           "OPTUNA_SAMPLER": sampler_name, "OPTUNA_PRUNER": pruner_name, "OPTUNA_SEED": str(job.sampler_seed),
           "STUDY_NAME": job.name, "TRIAL_OUTPUT": str(runs), **dict(job.env)}  # fmt: skip
    settings, config = load_launch({}, env).one()
    study = optuna.create_study(direction=optuna.study.StudyDirection[config.directions[0].upper()],
                                sampler=make_sampler(settings.sampler, job.sampler_seed, config.sampler_args),
                                pruner=make_pruner(settings.pruner, config.pruner_args))
    if job.params:
        study.enqueue_trial(dict(job.params))
    identity = WorkerIdentity.from_env({}, socket.gethostname(), os.getpid())
    runner = TrialRunner(_Shared(study), settings, config, identity, "cpu",  # type: ignore[arg-type]
                         config.load_objective(), _NoHeartbeat())  # type: ignore[arg-type]
    trials: list[dict[str, Any]] = []
    spent, started, load0 = 0.0, time.time(), os.getloadavg()[0]
    while True:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        trial = study.ask()
        runner.run(trial, lambda: None)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        frozen = study.trials[trial.number]
        shutil.rmtree(runner.run_dir(trial.number), ignore_errors=True)  # ~28 MB of checkpoints a trial
        spent += cpu
        trials.append({"number": frozen.number, "state": frozen.state.name, "value": frozen.value,
                       "steps": sorted(frozen.intermediate_values.items()), "params": frozen.params,
                       "cpu": cpu, "wall": wall})  # fmt: skip
        if job.target is not None and frozen.value is not None and frozen.value <= job.target:
            break
        if job.n_trials is not None and len(trials) >= job.n_trials:
            break
        if job.budget is not None and spent >= job.budget:
            break
    shutil.rmtree(runs, ignore_errors=True)
    with contextlib.suppress(OSError):
        runs.parent.rmdir()  # the process's folder, once empty
    result = {"job": asdict(job), "trials": trials, "started": started, "ended": time.time(),
              "load_start": load0, "load_end": os.getloadavg()[0]}  # fmt: skip
    if not save:
        return result
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out)
    return result


def _run_job_star(args: tuple[Job, Path, Path]) -> dict[str, Any]:
    return run_job(*args)


# ------------------------------------------------------------------ the machine's load


@dataclass
class LoadMonitor:
    """Every ``period`` s: the 1-min load average, the share of all cores busy and the share
    this benchmark's processes (``pids``) took, from /proc (Linux)."""

    period: float = 10.0
    pids: list[int] = field(default_factory=list)
    samples: list[tuple[float, float, float, float]] = field(default_factory=list)  # (time, load, busy, ours)
    _stop: threading.Event = field(default_factory=threading.Event)

    @staticmethod
    def _cpu_times() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def _ours(self) -> int:
        total = 0
        for pid in self.pids:
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(stat[11]) + int(stat[12])  # utime + stime, in clock ticks
        return total

    def _run(self) -> None:
        total0, idle0 = self._cpu_times()
        ours0 = self._ours()
        while not self._stop.wait(self.period):
            total1, idle1 = self._cpu_times()
            ours1 = self._ours()
            span = max(1, total1 - total0)
            self.samples.append((time.time(), os.getloadavg()[0], 1 - (idle1 - idle0) / span,
                                 max(0, ours1 - ours0) / span))
            total0, idle0, ours0 = total1, idle1, ours1

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()
            self._stop = threading.Event()

    def summary(self, since: float, until: float) -> str:
        picked = [s for s in self.samples if since <= s[0] <= until]
        if not picked:
            return f"load average {os.getloadavg()[0]:.2f} (no sample)"
        loads = [s[1] for s in picked]
        busy, ours = statistics.median(s[2] for s in picked), statistics.median(s[3] for s in picked)
        return (f"load average median {statistics.median(loads):.2f} (range {min(loads):.2f}-{max(loads):.2f}); "
                f"cores busy {100 * busy:.0f} % (median), of which this benchmark {100 * ours:.0f} % "
                f"and other processes {100 * max(0.0, busy - ours):.0f} %; {len(picked)} samples")


# ------------------------------------------------------------------ analysis


def complete_value(t: dict[str, Any]) -> float | None:
    return float(t["value"]) if t["state"] == "COMPLETE" and t["value"] is not None else None


def seconds_to_reach(trials: list[dict[str, Any]], target: float, key: str = "cpu") -> float | None:
    elapsed = 0.0
    for t in trials:
        elapsed += float(t[key])
        v = complete_value(t)
        if v is not None and v <= target:
            return elapsed
    return None


def best_of(trials: list[dict[str, Any]]) -> float:
    values = [v for v in map(complete_value, trials) if v is not None]
    return min(values) if values else math.inf


def quantile(values: list[float], q: float) -> float:
    """numpy's default (linear) quantile; inf (not reached) sorts last."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    if ordered[high] == math.inf:
        return math.inf if position > low or ordered[low] == math.inf else ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def fmt_s(value: float, cap: float) -> str:
    return f"> {cap:.0f}" if value == math.inf else f"{value:.1f}"


@dataclass
class Analysis:
    target: float
    r40: float
    caps: dict[str, float]  # method -> its studies' trial-second budget
    curves: dict[str, dict[int, list[dict[str, Any]]]]  # method -> seed -> trials in order
    times: dict[str, list[float]]  # method -> per-seed trial-seconds to target (inf: not reached)

    def ratio(self, method_median: float, random_median: float) -> float:
        """method's median / random's; when random's is past its cap, its cap stands in
        (an upper bound of the ratio); inf when the method's is past its own."""
        if method_median == math.inf:
            return math.inf
        return method_median / (self.caps["random"] if random_median == math.inf else random_median)


def analyse(curves: dict[str, dict[int, list[dict[str, Any]]]], target: float, r40: float,
            caps: dict[str, float]) -> Analysis:
    times = {m: [seconds_to_reach(tr, target) or math.inf for _, tr in sorted(per.items())]
             for m, per in curves.items()}
    return Analysis(target, r40, caps, curves, times)


def bootstrap_ratio(an: Analysis, method: str, reps: int = 4000, seed: int = 0) -> tuple[float, float]:
    """90 % bootstrap interval of the ratio of medians to random's, seeds resampled (paired)."""
    a, b = an.times[method], an.times["random"]
    rng = random.Random(seed)
    n, ratios = len(a), []
    for _ in range(reps):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(an.ratio(quantile([a[i] for i in idx], 0.5), quantile([b[i] for i in idx], 0.5)))
    return quantile(ratios, 0.05), quantile(ratios, 0.95)


def resampled_random(trials: list[dict[str, Any]], target: float, reps: int = 20000, seed: int = 0
                     ) -> tuple[float, float, float]:
    """Random search's trial-seconds to the target by resampling its i.i.d. trials (the pool of
    every seed's first trials): median, first and third quartiles; a cross-check of the
    20-seed figure that no cap cuts off."""
    rng = random.Random(seed)
    pool = [(t["cpu"], complete_value(t)) for t in trials]
    if not any(v is not None and v <= target for _, v in pool):
        return math.inf, math.inf, math.inf
    times = []
    for _ in range(reps):
        elapsed = 0.0
        while True:
            cpu, value = pool[rng.randrange(len(pool))]
            elapsed += cpu
            if value is not None and value <= target:
                break
        times.append(elapsed)
    return quantile(times, 0.5), quantile(times, 0.25), quantile(times, 0.75)


def table(an: Analysis) -> str:
    rnd = quantile(an.times["random"], 0.5)
    rows = ["| method | reached | median trial-s to target | IQR | ratio to random | 90 % interval | "
            "trials (complete / pruned) | mean s per trial |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method, times in an.times.items():
        cap = an.caps[method]
        med, q1, q3 = quantile(times, 0.5), quantile(times, 0.25), quantile(times, 0.75)
        ratio = an.ratio(med, rnd)
        low, high = bootstrap_ratio(an, method)
        trials = [t for tr in an.curves[method].values() for t in tr]
        complete = sum(t["state"] == "COMPLETE" for t in trials)
        pruned = sum(t["state"] == "PRUNED" for t in trials)
        rows.append(
            f"| {method} | {sum(t != math.inf for t in times)}/{len(times)} | {fmt_s(med, cap)} | "
            f"{fmt_s(q1, cap)}–{fmt_s(q3, cap)} | {'—' if ratio == math.inf else f'{ratio:.2f}'} | "
            f"{'—' if low == math.inf else f'{low:.2f}'}–{'∞' if high == math.inf else f'{high:.2f}'} | "
            f"{len(trials)} ({complete} / {pruned}) | {statistics.mean(t['cpu'] for t in trials):.2f} |")
    return "\n".join(rows)


def paired(an: Analysis, baseline: str) -> str:
    """Per seed, which method is faster to the target than ``baseline`` (same seed)."""
    out = []
    for method, times in an.times.items():
        if method == baseline:
            continue
        pairs = list(zip(times, an.times[baseline]))
        wins = sum(a < b for a, b in pairs)
        losses = sum(a > b for a, b in pairs)
        out.append(f"{method} {wins}-{losses}")
    return f"seeds faster-slower than {baseline}: " + ", ".join(out)


def best_within(trials: list[dict[str, Any]], seconds: float) -> float:
    """Best COMPLETE value among the trials that ended within ``seconds`` trial-seconds;
    a study that stopped at the target earlier keeps its last best."""
    elapsed, best = 0.0, math.inf
    for t in trials:
        elapsed += t["cpu"]
        if elapsed > seconds:
            break
        v = complete_value(t)
        if v is not None:
            best = min(best, v)
    return best


def predictiveness(random_trials: list[dict[str, Any]]) -> str:
    """Spearman's rho of early values against the final one, over COMPLETE random trials."""
    complete = [t for t in random_trials if complete_value(t) is not None]
    rows = []
    probes: dict[str, Any] = {f"step {k}": (lambda t, k=k: k) for k in (1, 2, 3, 4, 6)}
    probes["end of A"] = lambda t: t["params"]["A.epochs"]
    probes["end of B1"] = lambda t: t["params"]["A.epochs"] + t["params"]["B1.epochs"]
    for label, step_of in probes.items():
        pairs = [(dict(t["steps"])[step_of(t)], t["value"]) for t in complete if step_of(t) in dict(t["steps"])]
        if len(pairs) > 2:
            rows.append(f"{label}: rho {spearman([p[0] for p in pairs], [p[1] for p in pairs]):.2f} (n={len(pairs)})")
    return "; ".join(rows)


def plot(an: Analysis, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xmax = max(an.caps.values())
    grid = [xmax * i / 400 for i in range(1, 401)]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for method, per_seed in an.curves.items():
        series = [[best_within(tr, s) for s in grid] for _, tr in sorted(per_seed.items())]
        med = [quantile([row[i] for row in series], 0.5) for i in range(len(grid))]
        q1 = [quantile([row[i] for row in series], 0.25) for i in range(len(grid))]
        q3 = [quantile([row[i] for row in series], 0.75) for i in range(len(grid))]
        finite = [i for i, v in enumerate(med) if v != math.inf]
        line, = ax.plot([grid[i] for i in finite], [med[i] for i in finite], label=method)
        band = [i for i in finite if q3[i] != math.inf]
        ax.fill_between([grid[i] for i in band], [q1[i] for i in band], [q3[i] for i in band],
                        color=line.get_color(), alpha=0.07, linewidth=0)
    rnd = quantile(an.times["random"], 0.5)
    ax.axhline(an.target, color="black", linestyle="--", linewidth=0.8, label=f"target {an.target:.4f}")
    if rnd != math.inf:
        ax.axvline(rnd, color="grey", linestyle=":", linewidth=0.8, label="random: median s to target")
        ax.axvline(rnd * GOAL_RATIO, color="grey", linestyle="-.", linewidth=0.8, label="goal: 1/3 of that")
    values = [v for per in an.curves.values() for tr in per.values() for v in map(complete_value, tr) if v is not None]
    ax.set_ylim(min(values) - 0.002, quantile(values, 0.6))
    ax.set_xlim(0, xmax)
    ax.set_xlabel("trial-seconds (CPU seconds of the trials, pruned ones included)")
    ax.set_ylabel("best value so far (median over seeds)")
    ax.set_title(f"PhysAE preset, {len(an.times['random'])} seeds; bands: interquartile range; "
                 "a study stops at the target", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------ the run


def tiny_config(path: Path) -> Path:
    """``configs/physae.yaml`` with the epoch ranges divided by 5 and no warm start."""
    config: dict[str, Any] = copy.deepcopy(yaml.safe_load(SEED_CONFIG.read_text()))
    for stage, (low, high) in SCALED_EPOCHS.items():
        config["space"][stage]["epochs"] = {"type": "int", "low": low, "high": high}
    config.pop("enqueue", None)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_phase(pool: Any, jobs: list[Job], work: Path, config: Path, label: str, monitor: LoadMonitor,
              line: str) -> list[dict[str, Any]]:
    """Run ``jobs`` on the pool; record ``line`` with the phase's wall time and the machine's
    load in ``work/phases.json``, kept from the run that ran the studies (a re-analysis of
    saved results keeps it)."""
    fresh = sum(not (work / "results" / f"{j.name}.json").is_file() for j in jobs)
    results = []
    t0 = time.time()
    for i, result in enumerate(pool.imap_unordered(_run_job_star, [(j, work, config) for j in jobs]), start=1):
        results.append(result)
        trials = result["trials"]
        print(f"# {label} {i}/{len(jobs)} {result['job']['method']} seed {result['job']['seed']} "
              f"{result['job']['part']}: {len(trials)} trials, {sum(t['cpu'] for t in trials):.1f} trial-s, "
              f"best {best_of(trials):.4f}; {time.time() - t0:.0f} s into the phase; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
    log = work / "phases.json"
    phases = json.loads(log.read_text()) if log.is_file() else {}
    if fresh or label not in phases:
        phases[label] = (f"{line}: {time.time() - t0:.0f} s wall{'' if fresh == len(jobs) else f' ({fresh} of {len(jobs)} studies run now)'}; "
                         f"{monitor.summary(t0, time.time())}")
        log.write_text(json.dumps(phases, indent=1))
    return results


def noise_jobs(phase1: list[dict[str, Any]], target: float, n_sets: int, n_repeats: int) -> list[Job]:
    """Parameter sets near the target (random's per-seed bests closest to it) and one median
    trial, each re-run with other TRAIN_SEEDs and other DATA_SEEDs."""
    bests = sorted(((min((t for t in r["trials"] if complete_value(t) is not None), key=lambda t: t["value"]), r)
                    for r in phase1), key=lambda p: abs(p[0]["value"] - target))
    picked = [b[0] for b in bests[: n_sets - 1]]
    everything = sorted((t for r in phase1 for t in r["trials"] if complete_value(t) is not None),
                        key=lambda t: t["value"])
    picked.append(everything[len(everything) // 2])
    jobs = []
    for i, t in enumerate(picked):
        params = tuple(sorted(t["params"].items()))
        for k in range(n_repeats + 1):  # k = 0: the benchmark's own seeds, the value it saw
            for var in (("TRAIN_SEED",), ("DATA_SEED",)) if k else (("TRAIN_SEED",),):
                jobs.append(Job("random", 90_000 + i, 0, 1, None, None, part=f"noise{i}",
                                env=((var[0], str(k)),), params=params))
    return jobs


def noise_report(results: list[dict[str, Any]]) -> str:
    by_set: dict[str, dict[str, list[float]]] = {}
    # imap_unordered returns them in any order: sort by the seed, so that the columns of the
    # set x DATA_SEED table below line up.
    for r in sorted(results, key=lambda r: int(r["job"]["env"][0][1])):
        var, k = r["job"]["env"][0]
        value = r["trials"][0]["value"]
        entry = by_set.setdefault(r["job"]["part"], {"TRAIN_SEED": [], "DATA_SEED": [], "base": []})
        if k == "0":
            entry["base"].append(value)
        else:
            entry[var].append(value)
    lines = ["| parameter set | value (seeds 0/0) | TRAIN_SEED 1.. | std | DATA_SEED 1.. | std |",
             "|---|---:|---|---:|---|---:|"]
    train_sd, data_sd = [], []
    for name, e in sorted(by_set.items()):
        t_all, d_all = e["base"] + e["TRAIN_SEED"], e["base"] + e["DATA_SEED"]
        ts, ds = statistics.stdev(t_all), statistics.stdev(d_all)
        train_sd.append(ts)
        data_sd.append(ds)
        lines.append(f"| {name} | {e['base'][0]:.4f} | {' '.join(f'{v:.4f}' for v in e['TRAIN_SEED'])} | "
                     f"{ts:.4f} | {' '.join(f'{v:.4f}' for v in e['DATA_SEED'])} | {ds:.4f} |")
    lines.append(f"\npooled std: TRAIN_SEED {math.sqrt(statistics.mean(s * s for s in train_sd)):.4f}, "
                 f"DATA_SEED {math.sqrt(statistics.mean(s * s for s in data_sd)):.4f}")
    # A new data draw moves every parameter set alike; what can reorder them is the rest:
    # the residual of the two-way table (set x DATA_SEED) once both means are removed.
    table_ = [e["base"][:1] + e["DATA_SEED"] for _, e in sorted(by_set.items())]
    n_sets, n_data = len(table_), len(table_[0])
    if n_sets > 1 and n_data > 1 and all(len(row) == n_data for row in table_):
        grand = statistics.mean(v for row in table_ for v in row)
        row_mean = [statistics.mean(row) for row in table_]
        col_mean = [statistics.mean(row[k] for row in table_) for k in range(n_data)]
        ss = sum((table_[i][k] - row_mean[i] - col_mean[k] + grand) ** 2 for i in range(n_sets) for k in range(n_data))
        lines.append(f"DATA_SEED shifts every set alike by {min(col_mean) - grand:+.4f} to {max(col_mean) - grand:+.4f}; "
                     f"residual std once that shift is removed (set x DATA_SEED interaction): "
                     f"{math.sqrt(ss / ((n_sets - 1) * (n_data - 1))):.4f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 per method")
    parser.add_argument("--random-trials", type=int, default=40, help="random's trials that set the target")
    parser.add_argument("--cap", type=float, default=1.25, help="budget of a study, in units of R")
    parser.add_argument("--random-cap", type=float, default=2.0, help="random's budget (continued), in units of R")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--jobs", type=int, default=2, help="processes in parallel (one torch thread each)")
    parser.add_argument("--noise-sets", type=int, default=4)
    parser.add_argument("--noise-repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, required=True, help="results folder (reused: finished studies are kept)")
    parser.add_argument("--figure", type=Path, default=None, help="PNG of the best-so-far curves")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    config = tiny_config(work / "physae_search.yaml")
    seeds = list(range(args.seeds))
    monitor = LoadMonitor()
    print(f"# {os.cpu_count()} cores, {args.jobs} processes x 1 thread; preset {PRESET}, epochs {SCALED_EPOCHS}; "
          f"work {work}", flush=True)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=_init_worker, initargs=(work, config)) as pool, monitor.running():
        monitor.pids = [p.pid for p in pool._pool]  # type: ignore[attr-defined]  # the workers, for their CPU share
        phase1 = run_phase(pool, [Job("random", s, s, args.random_trials, None, None) for s in seeds], work, config,
                           "phase 1", monitor, f"phase 1 (random, {len(seeds)} x {args.random_trials})")
        by_seed = {r["job"]["seed"]: r["trials"] for r in phase1}
        target = quantile([best_of(by_seed[s]) for s in seeds], 0.5)
        r40 = quantile([sum(t["cpu"] for t in by_seed[s]) for s in seeds], 0.5)
        caps = {m: (args.random_cap if m == "random" else args.cap) * r40 for m in args.methods}
        print(f"# target {target:.5f} (median of random's best of {args.random_trials}); R = {r40:.1f} trial-s; "
              f"caps {caps['random']:.1f} trial-s (random), {args.cap * r40:.1f} (others)", flush=True)
        jobs = []
        for s in seeds:
            spent = sum(t["cpu"] for t in by_seed[s])
            if best_of(by_seed[s]) > target and spent < caps["random"]:
                jobs.append(Job("random", s, s + CONTINUATION_SEED, None, caps["random"] - spent, target,
                                part="cont"))
            jobs += [Job(m, s, s, None, caps[m], target) for m in args.methods if m != "random"]
        phase2 = run_phase(pool, jobs, work, config, "phase 2", monitor, f"phase 2 ({len(jobs)} studies)")
        noise = run_phase(pool, noise_jobs(phase1, target, args.noise_sets, args.noise_repeats), work, config,
                          "noise", monitor, "noise (1-trial studies)") if args.noise_sets else []
    for pid in monitor.pids:  # a worker stopped by the pool's end mid-trial (its warm-up) leaves its folder
        shutil.rmtree(runs_folder(work, pid), ignore_errors=True)
    curves: dict[str, dict[int, list[dict[str, Any]]]] = {m: {} for m in args.methods}
    for s in seeds:
        curves["random"][s] = list(by_seed[s])
    for r in phase2:
        curves[r["job"]["method"]].setdefault(r["job"]["seed"], []).extend(r["trials"])
    an = analyse(curves, target, r40, caps)
    resampled = resampled_random([t for s in seeds for t in by_seed[s]], target)
    lines = [
        f"target {target:.5f}; R (random's median trial-s for {args.random_trials} trials) {r40:.1f}; "
        f"budget per study {caps['random']:.1f} trial-s (random), {args.cap * r40:.1f} (others)",
        *json.loads((work / "phases.json").read_text()).values(),
        "", table(an), "",
        paired(an, "random"),
        paired(an, "tpe+hyperband") if "tpe+hyperband" in an.times else "",
        f"random, resampled from its {len(seeds) * args.random_trials} phase-1 trials: median "
        f"{resampled[0]:.1f} trial-s to target (IQR {resampled[1]:.1f}–{resampled[2]:.1f})",
        "median best value within 1/3 of random's median trial-s to target: " + ", ".join(
            f"{m} {quantile([best_within(tr, quantile(an.times['random'], 0.5) * GOAL_RATIO) for tr in per.values()], 0.5):.4f}"
            for m, per in curves.items()),
        f"random's per-seed best of {args.random_trials}: " + " ".join(f"{best_of(by_seed[s]):.4f}" for s in seeds),
        "early values against the final one (random's complete trials): "
        + predictiveness([t for s in seeds for t in by_seed[s]]),
    ]
    pruned_at: dict[str, dict[int, int]] = {}
    for m, per in curves.items():
        for tr in per.values():
            for t in tr:
                if t["state"] == "PRUNED" and t["steps"]:
                    step = t["steps"][-1][0]
                    pruned_at.setdefault(m, {})[step] = pruned_at.setdefault(m, {}).get(step, 0) + 1
    lines.append("pruned at step: " + "; ".join(f"{m}: " + " ".join(f"{k}:{v}" for k, v in sorted(c.items()))
                                                for m, c in pruned_at.items()))
    if noise:
        lines += ["", noise_report(noise)]
    text = "\n".join(lines)
    print("\n" + text)
    (work / "summary.md").write_text(text + "\n")
    if args.figure is not None:
        plot(an, args.figure)
        print(f"# figure {args.figure}")


if __name__ == "__main__":
    main()

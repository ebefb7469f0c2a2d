"""Worker efficiency: the share of a PhysAE worker's wall time spent in training steps.

Runs ONE real ``python -m hpo worker`` process on a fresh study (wall time measured
around the subprocess, from process start to exit), then splits that wall time with
the per-trial ``timings`` of each run directory's ``result.json`` (train, data,
eval, checkpoint) and the trials' start/complete times in the journal:

- in training steps: optimizer steps (forward, backward, step) of every epoch;
- data generation, evaluation, checkpointing (+ metrics lines): inside the objective;
- start-up: process start (imports, journal open, study creation) to the first trial;
- between trials: tell + ask + reaper + logging between one trial and the next;
- in trial, outside the objective: sampling, run dir, params/settings/trial json, tell;
- exit: last trial's end to process exit.

    python benchmarks/bench_efficiency.py --preset cpu-tiny cpu-medium --threads 1
        # tiny (goal >= 90%) and a bigger config on CPU
    python benchmarks/bench_efficiency.py --preset cpu-default-1epoch --threads 1
        # default sizes, 1/1/1 epochs: CPU seconds per epoch per stage, extrapolated to 22/12/18
    python benchmarks/bench_efficiency.py --gpu-default
        # default config on one GPU (goal >= 95% in training, <= 20 s a trial on an H100);
        # prints "no GPU here: skipped" without CUDA

``--threads`` (the worker's ``OMP_NUM_THREADS``) defaults to the core count, right on an
idle machine; on a shared one use 1 (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "physae.yaml"
STUDY = "bench_efficiency"
STAGES = ("A", "B1", "B2")
DEFAULT_EPOCHS = {"A": 22, "B1": 12, "B2": 18}  # the seed's example trial (configs/physae.yaml, enqueue)


@dataclass(frozen=True)
class Preset:
    """One benchmark configuration: the worker's environment and the goal it is held to."""

    description: str
    env: dict[str, str]
    device: str
    goal_share: float | None  # minimum share of wall time in training steps
    goal_trial_seconds: float | None = None  # maximum median trial time


def _sizes(n_train: int, n_val: int, n_points: int, epochs: tuple[int, int, int], trials: int) -> dict[str, str]:
    return {"N_TRAIN": str(n_train), "N_VAL": str(n_val), "N_POINTS": str(n_points),
            "STAGEA_EPOCHS": str(epochs[0]), "STAGEB1_EPOCHS": str(epochs[1]), "STAGEB2_EPOCHS": str(epochs[2]),
            "MAX_TRIALS": str(trials)}  # fmt: skip


PRESETS: dict[str, Preset] = {
    "cpu-tiny": Preset("tiny config on CPU: 2,000 x 64 points, epochs 4/2/4, 6 trials",
                       _sizes(2000, 256, 64, (4, 2, 4), 6), "cpu", 0.90),
    "cpu-medium": Preset("bigger CPU config: 10,000 x 128 points, epochs 4/2/4, 2 trials",
                         _sizes(10000, 1000, 128, (4, 2, 4), 2), "cpu", 0.90),
    "cpu-default-1epoch": Preset("default sizes on CPU: 50,000 x 256 points, epochs 1/1/1, 1 trial",
                                 _sizes(50000, 4000, 256, (1, 1, 1), 1), "cpu", None),
    "gpu-default": Preset("default config on one GPU: 50,000 x 256 points, epochs 22/12/18, 3 trials",
                          _sizes(50000, 4000, 256, (22, 12, 18), 3), "cuda", 0.95, 20.0),
}


@dataclass
class TrialRow:
    number: int
    seconds: float  # datetime_complete - datetime_start (the journal's view)
    timings: dict[str, Any] = field(default_factory=dict)  # result.json "timings"


@dataclass
class Measurement:
    preset: str
    wall: float
    startup: float  # process start -> first trial start
    between: float  # sum of gaps between consecutive trials
    exit: float  # last trial end -> process exit
    trials: list[TrialRow]

    def total(self, key: str) -> float:
        return sum(float(t.timings.get(key, 0.0)) for t in self.trials)

    @property
    def in_trial_outside_objective(self) -> float:
        return sum(t.seconds for t in self.trials) - self.total("total")


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without hpo or SLURM variables, plus ``extra``."""
    from hpo.config.environment import without_settings
    from hpo.physae.settings import SETTINGS as PHYSAE_SETTINGS

    env = without_settings(os.environ, PHYSAE_SETTINGS)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def run_worker(preset_name: str, work: Path, threads: int, seed: int) -> Measurement:
    """One ``hpo worker`` subprocess on a fresh study; returns its measured split."""
    preset = PRESETS[preset_name]
    env = clean_env({
        **preset.env, "HPO_CONFIG": str(CONFIG), "STUDY_NAME": STUDY, "JOURNAL_DIR": str(work / "journal"),
        "LOG_DIR": str(work / "logs"), "TRIAL_OUTPUT": str(work / "runs"), "OPTUNA_PRUNER": "none",
        "OPTUNA_SEED": str(seed), "HPO_DEVICE": preset.device, "OMP_NUM_THREADS": str(threads),
        "HPO_EXPORT_AT_END": "0",  # training against everything else a worker does, exports aside
    })  # fmt: skip
    launched = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hpo", "worker", "--quiet"], cwd=work, env=env, check=False,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    exited = launched + wall
    if proc.returncode != 0:
        raise SystemExit(f"hpo worker exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(work / "journal" / f"{STUDY}.journal")))
    trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    spans = sorted((t.datetime_start.timestamp(), t.datetime_complete.timestamp(), t.number)
                   for t in trials if t.datetime_start is not None and t.datetime_complete is not None)
    rows: list[TrialRow] = []
    for start, end, number in spans:
        result = work / "runs" / STUDY / f"trial_{number}" / "result.json"
        timings = json.loads(result.read_text())["timings"] if result.is_file() else {}
        rows.append(TrialRow(number, end - start, timings))
    starts, ends = [s for s, _, _ in spans], [e for _, e, _ in spans]
    between = sum(max(0.0, s - e) for e, s in zip(ends, starts[1:]))
    return Measurement(preset_name, wall, starts[0] - launched, between, exited - ends[-1], rows)


def print_split(m: Measurement) -> None:
    preset = PRESETS[m.preset]
    train, data, ev, ckpt = (m.total(k) for k in ("train", "data", "eval", "checkpoint"))
    in_obj_other = m.total("other")
    rest = m.wall - train - data - ev - ckpt
    rows = [
        ("worker wall time (process start to exit)", m.wall),
        ("in training steps", train),
        ("data generation", data),
        ("evaluation (validation passes)", ev),
        ("checkpoints + metrics lines", ckpt),
        ("rest, of which:", rest),
        ("  start-up (imports, journal, study) to 1st trial", m.startup),
        ("  in trial, outside the objective (sampling, run dir, tell)", m.in_trial_outside_objective),
        ("  in the objective, untimed (model build, logging, result)", in_obj_other),
        ("  between trials (ask, reaper, logging)", m.between),
        ("  exit (last trial end to process exit)", m.exit),
    ]
    print(f"\n## {m.preset}: {preset.description}")
    print(f"{'':<62} {'seconds':>9} {'share':>7}")
    for label, seconds in rows:
        print(f"{label:<62} {seconds:>9.2f} {100 * seconds / m.wall:>6.1f}%")
    share = train / m.wall
    goal = f"goal >= {100 * preset.goal_share:.0f}%: {'met' if share >= preset.goal_share else 'MISSED'}" \
        if preset.goal_share else "no goal"
    print(f"share of wall time in training steps: {100 * share:.1f}% ({goal})")
    print(f"\n{'trial':>5} {'trial s':>8} {'total':>7} {'train':>7} {'data':>6} {'eval':>6} {'ckpt':>6} "
          f"{'other':>6}  samples/s A / B1 / B2")
    for t in m.trials:
        g = t.timings
        sps = " / ".join(f"{g.get('stages', {}).get(s, {}).get('samples_per_second', 0):,.0f}" for s in STAGES)
        print(f"{t.number:>5} {t.seconds:>8.2f} {g.get('total', 0):>7.2f} {g.get('train', 0):>7.2f} "
              f"{g.get('data', 0):>6.2f} {g.get('eval', 0):>6.2f} {g.get('checkpoint', 0):>6.2f} "
              f"{g.get('other', 0):>6.2f}  {sps}")
    if preset.goal_trial_seconds is not None:
        median = statistics.median(t.seconds for t in m.trials)
        ok = "met" if median <= preset.goal_trial_seconds else "MISSED"
        print(f"median trial time: {median:.1f} s (goal <= {preset.goal_trial_seconds:.0f} s: {ok})")


def print_epoch_cost(m: Measurement) -> None:
    """Seconds per epoch per stage (measured), and what 22/12/18 epochs would cost (extrapolated)."""
    t = m.trials[0].timings
    epochs = {s: int(PRESETS[m.preset].env[f"STAGE{s}_EPOCHS"]) for s in STAGES}
    passes = sum(epochs.values()) + 1  # one validation pass per epoch, plus the final one
    eval_pass = t["eval"] / passes
    print(f"\n{'stage':>5} {'s/epoch (measured)':>19} {'samples/s':>10} {'epochs':>7} {'extrapolated s':>15}")
    train_total = 0.0
    for s in STAGES:
        st = t["stages"][s]
        per_epoch = st["seconds"] / epochs[s]
        train_total += per_epoch * DEFAULT_EPOCHS[s]
        print(f"{s:>5} {per_epoch:>19.1f} {st['samples_per_second']:>10,.0f} {DEFAULT_EPOCHS[s]:>7} "
              f"{per_epoch * DEFAULT_EPOCHS[s]:>15.0f}")
    eval_total = eval_pass * (sum(DEFAULT_EPOCHS.values()) + 1)
    print(f"validation pass: {eval_pass:.2f} s (measured); data generation: {t['data']:.1f} s (measured, once per worker)")
    total = train_total + eval_total + t["data"] + t["checkpoint"]
    print(f"EXTRAPOLATION (linear in epochs, not measured): a 22/12/18-epoch trial on this CPU ~ "
          f"{train_total:.0f} s training + {eval_total:.0f} s validation + {t['data']:.0f} s data "
          f"= {total:.0f} s ({total / 60:.1f} min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", choices=sorted(PRESETS), default=["cpu-tiny"],
                        help="configurations to run, one worker process each")
    parser.add_argument("--gpu-default", action="store_true", help="run the gpu-default preset (needs CUDA)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP_NUM_THREADS of the worker")
    parser.add_argument("--seed", type=int, default=0, help="OPTUNA_SEED of the study")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    presets = ["gpu-default"] if args.gpu_default else list(args.preset)
    import torch

    cuda = torch.cuda.is_available()
    print(f"# python {sys.version.split()[0]}, torch {torch.__version__}, optuna {optuna.__version__}, "
          f"{os.cpu_count()} cores, OMP_NUM_THREADS={args.threads}, "
          f"GPU: {torch.cuda.get_device_name(0) if cuda else 'none'}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name in presets:
        if PRESETS[name].device == "cuda" and not cuda:
            print(f"\n## {name}: no GPU here: skipped (torch.cuda.is_available() is False)")
            continue
        with tempfile.TemporaryDirectory(prefix="bench_efficiency_") as tmp:
            m = run_worker(name, Path(tmp), args.threads, args.seed)
        print_split(m)
        if name == "cpu-default-1epoch":
            print_epoch_cost(m)
        print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()

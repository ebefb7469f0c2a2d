"""Where a PhysAE trial's time goes: training throughput per stage and the phase shares.

Runs the real objective (:func:`hpo.physae.objective.objective`) in this process, in a
temporary run directory, with the seed's example learning rates and the epochs
given, and prints from ``result.json``'s ``timings``:

- per stage: training samples/s (optimizer steps only);
- the share of the trial's wall time in training steps, data generation,
  validation, checkpointing (+ metrics lines) and the rest (model set-up, logging).

Trial 1 of each configuration generates the dataset (``data``); later trials in the
same process find it cached, which is what a worker sees from its second trial on.

    python benchmarks/bench_physae.py                                # tiny, CPU (+ CUDA if present)
    python benchmarks/bench_physae.py --config default --epochs 1,1,1 --device cpu
    python benchmarks/bench_physae.py --config both --trials 2 --device cuda

Configurations: ``tiny`` = N_TRAIN=256 N_VAL=64 N_POINTS=64 BATCH_SIZE=32 (the
tests' size, default epochs 2,2,2); ``default`` = N_TRAIN=50000 N_VAL=4000
N_POINTS=256 BATCH_SIZE=512 (configs/physae.yaml, default epochs 22,12,18).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch

from hpo.config.settings import Settings, resolve
from hpo.physae.data import clear_dataset_cache
from hpo.physae.objective import objective
from hpo.physae.settings import SETTINGS
from hpo.physae.train import RESULT_FILE, STAGES
from hpo.worker.context import TrialContext

CONFIGS: dict[str, tuple[dict[str, str], tuple[int, int, int]]] = {
    "tiny": ({"N_TRAIN": "256", "N_VAL": "64", "N_POINTS": "64", "BATCH_SIZE": "32"}, (2, 2, 2)),
    "default": ({"N_TRAIN": "50000", "N_VAL": "4000", "N_POINTS": "256", "BATCH_SIZE": "512"}, (22, 12, 18)),
}
# The seed's example trial (configs/physae.yaml, enqueue), epochs replaced per run.
EXAMPLE = {
    "A.base_lr": 1.5e-4, "A.refiner_lr": 2.0e-5,
    "B1.refiner_lr": 1.2e-4, "B1.delta_scale": 0.12, "B1.refine_steps": 2,
    "B2.base_lr": 6.0e-5, "B2.refiner_lr": 1.5e-5, "B2.delta_scale": 0.10, "B2.refine_steps": 2,
}  # fmt: skip
PHASES = ("train", "data", "eval", "checkpoint", "other")


def parse_epochs(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"--epochs {text!r}: expected three positive integers A,B1,B2, e.g. 1,1,1")
    return int(parts[0]), int(parts[1]), int(parts[2])


def devices(choice: str) -> list[str]:
    """The devices to run on; prints why CUDA is skipped."""
    has_cuda = torch.cuda.is_available()
    if choice == "cpu":
        return ["cpu"]
    if not has_cuda:
        print(f"CUDA: skipped (torch {torch.__version__} sees no CUDA device)")
        return ["cpu"] if choice == "auto" else []
    return ["cpu", "cuda"] if choice == "auto" else ["cuda"]


def settings_for(env: dict[str, str]) -> Settings:
    return resolve(flags={}, env=env, config_settings={}, config=REPO / "configs" / "physae.yaml",
                   objective_fields=SETTINGS)


def run_trial(settings: Settings, epochs: tuple[int, int, int], device: str) -> tuple[float, float, dict[str, Any]]:
    """One objective call; returns (objective value, wall seconds, timings)."""
    params = {**EXAMPLE, "A.epochs": epochs[0], "B1.epochs": epochs[1], "B2.epochs": epochs[2]}
    with tempfile.TemporaryDirectory(prefix="bench_physae_") as tmp:
        ctx = TrialContext(number=0, params=params, fixed={}, settings=settings, run_dir=Path(tmp), device=device, options=settings.objective,
                           logger=logging.getLogger("bench_physae"))  # fmt: skip
        start = time.perf_counter()
        value = objective(params, ctx)
        wall = time.perf_counter() - start
        timings = json.loads((Path(tmp) / RESULT_FILE).read_text())["timings"]
    return value, wall, timings


def print_header() -> None:
    sps = " ".join(f"{s + ' samp/s':>11}" for s in STAGES)
    shares = " ".join(f"{p:>6}" for p in PHASES)
    print(f"{'config':<22} {'device':<6} {'epochs':<9} {'trial':>5} {'wall s':>8} {'value':>7} {sps}   share %: {shares}")


def print_row(name: str, device: str, epochs: tuple[int, int, int], trial: int, value: float, wall: float,
              timings: dict[str, Any]) -> None:  # fmt: skip
    sps = " ".join(f"{timings['stages'][s]['samples_per_second']:>11,.0f}" for s in STAGES)
    total = timings["total"]
    shares = " ".join(f"{100 * timings[p] / total:>6.1f}" for p in PHASES)
    label = ",".join(map(str, epochs))
    print(f"{name:<22} {device:<6} {label:<9} {trial:>5} {wall:>8.2f} {value:>7.4f} {sps}             {shares}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("tiny", "default", "both"), default="tiny")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--epochs", type=parse_epochs, default=None,
                        help="A,B1,B2 epochs (default: 2,2,2 tiny; 22,12,18 default)")
    parser.add_argument("--trials", type=int, default=1, help="trials per configuration (from 2: data cached)")
    parser.add_argument("--compile", default="off",
                        help="STEP_COMPILE modes to compare, comma-separated (off, default, reduce-overhead)")
    args = parser.parse_args(argv)
    names = ["tiny", "default"] if args.config == "both" else [args.config]
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads")
    chosen = devices(args.device)
    if not chosen:
        return 0
    print_header()
    for device in chosen:
        for name in names:
            env, default_epochs = CONFIGS[name]
            epochs = args.epochs or default_epochs
            for mode in args.compile.split(","):
                clear_dataset_cache()  # trial 1 pays for data generation, as a fresh worker does
                for trial in range(1, args.trials + 1):
                    value, wall, timings = run_trial(settings_for({**env, "STEP_COMPILE": mode}), epochs, device)
                    label = name if mode == "off" else f"{name}+{mode}"
                    print_row(label, device, epochs, trial, value, wall, timings)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The measurements of the GPU device check (issue 25 item 6); benchmarks/gpu_check.sh runs
each subcommand as one step, under its own time limit, and this file gathers the results.

    python benchmarks/gpu_probe.py cuda                  # CUDA works, or exit 3 with one line
    python benchmarks/gpu_probe.py trials --run cold:off --run warm:off --profile cold
    python benchmarks/gpu_probe.py oom --work DIR        # a real CUDA OOM inside `hpo worker`
    python benchmarks/gpu_probe.py share --workers 2 --work DIR [--mps]
    python benchmarks/gpu_probe.py summary --call 1      # the call's markdown table

- ``trials``: PhysAE trials of the default size in this process (as bench_physae.py): wall
  time cold (the dataset generated, CUDA started) and warm (the dataset cached), seconds per
  phase, samples/s per stage, peak GPU memory (``torch.cuda.max_memory_allocated``), and the
  GPU-busy share of each stage: its second epoch runs under ``torch.profiler`` (CUDA activity
  only), and the union of its kernels' and copies' intervals is set against the epoch's host
  wall time. ``--run LABEL:MODE[:A,B1,B2]``: MODE is STEP_COMPILE (off, reduce-overhead).
- ``oom``: one ``hpo worker`` on a tiny objective (in this file) whose trial 0 allocates 2 GiB
  blocks until CUDA runs out of memory; trial 1 and 2 then record how much memory they find
  still held. Prints what the journal holds for each trial and the worker's exit code.
- ``share``: ``hpo run --workers N --workers-per-gpu N`` on PhysAE (default sizes, epochs
  22/12/18, refine steps fixed at 2 so that every trial costs the same), started together;
  after ``--warmup`` s the epochs finished in the next ``--window`` s are counted from the
  trials' metrics.jsonl (samples/s summed over the workers), nvidia-smi samples the GPU's
  utilisation meanwhile; then SIGTERM (the workers' trials end as preempted).

``--cpu`` (or HPO_GPU_CHECK_CPU=1): the same steps, tiny, on the CPU (the OOM simulated by
raising torch.cuda.OutOfMemoryError): a dry run that shows the check does not crash. Each
step merges its result into ``--json`` (written after every trial, so a step stopped at its
limit keeps what it measured) and ``summary`` turns that file into markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CPU = os.environ.get("HPO_GPU_CHECK_CPU", "") not in ("", "0")
STAGES = ("A", "B1", "B2")
# configs/physae.yaml's sizes; the dry run's are the tests' tiny ones (2 epochs a stage: the
# profiled epoch is each stage's second).
SIZES = {"N_TRAIN": "50000", "N_VAL": "4000", "N_POINTS": "256", "BATCH_SIZE": "512"}
TINY = {"N_TRAIN": "512", "N_VAL": "64", "N_POINTS": "64", "BATCH_SIZE": "64"}
EPOCHS = (22, 12, 18)
TINY_EPOCHS = (2, 2, 2)
# The seed's example trial (configs/physae.yaml, enqueue), as bench_physae.py runs it.
EXAMPLE = {
    "A.base_lr": 1.5e-4, "A.refiner_lr": 2.0e-5,
    "B1.refiner_lr": 1.2e-4, "B1.delta_scale": 0.12, "B1.refine_steps": 2,
    "B2.base_lr": 6.0e-5, "B2.refiner_lr": 1.5e-5, "B2.delta_scale": 0.10, "B2.refine_steps": 2,
}  # fmt: skip
GIB = 2**30
MIB = 2**20


def sizes() -> dict[str, str]:
    return dict(TINY if CPU else SIZES)


def device() -> str:
    return "cpu" if CPU else "cuda"


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- results file


def merge(path: Path | None, step: str, result: dict[str, Any]) -> None:
    """Put ``result`` under ``steps[step]`` of the call's JSON file (atomic rename)."""
    if path is None:
        return
    data: dict[str, Any] = {}
    if path.is_file():
        with contextlib.suppress(ValueError):
            data = json.loads(path.read_text())
    data.setdefault("steps", {})[step] = result
    data["dry_run"] = CPU
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------- cuda


def cmd_cuda(args: argparse.Namespace) -> int:
    """Exit 3 with one line unless CUDA computes (the GPU run stops there); also that hpo and
    optuna import, so a missing wheel shows here and not as ten failed steps."""
    try:
        import importlib

        import optuna

        importlib.import_module("hpo.cli")  # every module a command needs at start-up
    except Exception as exc:  # noqa: BLE001 - any import failure stops the check
        say(f"GPU CHECK STOPPED: hpo does not import ({type(exc).__name__}: {exc}); carry .whl "
            "(bash benchmarks/gpu_wheels.sh here, carry: [\".whl\"])")
        merge(args.json, "cuda", {"error": f"hpo does not import: {type(exc).__name__}: {exc}"})
        return 3
    import torch

    facts: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "optuna": optuna.__version__,
                             "python": sys.version.split()[0]}  # fmt: skip
    if CPU:
        product = (torch.ones(64, 64) @ torch.ones(64, 64))[0, 0].item()
        facts.update(device="cpu (dry run)", matmul_ok=product == 64.0)
        say(f"CPU dry run: CUDA not checked; torch {torch.__version__}, optuna {optuna.__version__}, 64x64 matmul "
            f"{'ok' if product == 64.0 else 'WRONG'}")
        merge(args.json, "cuda", facts)
        return 0
    if not torch.cuda.is_available():
        say(f"GPU CHECK STOPPED: CUDA does not work: torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        merge(args.json, "cuda", {**facts, "error": "torch.cuda.is_available() is False"})
        return 3
    try:
        a = torch.ones(256, 256, device="cuda")
        product = (a @ a)[0, 0].item()
        torch.cuda.synchronize()
        if product != 256.0:
            raise RuntimeError(f"256x256 matmul of ones gave {product}, not 256")
    except Exception as exc:  # noqa: BLE001 - any failure of the tiny product stops the check
        say(f"GPU CHECK STOPPED: CUDA does not work: a tiny matmul on cuda failed ({type(exc).__name__}: {exc})")
        merge(args.json, "cuda", {**facts, "error": f"{type(exc).__name__}: {exc}"})
        return 3
    props = torch.cuda.get_device_properties(0)
    facts.update(device=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                 memory_mib=round(props.total_memory / MIB), matmul_ok=True)  # fmt: skip
    say(f"CUDA works: {props.name}, capability {props.major}.{props.minor}, {props.multi_processor_count} SMs, "
        f"{props.total_memory / GIB:.1f} GiB; torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"optuna {optuna.__version__}")
    merge(args.json, "cuda", facts)
    return 0


# ---------------------------------------------------------------- trials


def device_intervals(prof: Any) -> list[tuple[float, float, str]]:
    """(start_us, end_us, name) of every GPU activity (kernels, copies, sets) the profiler saw;
    in the dry run the CPU operators instead, so that the same code runs."""
    import torch

    wanted = torch.autograd.DeviceType.CPU if CPU else torch.autograd.DeviceType.CUDA
    out: list[tuple[float, float, str]] = []
    try:  # the raw kineto events: fast, where this torch has them
        for e in prof.profiler.kineto_results.events():
            if e.device_type() == wanted:
                start = e.start_ns() / 1000
                out.append((start, start + e.duration_ns() / 1000, e.name()))
        return out
    except AttributeError:
        pass
    for e in prof.events():  # FunctionEvent list: slower, same facts
        if getattr(e, "device_type", None) == wanted:
            out.append((e.time_range.start, e.time_range.end, e.name))
    return out


def busy_seconds(intervals: list[tuple[float, float, str]]) -> tuple[float, float]:
    """(union of the intervals, plain sum of their durations), in seconds: the union is how
    long the GPU had something running; the sum counts overlapping work twice."""
    union = total = 0.0
    end = -math.inf
    for start, stop, _ in sorted(intervals):
        total += stop - start
        if start >= end:
            union += stop - start
            end = stop
        elif stop > end:
            union += stop - end
            end = stop
    return union / 1e6, total / 1e6


class EpochHook:
    """Wraps hpo.physae.train._train_epoch (in this process only): every epoch's host wall
    time, and the second epoch of each stage under the profiler when ``profile`` is set.
    The epoch already ends in a host sync (its mean loss), so its wall time is the host's
    time to issue and finish its work."""

    def __init__(self) -> None:
        from hpo.physae import train

        self.train = train
        self.original = getattr(train, "_train_epoch", None)
        self.hooked = self.original is not None
        if self.hooked:
            train._train_epoch = self._epoch
        self.reset(False)

    def reset(self, profile: bool) -> None:
        self.profile = profile
        self.walls: dict[str, list[float]] = defaultdict(list)
        self.profiles: dict[str, dict[str, Any]] = {}
        self.profiler_seconds = 0.0  # the profiler's own start, stop and our analysis

    def _epoch(self, run: Any, spec: Any, opt: Any, *more: Any, **kw: Any) -> Any:
        import torch

        stage = str(getattr(spec, "name", "?"))
        want = self.profile and len(self.walls[stage]) == 1 and stage not in self.profiles
        prof = None
        if want:
            t = time.perf_counter()
            try:
                # CPU and CUDA: the profiler's usual pair (the CPU operators are recorded, not counted).
                activities = [torch.profiler.ProfilerActivity.CPU]
                if not CPU:
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                prof = torch.profiler.profile(activities=activities)
                prof.__enter__()
            except Exception as exc:  # noqa: BLE001 - a profiler that cannot start: time the epoch only
                self.profiles[stage] = {"error": f"{type(exc).__name__}: {exc}"}
                prof = None
            self.profiler_seconds += time.perf_counter() - t
        start = time.perf_counter()
        try:
            loss = self.original(run, spec, opt, *more, **kw)
        finally:
            wall = time.perf_counter() - start
            if prof is not None:
                t = time.perf_counter()
                try:
                    prof.__exit__(None, None, None)
                    intervals = device_intervals(prof)
                    if not intervals:  # CUPTI gave nothing: say so rather than report an idle GPU
                        raise RuntimeError("the profiler recorded no GPU activity")
                    union, total = busy_seconds(intervals)
                    n = int(run.data.train_signal.shape[0])
                    steps = -(-n // int(run.ctx.options["batch_size"]))
                    self.profiles[stage] = {
                        "epoch_wall_s": wall, "gpu_busy_s": union, "gpu_work_s": total,
                        "activities": len(intervals), "steps": steps,
                        "activities_per_step": len(intervals) / steps,
                        "busy_share_of_profiled_epoch": union / wall if wall > 0 else None,
                    }  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - keep the trial going without the profile
                    self.profiles[stage] = {"error": f"{type(exc).__name__}: {exc}"}
                self.profiler_seconds += time.perf_counter() - t
            self.walls[stage].append(wall)
        return loss

    def stage_rows(self) -> dict[str, dict[str, Any]]:
        """Per stage: epochs, median epoch wall (the profiled one left out), and the busy
        share against that median (the profiled epoch runs slower, by the profiler's cost)."""
        rows: dict[str, dict[str, Any]] = {}
        for stage, walls in self.walls.items():
            prof = self.profiles.get(stage, {})
            plain = [w for i, w in enumerate(walls) if not (i == 1 and "epoch_wall_s" in prof)]
            median = statistics.median(plain) if plain else None
            row: dict[str, Any] = {"epochs": len(walls), "first_epoch_s": walls[0], "median_epoch_s": median}
            if "gpu_busy_s" in prof and median:
                row["busy_share"] = min(1.0, prof["gpu_busy_s"] / median)
            row.update({f"profile_{k}": v for k, v in prof.items()})
            rows[stage] = row
        return rows


def parse_run(text: str) -> tuple[str, str, tuple[int, int, int] | None]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(f"--run {text!r}: expected LABEL:MODE or LABEL:MODE:A,B1,B2")
    epochs = tuple(int(x) for x in parts[2].split(",")) if len(parts) == 3 else None
    if epochs is not None and (len(epochs) != 3 or min(epochs) < 1):
        raise argparse.ArgumentTypeError(f"--run {text!r}: epochs must be three positive integers")
    return parts[0], parts[1], epochs  # type: ignore[return-value]


def cmd_trials(args: argparse.Namespace) -> int:
    import torch

    from hpo.config.settings import resolve
    from hpo.physae.data import clear_dataset_cache
    from hpo.physae.objective import objective
    from hpo.physae.settings import SETTINGS
    from hpo.worker.context import TrialContext

    has_compile = any(f.env == "STEP_COMPILE" for f in SETTINGS)
    hook = EpochHook()
    if not hook.hooked:
        say("note: hpo.physae.train has no _train_epoch: no per-epoch timing or GPU-busy share")
    cuda = device() == "cuda"
    clear_dataset_cache()  # the first run generates the dataset, as a fresh worker does
    began = time.monotonic()
    result: dict[str, Any] = {"device": device(), "sizes": sizes(), "step_compile_setting": has_compile, "runs": []}
    full_walls: list[float] = []  # wall times of the runs at the full epochs
    say(f"{'run':<10} {'compile':<16} {'epochs':<9} {'wall s':>7} {'data':>6} {'train':>7} {'eval':>6} {'ckpt':>5} "
        f"{'other':>6}  samples/s A / B1 / B2        peak MiB  GPU busy A / B1 / B2")
    for label, mode, epochs_given in args.run:
        epochs = epochs_given or (TINY_EPOCHS if CPU else EPOCHS)
        row: dict[str, Any] = {"label": label, "step_compile": mode, "epochs": list(epochs)}
        left = args.budget - (time.monotonic() - began)
        if mode != "off" and not has_compile:
            row["skipped"] = "STEP_COMPILE is not a PhysAE setting in this checkout (hpo/physae/settings.py)"
        elif full_walls and epochs_given is None and left < 1.15 * min(full_walls):
            row["skipped"] = (f"{left:.0f} s left of the step's {args.budget:.0f} s; the quickest full run so far "
                              f"took {min(full_walls):.0f} s")
        if "skipped" in row:
            say(f"{label:<10} {mode:<16} skipped: {row['skipped']}")
            result["runs"].append(row)
            merge(args.json, args.step, result)
            continue
        env = {**sizes(), **({"STEP_COMPILE": mode} if has_compile else {})}
        settings = resolve(flags={}, env=env, config_settings={}, config=REPO / "configs" / "physae.yaml",
                           objective_fields=SETTINGS)  # fmt: skip
        params = {**EXAMPLE, "A.epochs": epochs[0], "B1.epochs": epochs[1], "B2.epochs": epochs[2]}
        hook.reset(profile=label in args.profile)
        # Noted before it runs: a run cut off by the step's time limit still shows in the table.
        row["started_at_s"] = round(time.monotonic() - began, 1)
        merge(args.json, args.step, {**result, "runs": [*result["runs"], row]})
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory(prefix="gpu_probe_") as tmp:
            ctx = TrialContext(number=0, params=params, fixed={}, settings=settings, run_dir=Path(tmp),
                               device=device(), options=settings.objective, logger=logging.getLogger("gpu_probe"))  # fmt: skip
            start = time.perf_counter()
            try:
                value = objective(params, ctx)
            except Exception as exc:  # noqa: BLE001 - record it and go on to the next run
                row["error"] = f"{type(exc).__name__}: {exc}"
                say(f"{label:<10} {mode:<16} FAILED after {time.perf_counter() - start:.1f} s: {row['error']}")
                result["runs"].append(row)
                merge(args.json, args.step, result)
                continue
            wall = time.perf_counter() - start
            timings = json.loads((Path(tmp) / "result.json").read_text())["timings"]
        row.update(value=value, wall_s=wall, timings=timings, stages=hook.stage_rows(),
                   profiler_s=hook.profiler_seconds)  # fmt: skip
        if cuda:
            row["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB)
            row["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / MIB)
        if epochs_given is None:
            full_walls.append(wall)  # what the next full run will take, at least roughly
        result["runs"].append(row)
        merge(args.json, args.step, result)
        sps = " / ".join(f"{timings['stages'][s]['samples_per_second']:,.0f}" for s in STAGES)
        busy = " / ".join(f"{100 * row['stages'].get(s, {}).get('busy_share', float('nan')):.0f}%" for s in STAGES)
        say(f"{label:<10} {mode:<16} {','.join(map(str, epochs)):<9} {wall:>7.2f} {timings['data']:>6.2f} "
            f"{timings['train']:>7.2f} {timings['eval']:>6.2f} {timings['checkpoint']:>5.2f} {timings['other']:>6.2f}  "
            f"{sps:<27} {row.get('peak_allocated_mib', '-'):>8}  {busy if label in args.profile else '-'}")
        for stage, srow in row["stages"].items():
            say(f"    {stage}: {srow['epochs']} epochs, first {srow['first_epoch_s']:.3f} s, median "
                f"{srow['median_epoch_s'] or 0:.3f} s" + "".join(
                    f", {k[8:]}={v:.4g}" if isinstance(v, float) else f", {k[8:]}={v}"
                    for k, v in srow.items() if k.startswith("profile_")))
    return 0


# ---------------------------------------------------------------- oom


def oom_objective(params: dict[str, Any], ctx: Any) -> float:
    """Trial 0: allocate 2 GiB blocks until CUDA has no more (the blocks stay referenced by
    this frame, so the traceback holds them until hpo frees them after its except block).
    Later trials: record what memory they find held, then compute a little."""
    import torch

    on_gpu = str(ctx.device).startswith("cuda")
    if ctx.number == 0:
        blocks = []
        try:
            if not on_gpu:  # the dry run: no GPU to exhaust; raise what CUDA would
                blocks.append(torch.empty(1 << 20))
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated: CPU dry run)")
            while True:
                blocks.append(torch.empty(2 * GIB, dtype=torch.uint8, device=ctx.device))
        except torch.cuda.OutOfMemoryError:
            ctx.set_user_attr("oom_after_gib", 2 * len(blocks) if on_gpu else 0)
            raise
    attrs: dict[str, Any] = {}
    if on_gpu:
        free, total = torch.cuda.mem_get_info(ctx.device)
        attrs = {"allocated_at_start_mib": round(torch.cuda.memory_allocated(ctx.device) / MIB),
                 "reserved_at_start_mib": round(torch.cuda.memory_reserved(ctx.device) / MIB),
                 "free_at_start_mib": round(free / MIB), "total_mib": round(total / MIB)}  # fmt: skip
    for key, value in attrs.items():
        ctx.set_user_attr(key, value)
    a = torch.randn(1024, 1024, device=ctx.device)
    (a @ a).sum().item()  # the GPU still computes after the OOM
    return float(params["x"])


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without hpo or PhysAE settings, the repository first on PYTHONPATH
    (hpo runs from the working tree), plus ``extra``."""
    from hpo.config.environment import without_settings
    from hpo.physae.settings import SETTINGS

    env = without_settings(os.environ, SETTINGS)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def journal_trials(journal_dir: Path, study: str) -> list[Any]:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal_dir / f"{study}.journal")))
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def status_counts(journal_dir: Path, study: str, env: dict[str, str]) -> Any:
    """``hpo status --no-slurm --json``'s object (its last line), or its error text."""
    proc = subprocess.run([sys.executable, "-m", "hpo", "status", "--no-slurm", "--json", "--journal-dir",
                           str(journal_dir), "--study-name", study], env=env, capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        status = json.loads(lines[-1])
    except (IndexError, ValueError):
        return f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-300:]}"
    return {k: status.get(k) for k in ("states", "finished", "throughput_per_hour", "throughput_window_s")}


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


def cmd_oom(args: argparse.Namespace) -> int:
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # The objective is this file's oom_objective: the config's folder (this one) and its module.
    config = work / "oom.yaml"
    config.write_text("study_name: gpu_oom\nobjective: gpu_probe:oom_objective\ndirection: minimize\n"
                      "space:\n  x: {type: float, low: 0.0, high: 1.0}\n")
    env = child_env({
        "HPO_CONFIG": str(config), "STUDY_NAME": "gpu_oom", "JOURNAL_DIR": str(work / "journal"),
        "LOG_DIR": str(work / "logs"), "TRIAL_OUTPUT": str(work / "runs"), "MAX_TRIALS": "2",
        "OPTUNA_PRUNER": "none", "OPTUNA_SAMPLER": "random", "HPO_DEVICE": device(), "HPO_EXPORT_AT_END": "0",
        "HPO_FLUSH_SECONDS": "0",
    })  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join((str(Path(__file__).parent), env["PYTHONPATH"]))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hpo", "worker"], cwd=work, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=args.timeout, check=False)  # fmt: skip
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"worker_exit": proc.returncode, "seconds": seconds, "trials": []}
    say(f"hpo worker exited {proc.returncode} after {seconds:.1f} s (0: it went on after the OOM and ended "
        "when the study had its 2 finished trials)")
    relevant = [line for line in (proc.stderr + proc.stdout).splitlines()
                if any(w in line.lower() for w in ("memory", "trial", "error", "stopped"))]  # fmt: skip
    say("worker output (lines naming memory, trials, errors):\n  " + "\n  ".join(relevant[-12:]))
    try:
        trials = journal_trials(work / "journal", "gpu_oom")
    except Exception as exc:  # noqa: BLE001 - the journal may be missing if the worker died early
        result["journal_error"] = f"{type(exc).__name__}: {exc}"
        say(f"journal not readable: {result['journal_error']}\nworker stderr tail:\n{proc.stderr[-2000:]}")
        merge(args.json, args.step, result)
        return 1
    for t in trials:
        keep = ("reason", "gpu_peak_mib", "gpu_total_mib", "oom_after_gib", "allocated_at_start_mib",
                "reserved_at_start_mib", "free_at_start_mib")  # fmt: skip
        attrs = {k: t.user_attrs[k] for k in keep if k in t.user_attrs}
        result["trials"].append({"number": t.number, "state": t.state.name, **attrs})
        say(f"trial {t.number}: {t.state.name} " + ", ".join(f"{k}={v!r}" for k, v in attrs.items()))
    result["status"] = status_counts(work / "journal", "gpu_oom", env)
    merge(args.json, args.step, result)
    first = result["trials"][0] if result["trials"] else {}
    ok = (proc.returncode == 0 and first.get("state") == "FAIL" and first.get("reason") == "out of memory"
          and any(t["state"] == "COMPLETE" for t in result["trials"][1:]))  # fmt: skip
    say(f"verdict: {'as docs/faults.md says' if ok else 'NOT as docs/faults.md says'} (trial 0 FAIL 'out of memory', "
        "a later trial COMPLETE, worker exit 0)")
    return 0 if ok else 1


# ---------------------------------------------------------------- share


def fixed_cost_config(path: Path) -> Path:
    """configs/physae.yaml with each stage's refine steps fixed at 2 (the seed's example): a
    trial's cost per epoch then no longer depends on what the sampler drew."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / "physae.yaml").read_text())
    for stage in ("B1", "B2"):
        config["space"][stage]["refine_steps"] = {"type": "categorical", "choices": [2]}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def epoch_records(runs: Path) -> dict[Path, list[dict[str, Any]]]:
    """Every trial's metrics.jsonl records (one per epoch finished); a torn last line is left out."""
    out: dict[Path, list[dict[str, Any]]] = {}
    for path in runs.rglob("metrics.jsonl"):
        records = []
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
        out[path] = records
    return out


def children(pid: int) -> set[int]:
    """The pids of ``pid``'s child processes (Linux /proc); empty once it is gone."""
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except (OSError, ValueError):
        return set()


def cmd_share(args: argparse.Namespace) -> int:
    n = args.workers
    label = f"{n} worker{'s' if n > 1 else ''}{' + MPS' if args.mps else ''}"
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    study = f"share{n}{'mps' if args.mps else ''}"
    size = sizes()
    epochs = TINY_EPOCHS if CPU else EPOCHS
    env = child_env({
        **size, "HPO_CONFIG": str(fixed_cost_config(work / "physae_fixed_cost.yaml")), "STUDY_NAME": study,
        "JOURNAL_DIR": str(work / "journal"), "LOG_DIR": str(work / "logs"), "TRIAL_OUTPUT": str(work / "runs"),
        "MAX_TRIALS": "10000", "OPTUNA_PRUNER": "none", "HPO_DEVICE": device(), "HPO_EXPORT_AT_END": "0",
        "STAGEA_EPOCHS": str(epochs[0]), "STAGEB1_EPOCHS": str(epochs[1]), "STAGEB2_EPOCHS": str(epochs[2]),
        **({"STEP_COMPILE": args.step_compile} if args.step_compile != "off" else {}),
    })  # fmt: skip
    # --workers-per-gpu says the sharing is meant (no warning); the dry run has no GPU to share.
    command = [sys.executable, "-m", "hpo", "run", "--workers", str(n)] + ([] if CPU else ["--workers-per-gpu", str(n)])
    result: dict[str, Any] = {"workers": n, "mps": args.mps, "label": label, "warmup_s": args.warmup,
                              "window_s": args.window, "n_train": int(size["N_TRAIN"]), "epochs": list(epochs),
                              "step_compile": args.step_compile}  # fmt: skip
    say(f"{label}: {' '.join(command[1:])}, sizes {size}, epochs {epochs}; warm-up {args.warmup:.0f} s, "
        f"window {args.window:.0f} s")
    out = open(work / "hpo_run.out", "w")  # noqa: SIM115 - closed below
    launched = time.monotonic()
    proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    workers: set[int] = set()  # the workers' pids: they run in sessions of their own (hpo run's doing)
    limit_reached = []

    def stop(*_: Any) -> None:  # this step's time limit (SIGTERM from timeout, 5 s before its SIGKILL)
        limit_reached.append(True)
        raise SystemExit(124)

    signal.signal(signal.SIGTERM, stop)
    smi = shutil.which("nvidia-smi") if not CPU else None
    sampler = None
    mps_servers = None
    try:
        time.sleep(max(0.0, args.warmup - (time.monotonic() - launched)))
        workers.update(children(proc.pid))
        if proc.poll() is None:
            before = {p: len(r) for p, r in epoch_records(work / "runs").items()}
            t0, w0 = time.monotonic(), time.time()
            if smi:
                sampler = subprocess.Popen([smi, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                            "-lms", "500"], stdout=open(work / "smi.csv", "w"), stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(args.window / 2)
            if args.mps:  # the MPS server runs while clients are connected: ask it for its list
                ask = subprocess.run(["nvidia-cuda-mps-control"], input="get_server_list\n", capture_output=True,
                                     text=True, timeout=10, check=False)  # fmt: skip
                mps_servers = (ask.stdout + ask.stderr).strip()
            time.sleep(max(0.0, args.window - (time.monotonic() - t0)))
            after = epoch_records(work / "runs")
            t1, w1 = time.monotonic(), time.time()
            if sampler is not None:
                sampler.terminate()
                sampler.wait(5)
    finally:
        exited_early = proc.poll()
        workers.update(children(proc.pid))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # hpo run passes it on: each worker ends its trial (preempted)
        try:
            rc = proc.wait(3 if limit_reached else args.stop_wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(5)
        for pid in workers:  # a worker stuck in a CUDA call ignores SIGTERM: it must not outlive the step
            with contextlib.suppress(OSError):
                if b"hpo" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
                    say(f"worker {pid} still running after hpo run ended: killed")
        out.close()
    result["hpo_run_exit"] = rc
    if exited_early is not None:
        result["error"] = f"hpo run exited {exited_early} before the window ended"
        say(f"{label}: {result['error']}; its output:\n{tail(work / 'hpo_run.out', 30)}")
        for log in sorted((work / "logs").rglob("*.log"))[:4]:
            say(f"--- {log.name}\n{tail(log)}")
        merge(args.json, args.step, result)
        return 1
    window = t1 - t0
    epochs_done = 0
    epoch_seconds = 0.0
    for path, records in after.items():
        new = records[before.get(path, 0):]
        epochs_done += len(new)
        epoch_seconds += sum(float(r.get("seconds", 0.0)) for r in new)
    # Trials that ended inside the window: their result.json was written between its two ends.
    finished = [p for p in (work / "runs").rglob("result.json") if w0 <= p.stat().st_mtime <= w1]
    result.update(window_measured_s=window, epochs_in_window=epochs_done,
                  samples_per_s=epochs_done * int(size["N_TRAIN"]) / window,
                  epoch_share=epoch_seconds / (n * window), trials_finished_in_window=len(finished))  # fmt: skip
    if sampler is not None:
        rows = [line.split(",") for line in (work / "smi.csv").read_text().splitlines() if line.count(",") == 1]
        with contextlib.suppress(ValueError):
            util = [float(u) for u, _ in rows]
            mem = [float(m) for _, m in rows]
            result.update(gpu_util_mean=statistics.mean(util) if util else None, gpu_util_samples=len(util),
                          gpu_memory_used_max_mib=max(mem) if mem else None)  # fmt: skip
    if mps_servers is not None:
        result["mps_server_list"] = mps_servers
    with contextlib.suppress(Exception):
        peaks = [t.user_attrs.get("gpu_peak_mib") for t in journal_trials(work / "journal", study)]
        result["trial_gpu_peak_mib_max"] = max((p for p in peaks if p is not None), default=None)
    merge(args.json, args.step, result)  # before hpo status, which has its own start-up to pay
    result["status"] = status_counts(work / "journal", study, env)
    merge(args.json, args.step, result)
    say(f"{label}: {epochs_done} epochs of {size['N_TRAIN']} samples in {window:.1f} s = "
        f"{result['samples_per_s']:,.0f} samples/s summed; {100 * result['epoch_share']:.0f}% of worker time in "
        f"epochs (train + validation); {len(finished)} trials finished in the window; GPU utilisation "
        f"{fmt(result.get('gpu_util_mean'), '.0f', 'n/a ')}% (nvidia-smi mean), memory used max "
        f"{result.get('gpu_memory_used_max_mib')} MiB, trial gpu_peak_mib max {result.get('trial_gpu_peak_mib_max')}; "
        f"hpo run exit {rc} after SIGTERM" + (f"; MPS servers: {mps_servers!r}" if mps_servers is not None else ""))
    return 0 if epochs_done > 0 else 1


# ---------------------------------------------------------------- summary


def fmt(value: Any, spec: str = ".1f", missing: str = "—") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def summary_lines(data: dict[str, Any], call: int, statuses: list[list[str]]) -> list[str]:
    steps = data.get("steps", {})
    cuda = steps.get("cuda", {})
    lines = [f"### GPU device check, call {call}{' (CPU DRY RUN: no GPU figures)' if data.get('dry_run') else ''}", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"{cuda.get('device') or 'CHECK STOPPED: ' + str(cuda.get('error', 'no CUDA check result'))}"
             f"{', capability ' + cuda['capability'] if 'capability' in cuda else ''}"
             f"{', ' + str(cuda['memory_mib']) + ' MiB' if 'memory_mib' in cuda else ''}; torch {cuda.get('torch', '?')} "
             f"(CUDA {cuda.get('cuda_build')}), optuna {cuda.get('optuna', '?')}, Python {cuda.get('python', '?')}", ""]  # fmt: skip
    if statuses:
        lines += ["| step | limit s | took s | exit |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {limit} | {took} | {rc}{' (time limit)' if rc == '124' else ''} |"
                  for name, limit, took, rc in statuses]  # fmt: skip
        lines.append("")
    for name, step in steps.items():
        if "runs" in step:
            lines += [f"**{name}** (PhysAE in one process, {step['device']}, N_TRAIN={step['sizes']['N_TRAIN']} "
                      f"N_POINTS={step['sizes']['N_POINTS']} BATCH_SIZE={step['sizes']['BATCH_SIZE']}, the seed's example "
                      "parameters):", "",
                      "| run | STEP_COMPILE | epochs | trial s | data s | train s | eval s | samples/s A / B1 / B2 | "
                      "peak alloc MiB | GPU busy A / B1 / B2 |", "|---|---|---|---:|---:|---:|---:|---|---:|---|"]  # fmt: skip
            for run in step["runs"]:
                head = f"| {run['label']} | {run['step_compile']} | {','.join(map(str, run['epochs']))} |"
                if "skipped" in run or "error" in run:
                    lines.append(f"{head} {run.get('skipped') or 'FAILED: ' + run['error']} | | | | | | |")
                    continue
                if "wall_s" not in run:
                    lines.append(f"{head} cut off by the step's time limit ({run['started_at_s']:.0f} s into the step "
                                 "when it started) | | | | | | |")  # fmt: skip
                    continue
                t = run["timings"]
                sps = " / ".join(f"{t['stages'][s]['samples_per_second']:,.0f}" for s in STAGES if s in t["stages"])
                busy = " / ".join(fmt(100 * run["stages"][s]["busy_share"], ".0f") + "%" if "busy_share" in
                                  run["stages"].get(s, {}) else "—" for s in STAGES)  # fmt: skip
                lines.append(f"{head} {run['wall_s']:.1f} | {t['data']:.1f} | {t['train']:.1f} | {t['eval']:.1f} | {sps} | "
                             f"{run.get('peak_allocated_mib', '—')} | {busy} |")  # fmt: skip
            for run in step["runs"]:
                for stage, s in run.get("stages", {}).items():
                    if "profile_activities_per_step" in s:
                        of_profiled = s.get("profile_busy_share_of_profiled_epoch")
                        lines.append(f"- {run['label']}, stage {stage}: median epoch {fmt(s['median_epoch_s'], '.3f')} s; "
                                     f"the profiled one {fmt(s.get('profile_epoch_wall_s'), '.3f')} s, GPU busy "
                                     f"{fmt(s.get('profile_gpu_busy_s'), '.3f')} s of it "
                                     f"({fmt(100 * of_profiled if of_profiled is not None else None, '.0f')}%), "
                                     f"{fmt(s['profile_activities_per_step'], '.0f')} GPU activities per step over "
                                     f"{s['profile_steps']} steps")  # fmt: skip
                    elif "profile_error" in s:
                        lines.append(f"- {run['label']}, stage {stage}: profiler failed: {s['profile_error']}")
            lines.append("")
        elif "worker_exit" in step:
            lines += [f"**{name}** (one `hpo worker`, objective `gpu_probe:oom_objective`, MAX_TRIALS=2): worker exit "
                      f"{step['worker_exit']} after {step['seconds']:.1f} s", "",
                      "| trial | state | reason | gpu_peak_mib | OOM after GiB | held at its start (alloc / reserved MiB) |",
                      "|---:|---|---|---:|---:|---|"]  # fmt: skip
            for t in step.get("trials", []):
                held = (f"{t['allocated_at_start_mib']} / {t['reserved_at_start_mib']}"
                        if "allocated_at_start_mib" in t else "—")  # fmt: skip
                lines.append(f"| {t['number']} | {t['state']} | {t.get('reason', '')} | {t.get('gpu_peak_mib', '—')} | "
                             f"{t.get('oom_after_gib', '—')} | {held} |")  # fmt: skip
            lines.append("")
    shares = [s for s in steps.values() if "workers" in s]
    if shares:
        first = shares[0]
        lines += ["**Workers sharing the GPU** (`hpo run --workers N --workers-per-gpu N`, PhysAE N_TRAIN="
                  f"{first['n_train']}, epochs {'/'.join(map(str, first['epochs']))}, refine steps 2, no pruner; the "
                  f"epochs finished in a {first['window_s']:.0f} s window after a {first['warmup_s']:.0f} s warm-up):", "",
                  "| workers | window s | epochs | samples/s (sum) | time in epochs (± 1 epoch a worker) | trials finished | GPU util | "
                  "GPU memory max MiB | trial peak MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for s in shares:
            if "error" in s:
                lines.append(f"| {s['label']} | FAILED: {s['error']} | | | | | | | |")
                continue
            lines.append(f"| {s['label']} | {fmt(s.get('window_measured_s'), '.0f')} | {s.get('epochs_in_window', '—')} | "
                         f"{fmt(s.get('samples_per_s'), ',.0f')} | {fmt(100 * s['epoch_share'] if 'epoch_share' in s else None, '.0f')}% | "
                         f"{s.get('trials_finished_in_window', '—')} | {fmt(s.get('gpu_util_mean'), '.0f')} % | "
                         f"{fmt(s.get('gpu_memory_used_max_mib'), '.0f')} | {fmt(s.get('trial_gpu_peak_mib_max'), 'd')} |")  # fmt: skip
        lines.append("")
    return lines


def cmd_summary(args: argparse.Namespace) -> int:
    data = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    statuses = []
    if args.statuses and args.statuses.is_file():
        statuses = [line.split("\t") for line in args.statuses.read_text().splitlines() if line.count("\t") == 3]
    text = "\n".join(summary_lines(data, args.call, statuses)) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    global CPU
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU, tiny (also HPO_GPU_CHECK_CPU=1)")
    parser.add_argument("--json", type=Path, default=None, help="the call's results file (merged into)")
    parser.add_argument("--step", default=None, help="this step's name in --json (default: the subcommand)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("cuda", help="CUDA works, or exit 3 with one line")
    p = sub.add_parser("trials", help="PhysAE trials in this process")
    p.add_argument("--run", type=parse_run, action="append", required=True, help="LABEL:STEP_COMPILE[:A,B1,B2]")
    p.add_argument("--profile", action="append", default=[], help="labels of the runs to profile")
    p.add_argument("--budget", type=float, default=1e9, help="skip a run that would not end within this many s")
    p = sub.add_parser("oom", help="a CUDA out-of-memory inside an hpo worker")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=120)
    p = sub.add_parser("share", help="N workers on one GPU over a fixed window")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--warmup", type=float, default=15)
    p.add_argument("--window", type=float, default=30)
    p.add_argument("--stop-wait", type=float, default=10, help="seconds hpo run gets to stop after SIGTERM")
    p.add_argument("--mps", action="store_true", help="label: CUDA MPS is running (CUDA_MPS_PIPE_DIRECTORY set)")
    p.add_argument("--step-compile", default="off")
    p = sub.add_parser("summary", help="the call's results as markdown")
    p.add_argument("--call", type=int, required=True)
    p.add_argument("--statuses", type=Path, default=None, help="tab-separated name, limit, seconds, exit per step")
    p.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    CPU = CPU or args.cpu
    if args.step is None:
        args.step = args.command
    return {"cuda": cmd_cuda, "trials": cmd_trials, "oom": cmd_oom, "share": cmd_share,
            "summary": cmd_summary}[args.command](args)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

"""The embedded default: N worker processes on this machine sharing one journal.

``hpo run --workers N`` starts N ``python -m hpo worker`` processes with the
resolved settings in their environment, pins one visible GPU per worker
round-robin (CPU when there is none), shows progress from the journal, and on
Ctrl-C lets every worker end its trial cleanly (a second Ctrl-C stops them at once).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

from hpo.config import StudyConfig
from hpo.logs import quiet_optuna
from hpo.settings import Settings
from hpo.storage import FINISHED, SharedStudy, open_study

_logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0


def visible_gpus(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """GPU ids to hand out: ``CUDA_VISIBLE_DEVICES`` if set, else every GPU torch sees."""
    if settings.device == "cpu":
        return []
    if "CUDA_VISIBLE_DEVICES" in env:
        return [g for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_env(
    settings: Settings, env: Mapping[str, str], rank: int, gpus: Sequence[str], seed_offset: int
) -> dict[str, str]:
    """Environment of worker ``rank``: the resolved settings and its GPU (pure)."""
    child = {**env, **settings.to_env(), "HPO_WORKER_RANK": str(rank), "HPO_SEED_OFFSET": str(seed_offset),
             "PYTHONUNBUFFERED": "1"}
    # An empty CUDA_VISIBLE_DEVICES hides every GPU: CPU workers stay off the GPUs.
    child["CUDA_VISIBLE_DEVICES"] = gpus[rank % len(gpus)] if gpus else ""
    return child


@dataclass
class Progress:
    finished: int
    running: int
    failed: int
    best: float | None
    eta_seconds: float | None

    def line(self, max_trials: int) -> str:
        best = "-" if self.best is None else f"{self.best:.6g}"
        eta = "-" if self.eta_seconds is None else f"{self.eta_seconds:.0f}s"
        return (f"{self.finished}/{max_trials} finished, {self.running} running, {self.failed} failed, "
                f"best {best}, ETA {eta}")


def progress(shared: SharedStudy, started: float, finished_at_start: int) -> Progress:
    trials = shared.trials()
    finished = [t for t in trials if t.state in FINISHED]
    complete = [t.values[0] for t in trials if t.values and t.state.name == "COMPLETE"]
    best = None
    if complete:
        best = min(complete) if shared.study.directions[0].name == "MINIMIZE" else max(complete)
    done_here = len(finished) - finished_at_start
    elapsed = time.monotonic() - started
    remaining = shared.settings.max_trials - len(finished)
    eta = remaining * elapsed / done_here if done_here > 0 and remaining > 0 else (0.0 if remaining <= 0 else None)
    return Progress(len(finished), sum(t.state.name == "RUNNING" for t in trials),
                    sum(t.state.name == "FAIL" for t in trials), best, eta)


def run_local(settings: Settings, config: StudyConfig, n_workers: int, env: Mapping[str, str]) -> int:
    """Run the study here with ``n_workers`` processes; returns the exit status."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, soft_wrap=True)
    quiet_optuna()
    shared = open_study(settings, config)  # creates it and its warm start once, before the workers race
    gpus = visible_gpus(settings, env)
    console.print(f"study [bold]{settings.study_name}[/] in {settings.journal_path}: "
                  f"{n_workers} worker(s) on {', '.join('GPU ' + g for g in gpus) if gpus else 'CPU'}")
    console.print(f"worker logs: {settings.log_dir}/worker_*.log  (follow: tail -f {settings.log_dir}/worker_*.log)")
    console.print(f"run directories: {settings.study_dir}/trial_<number>/")
    finished_at_start = sum(1 for t in shared.trials() if t.state in FINISHED)
    # A resumed study gets new seeds (see hpo.worker.sampler_seed); a fresh one OPTUNA_SEED + rank.
    seed_offset = 10_000 * sum(1 for t in shared.trials() if t.state.is_finished())
    procs = [
        subprocess.Popen([sys.executable, "-m", "hpo", "worker", "--quiet"],
                         env=worker_env(settings, env, rank, gpus, seed_offset))
        for rank in range(n_workers)
    ]
    # A scheduler's SIGTERM reaches only us: pass it on so workers end trials cleanly.
    signal.signal(signal.SIGTERM, lambda signum, frame: [p.send_signal(signum) for p in procs if p.poll() is None])
    started = time.monotonic()
    bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
              TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
              disable=not console.is_terminal)
    last_line = ""
    interrupted = False
    with bar:
        task = bar.add_task(settings.study_name, total=settings.max_trials, info="")
        while any(p.poll() is None for p in procs):
            try:
                time.sleep(POLL_SECONDS)
                state = progress(shared, started, finished_at_start)
                line = state.line(settings.max_trials)
                bar.update(task, completed=state.finished, info=line.split(", ", 1)[1])
                if not console.is_terminal and line != last_line:
                    console.print(line)
                    last_line = line
            except KeyboardInterrupt:
                # The terminal sent SIGINT to every worker too; they end their trials.
                if interrupted:
                    for p in procs:
                        if p.poll() is None:
                            p.send_signal(signal.SIGINT)
                interrupted = True
                console.print("interrupt: workers are ending their trials (Ctrl-C again to stop at once)")
    if console.is_terminal:
        console.print(progress(shared, started, finished_at_start).line(settings.max_trials))
    codes = [p.returncode for p in procs]
    if interrupted or 130 in codes:
        return 130
    return next((c for c in codes if c != 0), 0)


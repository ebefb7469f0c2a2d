"""What launchers share: the live progress of a study, and the record of its jobs."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from hpo.config.settings import Settings
from hpo.study.shared import SharedStudy

if TYPE_CHECKING:
    import submitit

POLL_SECONDS = 1.0


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
    """Counts, best value and an ETA from the rate of trials finished since ``started``."""
    trials = shared.trials()
    finished = shared.finished()
    values = [t.values[0] for t in trials if t.values and t.state.name == "COMPLETE"]
    best = None
    if values:
        best = min(values) if shared.study.directions[0].name == "MINIMIZE" else max(values)
    done_here = finished - finished_at_start
    remaining = shared.spec.max_trials - finished
    if remaining <= 0:
        eta: float | None = 0.0
    elif done_here > 0:
        eta = remaining * (time.monotonic() - started) / done_here
    else:
        eta = None
    return Progress(finished, sum(t.state.name == "RUNNING" for t in trials),
                    sum(t.state.name == "FAIL" for t in trials), best, eta)


def show_progress(studies: Sequence[SharedStudy], running: Callable[[], bool],
                  on_interrupt: Callable[[int], None] = lambda count: None) -> None:
    """A live bar per study (or, off a terminal, a line per change) until ``running()`` is false.

    Ctrl-C calls ``on_interrupt(n)`` with the count of interrupts so far and keeps
    following, so workers can end their trials while we watch.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, soft_wrap=True)
    started = time.monotonic()
    at_start = [shared.finished() for shared in studies]
    bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
              TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
              disable=not console.is_terminal)
    prefix = (lambda shared: f"{shared.spec.study_name}: ") if len(studies) > 1 else (lambda shared: "")
    last_lines, interrupts = ["" for _ in studies], 0
    with bar:
        tasks = [bar.add_task(s.spec.study_name, total=s.spec.max_trials, info="") for s in studies]
        while running():
            try:
                time.sleep(POLL_SECONDS)
                for i, shared in enumerate(studies):
                    state = progress(shared, started, at_start[i])
                    line = prefix(shared) + state.line(shared.spec.max_trials)
                    bar.update(tasks[i], completed=state.finished, info=line.split(", ", 1)[1])
                    # Off a terminal, print a line when counts or best change (not the ETA alone).
                    if not console.is_terminal and line.rsplit(", ETA", 1)[0] != last_lines[i].rsplit(", ETA", 1)[0]:
                        console.print(line)
                        last_lines[i] = line
            except KeyboardInterrupt:
                interrupts += 1
                on_interrupt(interrupts)
                console.print("interrupt: workers are ending their trials (Ctrl-C again to stop at once)")
    for i, shared in enumerate(studies):
        final = prefix(shared) + progress(shared, started, at_start[i]).line(shared.spec.max_trials)
        if final != last_lines[i]:
            console.print(final)


def follow_commands(settings: Settings) -> str:
    return "\n".join([
        "follow it with:",
        f"  hpo status --study-name {shlex.quote(settings.study_name)}",
        f"  hpo logs -f --study-name {shlex.quote(settings.study_name)}",
        f"  tail -f {shlex.quote(str(settings.log_dir))}/worker_*.log",
    ])


def wait_for_study(studies: Sequence[SharedStudy], jobs: "Sequence[submitit.Job[str]]") -> int:
    """Follow the studies until every job is done; 0 when each study has its trials."""
    show_progress(studies, lambda: any(not job.done() for job in jobs))
    return 0 if all(shared.finished() >= shared.spec.max_trials for shared in studies) else 1

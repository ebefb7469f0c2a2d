"""The embedded default: N worker processes on this machine sharing one journal.

``hpo run --workers N`` starts N ``python -m hpo worker`` processes with the
resolved settings in their environment, pins one visible GPU per worker
round-robin (CPU when there is none; only GPU N with ``HPO_DEVICE=cuda:N``), shares the
CPUs it was given (its affinity mask) among them, shows progress from the journal, and on
Ctrl-C lets every worker end its trial cleanly (a second Ctrl-C stops them at once).

Signals: the workers run in a session of their own, and ``hpo run`` passes on every
SIGINT (Ctrl-C), SIGTERM, SIGUSR1 and SIGUSR2 it gets, and a SIGHUP (its terminal closed)
as SIGTERM: a scheduler's warning sent to ``hpo run`` alone reaches every worker (USR1's
default action used to kill ``hpo run`` and orphan them), and a Ctrl-C reaches each
worker once, not twice (the terminal's and ours). Each worker ends its trial and stops
(75 preempted, 130 interrupted); ``hpo run`` waits for them and exits with their status.
A worker never outlives ``hpo run``: it gets SIGTERM when ``hpo run`` dies, however it
dies (``PR_SET_PDEATHSIG``), and ``hpo run`` ending on an error sends it SIGTERM first.
A scheduler that signals every process of the job (``scancel``, SLURM's time limit)
reaches the workers directly too: twice for them, harmless for SIGTERM and SIGUSR1, and
for SIGINT the second ends the trial at once (FAIL ``interrupted`` all the same).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from typing import Mapping, Sequence

from hpo.config.identity import SchedulerVars, new_launch_id
from hpo.config.settings import Settings
from hpo.config.study import Launch
from hpo.errors import UsageError
from hpo.launch.progress import show_progress
from hpo.study.shared import open_study
from hpo.system.logs import quiet_optuna
from hpo.system.processes import die_with_parent, task_cpus
from hpo.worker.device import given_gpus, gpu_driver, resolve_device

_logger = logging.getLogger(__name__)

FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)  # passed on as they are (SIGINT and SIGHUP: see run_local)


def visible_gpus(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """GPU ids to hand out: those ``CUDA_VISIBLE_DEVICES`` lists if set, else every GPU of
    the node; with ``HPO_DEVICE=cuda:N`` only the N-th (exit 2 when there is none)."""
    if settings.device == "cpu" or (settings.device == "auto" and not gpu_driver()):
        return []  # no driver: GPUs that CUDA_VISIBLE_DEVICES may name are of no use (hpo.worker.device)
    visible = SchedulerVars.from_env(env).visible_gpus
    if settings.device.startswith("cuda:"):
        return [resolve_device(settings.device, visible).gpu]  # a GPU this machine does not have: exit 2
    return given_gpus(visible)


def plan_gpus(gpus: Sequence[str], workers: int | None, per_gpu: int | None) -> tuple[list[str], str | None]:
    """Each worker's GPU (``""``: the CPU) for ``workers`` workers (None: ``per_gpu`` on every
    GPU, else one) sharing ``gpus`` at most ``per_gpu`` to a GPU, and a warning when workers
    share GPUs nobody asked them to share (pure). Raises :class:`UsageError` (exit 2)."""
    given = len(gpus)
    if per_gpu is not None and not gpus:
        raise UsageError(f"--workers-per-gpu {per_gpu}: this machine gives no GPU (HPO_DEVICE, CUDA_VISIBLE_DEVICES); "
                         "valid: leave it out to run on the CPU")
    n = workers if workers is not None else (per_gpu * given if per_gpu else 1)
    if per_gpu is not None and n > per_gpu * given:
        raise UsageError(f"--workers {n} with --workers-per-gpu {per_gpu}: that needs {-(-n // per_gpu)} GPUs, this "
                         f"machine gives {given} ({', '.join(gpus)}); valid: --workers up to {per_gpu * given}")
    if not gpus:
        return [""] * n, None
    if per_gpu is not None:
        return [gpus[rank // per_gpu] for rank in range(n)], None
    plan = [gpus[rank % given] for rank in range(n)]
    warning = None if n <= given else (
        f"{n} workers on {given} GPU(s): up to {-(-n // given)} share one; --workers-per-gpu {-(-n // given)} "
        f"says that is meant (and --workers {given} keeps one to a GPU)")
    return plan, warning


def worker_env(
    launch: Launch, env: Mapping[str, str], rank: int, gpu: str, launch_id: str,
    threads: int, workers: int = 1, sharers: int = 1,
) -> dict[str, str]:
    """Environment of worker ``rank`` of launch ``launch_id``: the resolved settings, its GPU
    (``""``: none) and its CPU threads (pure). The seed comes from both (see
    hpo.worker.study_run.sampler_seed); ``sharers``: the workers this launch puts on its GPU."""
    own = launch.to_env(worker_rank=rank, launch_id=launch_id, local_workers=workers, gpu_sharers=sharers)
    child = {**env, **own, "PYTHONUNBUFFERED": "1"}
    # N workers each starting one thread per core would oversubscribe the CPU N-fold.
    child.setdefault("OMP_NUM_THREADS", str(threads))
    return {**child, **gpu_env(child, gpu)}


def gpu_env(env: Mapping[str, str], gpu: str) -> dict[str, str]:
    """What gives a local worker its one GPU (``""``: none, so CPU workers stay off the GPUs):
    ``CUDA_VISIBLE_DEVICES``, and ``HPO_DEVICE=cuda`` where ``cuda:N`` chose it (pure)."""
    out = {"CUDA_VISIBLE_DEVICES": gpu}
    if gpu and env.get("HPO_DEVICE", "").startswith("cuda:"):
        out["HPO_DEVICE"] = "cuda"  # the worker sees only that one
    return out


def run_local(launch: Launch, plan: Sequence[str], env: Mapping[str, str], shared_gpus: str | None = None) -> int:
    """Run the launch's studies here with one process per entry of ``plan`` (its GPU, or
    ``""``; :func:`plan_gpus`); returns the exit status."""
    quiet_optuna()
    # Creates each study and its warm start once, before the workers race.
    studies = [open_study(s.spec, c) for s, c in launch.studies]
    n_workers = len(plan)
    _announce(launch, plan, shared_gpus)
    # One launch: a fresh study's workers seed OPTUNA_SEED + rank, a resumed one's anew
    # (see hpo.worker.study_run.sampler_seed).
    launch_id = new_launch_id()
    threads = max(1, task_cpus() // n_workers)
    workers = _Workers([])
    # Before the first worker starts: a signal that comes while they start is passed on too.
    for signum in FORWARDED:
        signal.signal(signum, lambda signum, frame: workers.send(signum))
    signal.signal(signal.SIGHUP, lambda signum, frame: workers.send(signal.SIGTERM))
    signal.signal(signal.SIGINT, lambda signum, frame: workers.interrupt(workers.interrupted + 1))
    try:
        for rank in range(n_workers):
            workers.procs.append(subprocess.Popen(
                [sys.executable, "-m", "hpo", "worker", "--quiet"],
                env=worker_env(launch, env, rank, plan[rank], launch_id, threads, n_workers,
                               plan.count(plan[rank]) if plan[rank] else 1),
                start_new_session=True, preexec_fn=die_with_parent))  # signals reach them through us, once
        show_progress(studies, workers.running)
    finally:
        workers.stop_remaining()  # we end on an error: no worker is left behind
    codes = [_status(rank, p) for rank, p in enumerate(workers.procs)]
    if workers.interrupted or 130 in codes:
        return 130
    return next((c for c in codes if c != 0), 0)


def _status(rank: int, proc: "subprocess.Popen[bytes]") -> int:
    """A worker's exit status as a shell gives it: 128 + N for one a signal killed (a
    segfault in the objective's native code: 139), said in one line naming the worker."""
    code = proc.returncode
    if code is None or code >= 0:
        return code or 0
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code not in (signal.SIGTERM, signal.SIGINT):  # those we passed on ourselves
        print(f"hpo: worker rank {rank} (pid {proc.pid}) was killed by {name}; a trial it was running stays "
              "RUNNING until a worker finds its heartbeat older than HPO_STALE_SECONDS, then fails it 'worker "
              "lost' and retries it (its log: the worker_*.log of that pid)", file=sys.stderr)
    return 128 - code


def _announce(launch: Launch, plan: Sequence[str], shared_gpus: str | None) -> None:
    from collections import Counter

    from rich.console import Console

    console, settings = Console(stderr=True, soft_wrap=True), launch.settings
    several = len(launch.studies) > 1
    names = ", ".join(s.study_name for s, _ in launch.studies)
    per_gpu = Counter(g for g in plan if g)
    where = ", ".join(f"GPU {g}" + (f" (x{k})" if k > 1 else "") for g, k in per_gpu.items()) or "CPU"
    console.print(f"{'studies' if several else 'study'} [bold]{names}[/] in {settings.storage_label if settings.storage else settings.journal_dir}: "
                  f"{len(plan)} worker(s) on {where}")
    if shared_gpus:
        console.print(f"[yellow]warning:[/] {shared_gpus}")
    if several:
        console.print("every worker works on the studies in order, moving to the next one when a study's "
                      "MAX_TRIALS are finished (or while all its remaining trials are running)")
    console.print(f"worker logs: {settings.log_dir}/worker_*.log  (follow: tail -f {settings.log_dir}/worker_*.log)")
    console.print(f"run directories: {settings.trial_output}/<study>/trial_<number>/")


class _Workers:
    """The worker processes of one ``hpo run``, as its signal handling sees them."""

    def __init__(self, procs: list[subprocess.Popen[bytes]]) -> None:
        self.procs, self.interrupted = procs, 0

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def send(self, signum: int) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signum)

    def interrupt(self, count: int) -> None:
        """SIGINT (Ctrl-C): passed on each time; the first lets workers end their trials,
        the second stops them at once."""
        self.interrupted = count
        self.send(signal.SIGINT)
        sys.stderr.write("interrupt: workers are ending their trials (Ctrl-C again to stop at once)\n")

    def stop_remaining(self, grace: float = 30.0) -> None:
        """SIGTERM to every worker still running, then wait up to ``grace`` seconds for each."""
        if not self.running():
            return
        self.send(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()

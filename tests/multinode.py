"""Helpers for end-to-end tests on the multi-node dev cluster (``cluster.sh start --nodes N``).

The cluster runs nodes ``n1``..``nN`` on this host. Each node is a slurmd in its own
UTS, PID and mount namespace whose pid 1 is a child of the ``unshare`` recorded in
``/run/slurm/hpo-node-<node>.pid``. Every node, and this submit host, sees one GlusterFS
volume at :data:`SHARED` (default options) and another at :data:`SHARED_STRICT` (strict
coherence), each through its own FUSE client. See slurm/dev-cluster/README.md.

Everything here acts on real processes: signals go to host pids found through
``/proc/<pid>/ns/pid``, commands run inside a node with ``nsenter``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import optuna

from conftest import REPO, load_study, missing

__all__ = [
    "MODES", "SHARED", "SHARED_STRICT", "VOLUMES", "brick_pid", "cluster_nodes", "init_pid", "kill_node",
    "load_study", "node_pids", "on_node", "proc_state", "pause_brick", "require_multinode", "restore_nodes", "run_on",
    "signal_node", "signal_pid", "trial_counts", "wait_until",
]

T = TypeVar("T")
CLUSTER_SH = REPO / "slurm" / "dev-cluster" / "cluster.sh"
RUN_DIR = Path("/run/slurm")
GLUSTER_PIDS = Path("/var/run/gluster/vols")
SHARED = Path(os.environ.get("HPO_SHARED_DIR", "/shared"))
SHARED_STRICT = Path(os.environ.get("HPO_SHARED_STRICT_DIR", "/shared-strict"))
_VOLUME = os.environ.get("HPO_GLUSTER_VOLUME", "hpodev")
#: shared folder and GlusterFS volume of each coherence mode
MODES = {"default": SHARED, "strict": SHARED_STRICT}
VOLUMES = {"default": _VOLUME, "strict": f"{_VOLUME}-strict"}


# Node n1's own client mount of each volume, as the submit host sees it (cluster.sh).
NODE_MOUNTS = Path("/var/lib/slurm-hpo/gluster/mnt")


def client_pair(mode: str) -> tuple[Path, Path] | None:
    """Two client mounts of ONE volume, both visible here: the submit host's shared
    folder and node n1's own mount of it (``mode``: default or strict); None when the
    multi-node cluster does not run."""
    a, b = MODES[mode], NODE_MOUNTS / "n1" / mode
    return (a, b) if _is_glusterfs(a) and _is_glusterfs(b) else None


def cluster_nodes() -> list[str]:
    """The multi-node cluster's node names (``n1``, ``n2``, ...), or [] when it does not run."""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    nodes = {n for n in out.split() if n[:1] == "n" and n[1:].isdigit()}
    return sorted((n for n in nodes if (RUN_DIR / f"hpo-node-{n}.pid").exists()), key=lambda n: int(n[1:]))


def _is_glusterfs(path: Path) -> bool:
    out = subprocess.run(["findmnt", "-rn", "-M", str(path), "-o", "FSTYPE"], capture_output=True, text=True)
    return "fuse.glusterfs" in out.stdout.split()


def require_multinode(min_nodes: int) -> list[str]:
    """The nodes; a test fails (never skips) with the command that starts the cluster."""
    nodes = cluster_nodes()
    problems = []
    if len(nodes) < min_nodes:
        problems.append(f"{len(nodes)} namespaced node(s) running, {min_nodes} needed")
    problems += [f"{p} is not a GlusterFS mount" for p in MODES.values() if not _is_glusterfs(p)]
    if problems:
        missing(f"multi-node dev cluster not available ({'; '.join(problems)})",
                "bash slurm/dev-cluster/cluster.sh install && bash slurm/dev-cluster/cluster.sh start --nodes 3")
    return nodes


# -- processes of a node ----------------------------------------------------------
def init_pid(node: str) -> int:
    """Host pid of the node's pid 1 (the only child of its ``unshare``)."""
    unshare = int((RUN_DIR / f"hpo-node-{node}.pid").read_text().split()[0])
    children = Path(f"/proc/{unshare}/task/{unshare}/children").read_text().split()
    if not children:
        raise RuntimeError(f"node {node}: unshare {unshare} has no child (node down?)")
    return int(children[0])


def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:  # gone, or a kernel thread
        return None


def node_pids(node: str) -> list[int]:
    """Host pids of every process of the node (its PID namespace), pid 1 first."""
    init = init_pid(node)
    ns = _pid_ns(init)
    others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != init and _pid_ns(int(p)) == ns]
    return [init, *sorted(others)]


def signal_pid(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to one host pid; a process that already left is not an error."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def signal_node(node: str, sig: signal.Signals) -> list[int]:
    """Send ``sig`` (SIGSTOP, SIGCONT, ...) to every process of the node; returns the pids."""
    pids = node_pids(node)
    for pid in pids:
        signal_pid(pid, sig)
    return pids


def kill_node(node: str, timeout: float = 30) -> list[int]:
    """SIGKILL every process of the node, its slurmd and pid 1 included, as a power loss would;
    returns the pids once all are gone. The node's GlusterFS client (a host process) stays:
    the volume sees the node's processes vanish, their open files and locks released."""
    pids = signal_node(node, signal.SIGKILL)
    wait_until(lambda: not any(Path(f"/proc/{p}").exists() and proc_state(p) != "Z" for p in pids), timeout,
               f"processes of node {node} still alive after SIGKILL")
    return pids


def proc_state(pid: int) -> str:
    """The process's state letter (R, S, T stopped, Z zombie, ...); X when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def restore_nodes(timeout: float = 240) -> None:
    """Bring back every node that died (``cluster.sh start`` with the running node count is
    idempotent: it restarts missing slurmds and resumes DOWN nodes) and wait until healthy."""
    count = (Path("/var/lib/slurm-hpo/nodes").read_text().strip() or "1")
    proc = subprocess.run(["bash", str(CLUSTER_SH), "start", "--nodes", count], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"cluster.sh start failed: {proc.stderr[-2000:]}"


def on_node(node: str, argv: list[str], cwd: Path, env: dict[str, str], **kwargs: object) -> subprocess.Popen[str]:
    """Start ``argv`` inside the node (its hostname, its PID namespace, its own shared mounts)."""
    cmd = ["nsenter", "-t", str(init_pid(node)), "-u", "-p", "-m", f"--wd={cwd}", "--", *argv]
    return subprocess.Popen(cmd, env=env, text=True, stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]


def run_on(node: str, argv: list[str], cwd: Path = Path("/"), env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the node and wait; output captured."""
    proc = on_node(node, argv, cwd, dict(os.environ) if env is None else env,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- the filesystem ---------------------------------------------------------------
def brick_pid(volume: str) -> int:
    """Host pid of the volume's (single) brick process, glusterfsd."""
    pidfiles = list((GLUSTER_PIDS / volume).glob("*.pid"))
    if len(pidfiles) != 1:
        raise RuntimeError(f"volume {volume}: expected one brick pid file in {GLUSTER_PIDS / volume}, got {pidfiles}")
    pid = int(pidfiles[0].read_text().split()[0])
    if Path(f"/proc/{pid}/comm").read_text().strip() != "glusterfsd":
        raise RuntimeError(f"volume {volume}: pid {pid} is not a glusterfsd")
    return pid


@contextmanager
def pause_brick(volume: str, seconds: float) -> Iterator[threading.Thread]:
    """SIGSTOP the volume's brick now and SIGCONT it after ``seconds`` (in a thread, so the
    caller can watch while every client blocks); on exit the brick is always running again.
    Keep ``seconds`` below the clients' ``network.ping-timeout`` (42 s), or they disconnect."""
    pid = brick_pid(volume)

    def resume_later() -> None:
        time.sleep(seconds)
        signal_pid(pid, signal.SIGCONT)

    os.kill(pid, signal.SIGSTOP)
    thread = threading.Thread(target=resume_later, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join()  # the pause lasts its full length even when the body ends early
        signal_pid(pid, signal.SIGCONT)


# -- the study --------------------------------------------------------------------
def trial_counts(study: optuna.Study) -> Counter[str]:
    """Trials by state name, plus ``finished`` (COMPLETE + PRUNED, what MAX_TRIALS counts)."""
    counts = Counter(t.state.name for t in study.trials)
    counts["finished"] = counts["COMPLETE"] + counts["PRUNED"]
    return counts


def wait_until(predicate: Callable[[], T | None], timeout: float, message: str, poll: float = 0.5) -> T:
    """Poll ``predicate`` until it returns something truthy (returned), or fail with ``message``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (after {timeout:.0f}s)")
        time.sleep(poll)

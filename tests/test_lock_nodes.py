"""The journal lock across "nodes": processes with their own host name (``unshare
--uts``), on local disk and on a GlusterFS volume seen through two client mounts.

GlusterFS cases take the two mount points of ONE volume from ``HPO_TEST_GLUSTER_A``
and ``HPO_TEST_GLUSTER_B``, else from the dev cluster (``/shared`` and node n1's own
mount); without either they fail. They are marked ``cluster``; the local-disk cases run
with the other tests. Every case needs ``unshare --uts`` as root (util-linux), and fails
without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from conftest import missing
from hpo.journal.scan import scan

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(180)


def _require_unshare() -> None:
    """A second host name needs ``unshare --uts`` as root: fail (never skip) without it."""
    if shutil.which("unshare") is None:
        missing("`unshare` not found (a second host name needs it)", "apt-get install util-linux")
    probe = subprocess.run(["unshare", "--uts", "--fork", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        missing(f"`unshare --uts` failed: {probe.stderr.strip()}", "run the tests as root (a new UTS namespace)")


@pytest.fixture(params=["local", pytest.param("glusterfs", marks=pytest.mark.cluster)])
def two_views(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """One fresh folder as seen by node A and by node B (the same path on local disk)."""
    _require_unshare()
    if request.param == "local":
        yield tmp_path, tmp_path
        return
    from multinode import client_pair

    pair = client_pair("default")
    a = os.environ.get("HPO_TEST_GLUSTER_A") or (str(pair[0]) if pair else None)
    b = os.environ.get("HPO_TEST_GLUSTER_B") or (str(pair[1]) if pair else None)
    if not a or not b:
        missing("no two client mounts of one GlusterFS volume: HPO_TEST_GLUSTER_A/_B unset and the dev cluster's "
                "/shared not mounted", "bash slurm/dev-cluster/cluster.sh start --nodes 3")
    name = f"lock-test-{uuid.uuid4().hex[:8]}"
    (Path(a) / name).mkdir()
    deadline = time.monotonic() + 10
    while not (Path(b) / name).is_dir():  # the other client sees it about 1 s late
        assert time.monotonic() < deadline, f"{b}/{name} never appeared: are both mounts of one volume?"
        time.sleep(0.1)
    yield Path(a) / name, Path(b) / name
    shutil.rmtree(Path(a) / name, ignore_errors=True)


def _on_node(host: str, script: str, *args: object, env: dict[str, str] | None = None,
             stdout: int | None = subprocess.PIPE, stderr: int | None = None) -> subprocess.Popen[str]:
    """Run ``python -c script args`` as if on host ``host`` (its own UTS namespace)."""
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    argv = ["unshare", "--uts", "--fork", "sh", "-c", 'hostname "$0" && exec "$@"', host,
            sys.executable, "-c", script, *map(str, args)]
    return subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, text=True, env=env)


def _make_study(journal: Path) -> None:
    optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(journal))))


def _records_of(journal: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in journal.read_bytes().splitlines()]


# argv: journal, writer name, grace seconds. One study user attribute, one append.
WRITE_ONE = """
import os, signal, sys, optuna
from optuna.storages import JournalStorage
from hpo.journal.backend import GuardedFileBackend
from hpo.system.lock import OwnerLock
optuna.logging.set_verbosity(optuna.logging.WARNING)
path, who, grace = sys.argv[1], sys.argv[2], float(sys.argv[3])
if sys.argv[4:] == ["stop-before-fence"]:
    # Stop this process once, holding the lock, just before its first fence: the worst
    # point a test can reach (the window left is the write itself).
    fence = OwnerLock.fence
    def stop_then_fence(self, *args, **kwargs):
        OwnerLock.fence = fence
        os.kill(os.getpid(), signal.SIGSTOP)
        return fence(self, *args, **kwargs)
    OwnerLock.fence = stop_then_fence
lock = OwnerLock(path, grace_seconds=grace, refresh_seconds=grace / 5)
study = optuna.load_study(study_name="s", storage=JournalStorage(GuardedFileBackend(path, lock_obj=lock)))
print(os.getpid(), flush=True)
study.set_user_attr(who, who * 50000)  # a 50 kB record: room to interleave
print("written", flush=True)
"""

# argv: journal, writer name, grace seconds, seconds to keep the lock after taking it.
# Takes the lock (breaking a stalled holder's after grace), checks that nobody
# appends while it holds it, appends its own record, and reports the sizes.
ROB = """
import json, os, sys, time, optuna
from optuna.storages import JournalStorage
from hpo.journal.backend import GuardedFileBackend
from hpo.system.lock import OwnerLock
optuna.logging.set_verbosity(optuna.logging.WARNING)
path, who, grace, hold = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
lock = OwnerLock(path, grace_seconds=grace, refresh_seconds=grace / 5)
study = optuna.load_study(study_name="s", storage=JournalStorage(GuardedFileBackend(path, lock_obj=lock)))
lock.acquire()
before = os.path.getsize(path)
print("held", flush=True)
time.sleep(hold)
during = os.path.getsize(path)
study.set_user_attr(who, who * 50000)  # reentrant: the same thread holds the lock
lock.release()
print(json.dumps({"before": before, "during": during}), flush=True)
"""


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_holder_robbed_while_stopped_before_its_fence_does_not_write(two_views: tuple[Path, Path]) -> None:
    """Worst reachable point: node A SIGSTOPs itself holding the lock, right before
    the fence. Node B breaks the lock after the grace period and holds it; A is
    continued meanwhile. A must not append while B holds the lock (no second
    writer), then append once after B: both records exactly once, nothing garbled,
    and plain Optuna loads the journal."""
    view_a, view_b = two_views
    grace = 2.0
    _make_study(view_a / "j.journal")
    time.sleep(1.5)  # GlusterFS: let the other client see the new journal
    a = _on_node("node-a", WRITE_ONE, view_a / "j.journal", "A", grace, "stop-before-fence",
                 stderr=subprocess.PIPE)
    b = None
    try:
        assert a.stdout is not None
        pid_a = int(a.stdout.readline())
        deadline = time.monotonic() + 30
        while _state(pid_a) != "T":
            assert a.poll() is None and time.monotonic() < deadline, "node A never stopped in the lock"
            time.sleep(0.05)
        b = _on_node("node-b", ROB, view_b / "j.journal", "B", grace, 2 * grace)
        assert b.stdout is not None
        assert b.stdout.readline().strip() == "held"  # broke A's lock after the grace period
        os.kill(pid_a, 18)  # SIGCONT: A resumes inside its locked section, robbed
        sizes = json.loads(b.stdout.readline())
        assert b.wait(timeout=60) == 0
        _, err_a = a.communicate(timeout=60)
        assert a.returncode == 0, err_a
    finally:
        for proc in (a, b):
            if proc is not None:
                proc.kill()
                proc.wait()
    assert sizes["during"] == sizes["before"], "node A appended while node B held the lock"
    assert "not appending" in err_a and "taking the lock again" in err_a
    time.sleep(1.5)  # GlusterFS: let A's append reach B's view too
    for view in {view_a, view_b}:
        journal = view / "j.journal"
        assert scan(journal).clean
        writers = [k for r in _records_of(journal) for k in r.get("user_attr", {})]  # type: ignore[union-attr]
        assert writers == ["B", "A"]  # each once, A after B
        study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(journal))))
        assert study.user_attrs == {"A": "A" * 50000, "B": "B" * 50000}


# argv: journal, writer name, records. Through hpo's own storage (the production lock).
APPEND_MANY = """
import sys, optuna
from pathlib import Path
from hpo.journal.backend import open_journal
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = open_journal(Path(sys.argv[1]))
study = optuna.load_study(study_name="s", storage=storage)
for i in range(int(sys.argv[3])):
    study.set_user_attr(f"{sys.argv[2]}-{i}", i)
"""


def test_many_writers_on_two_nodes_lose_and_duplicate_nothing(two_views: tuple[Path, Path]) -> None:
    """Two nodes, three writers each on its own view of the folder, 40 appends
    each through hpo's storage: exactly 240 records, none garbled, no writer
    dies (ESTALE and friends are handled in the lock), plain Optuna loads it."""
    view_a, view_b = two_views
    _make_study(view_a / "j.journal")
    time.sleep(1.5)
    n, per_node = 40, 3
    start = time.monotonic()
    procs = [_on_node(node, APPEND_MANY, view / "j.journal", f"{node}-{k}", n, stdout=None, stderr=subprocess.PIPE)
             for node, view in (("node-a", view_a), ("node-b", view_b)) for k in range(per_node)]
    try:
        results = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    took = time.monotonic() - start
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(err[-3000:] for _, err in results)
    time.sleep(1.5)
    journal = view_b / "j.journal"
    result = scan(journal)
    print(f"\n{2 * per_node} writers x {n} appends on {view_a.parent}: {took:.1f} s")
    assert result.clean and result.records == 1 + 2 * per_node * n
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert len(study.user_attrs) == 2 * per_node * n
    assert not any(p.name.endswith((".lock", ".break")) for p in view_a.iterdir())

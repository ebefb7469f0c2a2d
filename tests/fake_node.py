"""One fake "node" for multi-node tests: ``fake_node.py NAME N FIRST_RANK`` sets this
UTS namespace's host name to NAME (run it under ``unshare --uts --pid --fork --mount-proc``)
and runs N ``python -m hpo worker`` processes with the inherited environment and ranks
FIRST_RANK, FIRST_RANK + 1, ... (as SLURM tasks have). Exits with the highest worker
exit status."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def main(name: str, workers: int, first_rank: int) -> int:
    socket.sethostname(name)
    procs = [subprocess.Popen([sys.executable, "-m", "hpo", "worker"], stdin=subprocess.DEVNULL,
                              env={**os.environ, "HPO_WORKER_RANK": str(first_rank + i)})
             for i in range(workers)]
    return max(p.wait() for p in procs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))

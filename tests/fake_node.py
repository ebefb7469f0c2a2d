"""One fake "node" for multi-node tests: ``fake_node.py NAME N`` sets this UTS
namespace's host name to NAME (run it under ``unshare --uts --pid --fork --mount-proc``)
and runs N ``python -m hpo worker`` processes with the inherited environment.
Exits with the highest worker exit status."""

from __future__ import annotations

import socket
import subprocess
import sys


def main(name: str, workers: int) -> int:
    socket.sethostname(name)
    procs = [subprocess.Popen([sys.executable, "-m", "hpo", "worker"], stdin=subprocess.DEVNULL)
             for _ in range(workers)]
    return max(p.wait() for p in procs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))

"""A trial's run directory, made when the trial first has something to keep there.

What makes it: the objective asking for ``ctx.run_dir`` (checkpoints, ``ctx.log_metrics``),
a line of the trial's own in its log, or any warning or error (a failed trial always
has its folder, its traceback in ``trial.log``). When it is made, hpo's files about the
trial go in at once: ``params.json``, ``settings.json`` and the ``trial.log`` lines so
far; ``trial.json`` follows at the trial's end. A trial that needs none of that (an
analytic objective that returns a number) leaves no folder: its parameters, values,
attributes and state are in the journal and its lines in the worker log
(``hpo logs --trial N`` reads them there).

Why not always: a folder and four new files were most of a short trial's cost (a new
inode is 0.2-0.3 ms on the dev machine's ext4, and every journal fsync commits the
pending ones: 1,000 null trials took 3.3x plain Optuna's time), and on a shared
filesystem with inode quotas, thousands of folders that restate the journal are a cost
of their own.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from hpo.system.files import make_dirs, write_json
from hpo.system.logs import TrialLog


class RunDir:
    """One trial's folder, made once on first use (:meth:`make`; idempotent, any thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log: TrialLog | None = None  # the trial's log, opened when the folder is made
        self._files: dict[str, Callable[[], Any]] = {}  # what goes in when it is made (name -> its JSON)
        self._made = False
        self._lock = threading.Lock()  # the heartbeat thread's warnings may make it too

    @property
    def made(self) -> bool:
        return self._made

    def note(self, name: str, payload: Callable[[], Any]) -> None:
        """A file of hpo's about the trial: written now if the folder exists, else when it
        is made (``payload()``: nothing is computed for a folder never made)."""
        with self._lock:
            if self._made:
                write_json(self.path / name, payload())
            else:
                self._files[name] = payload

    def make(self) -> None:
        with self._lock:
            if not self._made:
                make_dirs(self.path)
                # Plain writes: they restate what the journal holds, in a fresh directory.
                for name, payload in self._files.items():
                    write_json(self.path / name, payload())
                self._files.clear()
                self._made = True
        if self.log is not None:
            self.log.open()

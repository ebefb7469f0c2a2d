"""A trial's run directory, made when the trial first has something to keep there.

What makes it: the objective asking for ``ctx.run_dir`` (checkpoints, ``ctx.log_metrics``),
a line of the trial's own in its log, or any warning or error (a trial whose objective
raised has its folder, the traceback in ``trial.log``), or a folder of that name already
there (left by an earlier study of the same name: hpo's files in it are replaced, as
before). When it is made, hpo's files about the trial go in at once: ``params.json``,
``settings.json`` and the ``trial.log`` lines so far; ``trial.json`` at the trial's end,
or when the folder is made after it. A trial that needs none of that (an analytic
objective that returns a number) leaves no folder: its parameters, values, attributes
and state are in the journal, its lines in the worker log (``hpo logs --trial N`` reads
them there), and the settings its worker ran with in
``$TRIAL_OUTPUT/<study>/workers/<worker>.settings.json`` (:func:`worker_settings_path`).

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

from hpo.system.files import make_dirs, write_json, write_json_atomic
from hpo.system.logs import TrialLog


def worker_settings_path(study_dir: Path, worker_id: str) -> Path:
    """Where a worker's settings are kept for the trials it ran without a folder of their own."""
    return study_dir / "workers" / f"{worker_id}.settings.json"


class RunDir:
    """One trial's folder, made once on first use (:meth:`make`; idempotent, any thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log: TrialLog | None = None  # the trial's log, opened when the folder is made
        # What goes in when it is made: name -> (its JSON, replaced atomically).
        self._files: dict[str, tuple[Callable[[], Any], bool]] = {}
        self._made = False
        self._lock = threading.Lock()  # the heartbeat thread's warnings may make it too

    @property
    def made(self) -> bool:
        return self._made

    def note(self, name: str, payload: Callable[[], Any], atomic: bool = False) -> None:
        """A file of hpo's about the trial: written now if the folder exists, else when it
        is made (``payload()``: nothing is computed for a folder never made). ``atomic``:
        replaced whole (``trial.json``, which readers poll), not fsynced: the journal is
        the durable record."""
        with self._lock:
            if self._made:
                self._write(name, payload, atomic)
            else:
                self._files[name] = (payload, atomic)

    def _write(self, name: str, payload: Callable[[], Any], atomic: bool) -> None:
        if atomic:
            write_json_atomic(self.path / name, payload(), durable=False)
        else:
            write_json(self.path / name, payload())

    def make(self) -> None:
        with self._lock:
            if not self._made:
                make_dirs(self.path)
                # They restate what the journal holds, in a fresh directory.
                for name, (payload, atomic) in self._files.items():
                    self._write(name, payload, atomic)
                self._files.clear()
                self._made = True
        if self.log is not None:
            self.log.open()

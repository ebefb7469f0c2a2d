"""Logging of workers: one line-buffered file per worker, one per trial.

Handlers are set up only here, called from entry points. Every line carries the
worker id, the study, and the trial number while a trial runs, so
``tail -f optuna_logs/worker_*.log`` and ``hpo logs -f`` are readable as is, and
``hpo logs --study-name X`` keeps the lines of study X when several studies write
worker logs into one ``LOG_DIR`` (even into one file: a reused pid, a requeued task).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from hpo.system.files import make_dirs

_trial: contextvars.ContextVar[str] = contextvars.ContextVar("hpo_trial", default="-")
_worker: list[str] = ["-", "-"]  # worker id and study: setup_worker_logging, then log_study (a sweep)

# hpo.watch.logs.RECORD_RE reads these lines back: keep the two in step.
FORMAT = "%(asctime)s %(worker)s study=%(study)s trial=%(trial)s %(levelname)s %(message)s"
DATEFMT = "%Y-%m-%dT%H:%M:%S"


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.worker, record.study = _worker
        record.trial = _trial.get()
        return True


_H = TypeVar("_H", bound=logging.Handler)


def _handler(handler: _H) -> _H:
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    handler.addFilter(_ContextFilter())
    return handler


def log_study(study: str) -> None:
    """The study the next lines belong to (a sweep's worker moves from study to study)."""
    _worker[1] = study


def setup_worker_logging(log_dir: Path, worker_id: str, echo_level: str | None = "INFO", study: str = "-") -> Path:
    """Send the ``hpo`` loggers to ``log_dir/worker_<id>.log`` (appending) and to
    stderr from ``echo_level`` up (None: file only); every line names ``study``."""
    _worker[:] = [worker_id, study]
    quiet_optuna()
    make_dirs(log_dir)
    path = log_dir / f"worker_{worker_id}.log"
    root = logging.getLogger("hpo")
    root.setLevel(logging.INFO)
    root.propagate = False
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    # FileHandler flushes after every record: the file is live for tail -f.
    root.addHandler(_handler(logging.FileHandler(path, encoding="utf-8")))
    if echo_level is not None:
        stream = _handler(logging.StreamHandler(sys.stderr))
        stream.setLevel(echo_level)
        root.addHandler(stream)
    return path


# Loggers of hpo's own machinery: their lines below WARNING (a trial's start and end, a
# lock's wait) are the worker's bookkeeping, not something the trial has to keep.
MAX_WAITING = 1000  # lines a trial's log keeps in memory before its folder exists
_MACHINERY = ("hpo.worker.", "hpo.study.", "hpo.journal.", "hpo.system.", "hpo._optuna", "hpo.config.",
              "hpo.launch.")


class TrialLog(logging.Handler):
    """A trial's own log, ``trial.log`` in its run directory, which it does not make itself.

    Lines wait in memory until the directory exists (:meth:`open`, called by whoever made
    it). A line of the trial's own (its objective's loggers: ``hpo.trial``, its package's)
    or any WARNING and above first makes the directory through ``make_dir``; hpo's
    bookkeeping lines alone never do, so a trial with nothing to keep leaves no folder, and
    a trial that has one finds every line of its run there, the first ones included."""

    def __init__(self, path: Path, make_dir: Callable[[], None]) -> None:
        super().__init__()
        self.path, self._make_dir = path, make_dir
        self._waiting: list[logging.LogRecord] = []
        self._file: logging.FileHandler | None = None
        self._closed = False

    def open(self) -> None:
        """The run directory exists: write the lines that waited, then each as it comes
        (nothing once the trial is over: a ``ctx.run_dir`` read after its end)."""
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            if self._file is None and not self._closed:
                self._file = logging.FileHandler(self.path, encoding="utf-8")
                self._file.setFormatter(self.formatter)
                for record in self._waiting:
                    self._file.emit(record)
                self._waiting.clear()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._file is None and (record.levelno >= logging.WARNING or not record.name.startswith(_MACHINERY)):
                self._make_dir()  # which calls open()
                self.open()
            if self._file is not None:
                self._file.emit(record)
            elif len(self._waiting) < MAX_WAITING:  # the first lines; the rest are in the worker log
                self._waiting.append(record)
        except Exception:  # noqa: BLE001 - a full disk must not turn a log line into the trial's end
            self.handleError(record)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._closed = True
            if self._file is not None:
                self._file.close()
            self._waiting.clear()
        super().close()


@contextlib.contextmanager
def trial_logging(number: int, path: Path, make_dir: Callable[[], None]) -> Iterator[TrialLog]:
    """While a trial runs: tag lines with its number and copy them to its own log
    (:class:`TrialLog`: ``path``, once ``make_dir`` made its folder)."""
    token = _trial.set(str(number))
    handler = _handler(TrialLog(path, make_dir))
    root = logging.getLogger("hpo")
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        handler.close()
        _trial.reset(token)


def quiet_optuna() -> None:
    """Optuna's own INFO lines ("Using an existing study ...") repeat per worker: hide them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

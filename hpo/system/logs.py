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
from typing import Iterator

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


def _handler(handler: logging.Handler) -> logging.Handler:
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


@contextlib.contextmanager
def trial_logging(number: int, path: Path) -> Iterator[None]:
    """While a trial runs: tag lines with its number and copy them to its own log."""
    token = _trial.set(str(number))
    handler = _handler(logging.FileHandler(path, encoding="utf-8"))
    root = logging.getLogger("hpo")
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        _trial.reset(token)


def quiet_optuna() -> None:
    """Optuna's own INFO lines ("Using an existing study ...") repeat per worker: hide them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

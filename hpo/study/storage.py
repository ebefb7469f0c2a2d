"""Where a study lives: the journal file by default, or an RDB server when asked.

``$JOURNAL_DIR/$STUDY_NAME.journal`` is a plain Optuna 5 journal: ``optuna.load_study``
and ``optuna-dashboard`` read it as is (opened by :func:`hpo.journal.backend.open_journal`,
which guards it against torn writes). ``HPO_STORAGE=sqlite:///…``/``postgresql://…``
opens Optuna's RDB storage instead, with its own heartbeat table: the reaper
(:mod:`hpo.worker.recovery`) takes its stale verdicts, fails those trials ``worker lost``
and retries them as on the journal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import optuna

from hpo.errors import StorageError, UsageError
from hpo.journal.backend import open_journal
from hpo.journal.reader import StudyJournal

if TYPE_CHECKING:
    from hpo.config.settings import StudySpec


def open_storage(spec: "StudySpec", should_stop: Callable[[], bool] | None = None) -> optuna.storages.BaseStorage:
    """The study's storage; ``should_stop`` is polled by every wait for the journal's lock."""
    if not spec.storage:
        return open_journal(spec.journal_path, should_stop, spec.journal_lock)
    import warnings

    from sqlalchemy.exc import SQLAlchemyError

    try:
        with warnings.catch_warnings():  # Optuna flags RDB heartbeats as experimental on every open
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                spec.storage,
                heartbeat_interval=max(1, int(spec.heartbeat_seconds)),
                grace_period=max(2, int(spec.stale_seconds)),
                engine_kwargs={"pool_pre_ping": True} if spec.storage.startswith("postgresql") else None,
            )
    except ImportError as exc:  # sqlalchemy's driver for that scheme (mysql://: MySQLdb) is not installed
        raise UsageError(f"HPO_STORAGE={spec.storage_label}: its database driver is not installed ({exc}); valid: "
                         "sqlite:///PATH, postgresql+psycopg2://… (installed with hpo), or install the driver") from None
    except SQLAlchemyError as exc:  # a database that cannot be reached or made: one line, not sqlalchemy's trace
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise StorageError(f"HPO_STORAGE={spec.storage_label}: cannot open the database: {reason}; valid: a "
                           "database this node can reach (for sqlite:///PATH, an existing, writable folder)") from None


@dataclass(frozen=True)
class StoredStudy:
    """What a launch checks of an existing study before it writes anything."""

    directions: tuple[str, ...]  # "minimize" / "maximize"
    system_attrs: Mapping[str, Any]


def stored_study(spec: "StudySpec") -> StoredStudy | None:
    """The study as its storage holds it, read without writing anything (the journal by hpo's
    reader, an RDB through Optuna); None when it does not exist yet."""
    if not spec.storage:
        if not spec.journal_path.exists():
            return None
        try:
            study = StudyJournal.read(spec.journal_path, spec.study_name).study
        except UsageError:  # the file holds other studies only
            return None
        return StoredStudy(tuple(d.lower() for d in study.directions), study.system_attrs)
    storage = open_storage(spec)
    try:
        sid = storage.get_study_id_from_name(spec.study_name)
    except KeyError:
        return None
    return StoredStudy(tuple(d.name.lower() for d in storage.get_study_directions(sid)),
                       storage.get_study_system_attrs(sid))

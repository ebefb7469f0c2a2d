"""Where a study lives: the journal file by default, or an RDB server when asked.

``$JOURNAL_DIR/$STUDY_NAME.journal`` is a plain Optuna 5 journal: ``optuna.load_study``
and ``optuna-dashboard`` read it as is (opened by :func:`hpo.journal.backend.open_journal`,
which guards it against torn writes). ``HPO_STORAGE=sqlite:///…``/``postgresql://…``
opens Optuna's RDB storage instead, with its own heartbeat table: the reaper
(:mod:`hpo.worker.recovery`) takes its stale verdicts, fails those trials ``worker lost``
and retries them as on the journal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import optuna

from hpo.journal.backend import open_journal

if TYPE_CHECKING:
    from hpo.config.settings import StudySpec


def open_storage(spec: "StudySpec", should_stop: Callable[[], bool] | None = None) -> optuna.storages.BaseStorage:
    """The study's storage; ``should_stop`` is polled by every wait for the journal's lock."""
    if not spec.storage:
        return open_journal(spec.journal_path, should_stop, spec.journal_lock)
    return optuna.storages.RDBStorage(
        spec.storage,
        heartbeat_interval=max(1, int(spec.heartbeat_seconds)),
        grace_period=max(2, int(spec.stale_seconds)),
        engine_kwargs={"pool_pre_ping": True} if spec.storage.startswith("postgresql") else None,
    )

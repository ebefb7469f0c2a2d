"""The end-of-study export (``HPO_EXPORT_AT_END``): when a study has its trials, the first
worker to see it writes ``results/<study>/`` (``hpo export``, then ``hpo plot``) as it stops,
in a child process, so that no other worker waits and a failure there cannot break a worker."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from hpo.config.settings import Settings
from hpo.study.shared import SharedStudy

_logger = logging.getLogger(__name__)

EXPORT_TIMEOUT_SECONDS = 900


def export_at_end(s: Settings, shared: SharedStudy, env: Mapping[str, str]) -> Path | None:
    """Write ``results/<study>/`` (``hpo export``, then ``hpo plot``) once the study has its trials.

    Every worker that sees the study done calls this; the first to create the marker
    ``results/<study>/.exported-<finished>`` (``O_EXCL``: one winner, on a shared folder
    too) runs both commands in a child process, after its own last trial, so no other
    worker waits and a failure there cannot break the worker (it logs a WARNING naming
    ``export.log``). More trials later (a higher ``MAX_TRIALS``) export again.
    Returns the log of the export this worker ran, or None.
    """
    finished = shared.finished()
    folder = s.results_dir
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".exported-{finished}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return None  # another worker does it
    try:
        return _export(s, finished, folder, env)
    except BaseException:
        # Cut short (a second Ctrl-C): the marker goes, so the next worker to stop, or
        # `hpo export`, writes these results instead of finding them claimed.
        marker.unlink(missing_ok=True)
        raise


def _export(s: Settings, finished: int, folder: Path, env: Mapping[str, str]) -> Path:
    log = folder / "export.log"
    env = {**env, **s.to_env()}
    _logger.info("study %r has its %d trials: writing %s (exports and figures; log %s)", s.study_name, finished,
                 folder, log)
    with log.open("ab") as out:
        for command in (["export"], ["plot"]):
            try:
                done = subprocess.run([sys.executable, "-m", "hpo", *command], env=env, stdout=out, stderr=out,
                                      stdin=subprocess.DEVNULL, timeout=EXPORT_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                _logger.warning("hpo %s for study %r took over %ds; see %s", command[0], s.study_name,
                                EXPORT_TIMEOUT_SECONDS, log)
                continue
            if done.returncode != 0:
                _logger.warning("hpo %s for study %r failed (exit %d); see %s", command[0], s.study_name,
                                done.returncode, log)
    return log

"""Idempotent runs: a content-addressed store of finished trials (``HPO_REUSE_RESULTS``).

Every run keyed by its content: rerunning the same configuration reuses what was
computed. With ``HPO_REUSE_RESULTS=true``, every COMPLETE trial is also
written to::

    $TRIAL_OUTPUT/runs/p_<problem>/r_<run>/manifest.json   what ran: objective, params, options, seeds
                                          /metrics.json    what came out: values, metrics, seconds

- ``p_<problem>``: a SHA-256 (12 hex digits) of the objective, its options (its
  settings, ``objective_args``, a sweep cell's values), ``DATA_SEED`` and the setup's
  key: everything but the parameters;
- ``r_<run>``: a SHA-256 of the manifest (the problem, the parameters, ``TRAIN_SEED``).

A later trial, in this study or any other, with the same manifest does not train: it
reads ``metrics.json``, is told the same values (and gets the same metrics, plus
``reused_from``), and the worker log says so. Only COMPLETE trials are stored; PRUNED,
FAIL and taken ones never are. Both files are JSON written atomically (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from hpo.system.files import make_dirs, write_json_atomic

_logger = logging.getLogger(__name__)

RUNS_DIR = "runs"
MANIFEST, METRICS = "manifest.json", "metrics.json"
# Each trial's problem id (the p_<hash> below, whether HPO_REUSE_RESULTS keeps its run or not):
# seed 003's ``pid`` column of the exports.
PROBLEM_ID_ATTR = "problem_id"


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RunKey:
    manifest: dict[str, Any]
    folder: Path  # $TRIAL_OUTPUT/runs/p_<problem>/r_<run>

    def stored(self) -> dict[str, Any] | None:
        """The stored outcome of an identical run, or None."""
        try:
            data = json.loads((self.folder / METRICS).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("values"), list) else None

    def store(self, values: list[float], metrics: Mapping[str, Any], seconds: float, origin: Mapping[str, Any]) -> None:
        """Keep a COMPLETE trial's outcome (manifest first: metrics.json means whole)."""
        make_dirs(self.folder)
        write_json_atomic(self.folder / MANIFEST, self.manifest)
        write_json_atomic(self.folder / METRICS, {"values": values, "metrics": dict(metrics),
                                                  "seconds": round(seconds, 3), **origin})


def problem_of(objective: str, options: Mapping[str, Any], data_seed: int, setup_key: str | None
               ) -> tuple[dict[str, Any], str]:
    """A trial's problem (everything but its parameters and TRAIN_SEED) and its id ``p_<hash>``."""
    problem = {"objective": objective, "options": dict(options), "data_seed": data_seed, "setup": setup_key}
    return problem, f"p_{_digest(problem)}"


def run_key(trial_output: Path, problem: Mapping[str, Any], problem_id: str, params: Mapping[str, Any],
            train_seed: int) -> RunKey:
    """The run of ``params`` on the problem (:func:`problem_of`), and its folder."""
    manifest = {"problem": dict(problem), "problem_id": problem_id, "params": dict(params), "train_seed": train_seed}
    folder = trial_output / RUNS_DIR / problem_id / f"r_{_digest(manifest)}"
    return RunKey(manifest, folder)

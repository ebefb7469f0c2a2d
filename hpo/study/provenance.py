"""The study remembers its config and every launch.

The first launch copies the study config to ``$TRIAL_OUTPUT/$STUDY_NAME/study_config.yaml``.
Later launches compare: a different config is refused with a unified diff unless
``--reuse-stored`` (run with the stored one) or ``--overwrite`` (back the stored one
up, store the new one). Each launch appends to ``provenance.jsonl`` beside it: time,
host, the settings given by environment or flags, package versions, git commit.
"""

from __future__ import annotations

import difflib
import enum
import json
import logging
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from hpo.config.settings import Settings
from hpo.config.study import StudyConfig, load_config
from hpo.errors import StudyMismatch
from hpo.journal.coherence import retry_transient
from hpo.system.files import make_dirs, write_bytes_atomic, write_once
from hpo.system.lock import make_lock

_logger = logging.getLogger(__name__)

STORED_NAME = "study_config.yaml"


class ConfigMode(enum.Enum):
    CHECK = "check"
    REUSE_STORED = "reuse-stored"
    OVERWRITE = "overwrite"


def stored_config_path(settings: Settings) -> Path:
    return settings.study_dir / STORED_NAME


def config_diff(stored: str, new: str, new_name: str) -> str:
    return "".join(difflib.unified_diff(stored.splitlines(True), new.splitlines(True),
                                        fromfile=f"stored {STORED_NAME}", tofile=new_name))


def reconcile(settings: Settings, config: StudyConfig, mode: ConfigMode) -> StudyConfig:
    """The config this launch runs with; refuses a changed config in CHECK mode.

    Writes nothing in CHECK mode when refusing (exit 2, nothing written)."""
    stored_path = stored_config_path(settings)
    stored_text = _stored_text(stored_path)
    if stored_text is None:
        if write_once(stored_path, config.text.encode()):
            return config
        # Another worker of this launch stored it just now (this node may not list it yet).
        stored_text = retry_transient("reading the stored config", str(stored_path), stored_path.read_text)
    if yaml.safe_load(stored_text) == yaml.safe_load(config.text):
        return config
    if mode is ConfigMode.CHECK:
        check_unchanged(settings, config)
    if mode is ConfigMode.REUSE_STORED:
        _logger.info("using the stored config %s instead of %s", stored_path, config.path)
        return load_config(stored_path)
    if mode is ConfigMode.OVERWRITE:
        backup = stored_path.with_name(f"{STORED_NAME}.bak-{time.strftime('%Y%m%dT%H%M%S')}")
        stored_path.replace(backup)
        write_bytes_atomic(stored_path, config.text.encode())
        _logger.info("stored config replaced by %s (old one kept as %s)", config.path, backup)
        return config
    raise AssertionError("unreachable: every mode is handled above")


def check_unchanged(settings: Settings, config: StudyConfig) -> None:
    """Refuse (exit 2, nothing written) a study whose stored config differs from ``config``;
    a launch over a sweep checks every study this way before it writes anything."""
    stored_path = stored_config_path(settings)
    stored_text = _stored_text(stored_path)
    if stored_text is None:
        return
    if yaml.safe_load(stored_text) == yaml.safe_load(config.text):
        return
    raise StudyMismatch(
        f"study {settings.study_name!r} was run with another config ({stored_path}); "
        f"rerun with --reuse-stored to keep the stored one or --overwrite to replace it (it is backed up):\n"
        + config_diff(stored_text, config.text, str(config.path))
    )


def _stored_text(path: Path) -> str | None:
    """The stored config's text, or None when there is none. Read through the transient
    ENOENT/ESTALE a shared filesystem answers while another node writes the folder."""
    if not path.is_file():
        return None
    return retry_transient("reading the stored config", str(path), path.read_text)


def _git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _versions() -> dict[str, str]:
    out = {}
    for package in ("hpo", "optuna", "torch", "submitit", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


def record_launch(settings: Settings, config: StudyConfig, launcher: str) -> dict[str, Any]:
    """Append this launch's provenance; returns the record."""
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "launcher": launcher,
        "host": socket.gethostname(),
        "config": str(config.path),
        "overrides": {f.name: {"value": str(settings.value(f)), "source": settings.sources[f.name]}
                      for f in settings.fields() if not f.internal
                      and (settings.sources[f.name] == "flag" or settings.sources[f.name].startswith("env:"))},
        "versions": _versions(),
        "git_commit": _git_commit(config.path.resolve().parent),
    }
    path = settings.study_dir / "provenance.jsonl"
    make_dirs(path.parent)
    # Under the file's own lock: the workers of one launch record at the same moment, and
    # unlocked appends from two clients of a network filesystem can garble lines.
    with make_lock(path), path.open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
    return record

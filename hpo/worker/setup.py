"""A study's setup stage: computed once, cached by a hash of its inputs, handed to every trial.

Some work is the same for every trial: an expensive reference solution computed once per
problem, or a pre-screening of the hardest samples before the search. A study config
names such a function::

    setup: mypkg.prepare:reference       # called as reference(ctx: SetupContext) -> dict

It runs before the first trial, once for all workers of all nodes, even when 64 start
at the same moment:

- **Inputs**: the config says which options the setup depends on::

      setup_inputs: [problem]     # names of objective_args, matrix variables or objective settings

  ``ctx.options`` then holds only those (a setup cannot quietly read an option its key
  leaves out). Without ``setup_inputs`` it gets, and depends on, every option: the
  objective's settings and ``objective_args``. A name that is not an option is bad input
  (exit 2 before anything is written, :func:`check_setup_inputs`).
- **Key**: a SHA-256 of the function's name, its inputs' values and ``DATA_SEED``.
  Same inputs, same key: a second study, another cell of a sweep (seed 003's reference
  per problem serves every method), a rerun, or a later worker reuses the result.
  Change an input and the setup runs again, into a new folder.
- **Cache**: ``$JOURNAL_DIR/setup-cache/<key>/`` on the shared filesystem:
  ``result.json`` (what the function returned, JSON: no pickle) and any files the
  function wrote into ``ctx.cache_dir`` (arrays, checkpoints). The function runs in a
  fresh ``<key>.tmp-*`` folder renamed into place when done: the folder exists whole
  or not at all.
- **Once**: the first worker takes ``<key>.lock`` (hpo's owner lock, the journal's:
  safe across nodes, broken when its holder dies, refreshed while a long setup runs);
  the others wait on it, then read the result. In a sweep, a worker that finds another
  cell's setup being computed does not wait (``wait=False`` raises :class:`SetupBusy`):
  it computes another cell's setup or runs trials of a cell whose setup is ready, and
  waits for the lock only when nothing else is left (:mod:`hpo.worker.loop`). Setups of
  different keys thus run at once on different workers; one key is never computed twice.
- **Failure** (an exception, or a result that is not a JSON mapping) stops the workers
  before any trial: the worker that ran it writes ``<key>.error.json`` (the exception
  and traceback) and raises :class:`SetupFailed`; a
  worker that waited meanwhile, or that starts within :data:`ERROR_HOLD_SECONDS`
  after it, raises the same error without running it again. A later launch (the bug
  fixed) runs it again.

Trials get the result as ``ctx.setup`` and the folder as ``ctx.setup_dir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from hpo.errors import HpoError, UsageError
from hpo.system.files import make_dirs, write_json_atomic

if TYPE_CHECKING:
    from hpo.config.settings import Settings
    from hpo.config.study import StudyConfig

_logger = logging.getLogger(__name__)

CACHE_DIR = "setup-cache"
ERROR_HOLD_SECONDS = 60.0  # a failure this recent is not retried: workers of one launch fail once
RESULT_FILE, ERROR_FILE = "result.json", "error.json"


class SetupFailed(HpoError):
    """The study's setup function raised: no trial can run."""

    exit_code = 1


class SetupBusy(Exception):
    """Another worker computes this setup now. Raised only to a caller that asked not to
    wait (``ensure_setup(..., wait=False)``): it works on something else and asks again."""


@dataclass(frozen=True)
class SetupContext:
    """What a setup function gets: the objective's knobs, hpo's settings, and a folder."""

    options: Mapping[str, Any]  # its setup_inputs (declared), else every option as trials get them
    settings: "Settings"
    cache_dir: Path  # write files here; they are kept with the result
    logger: logging.Logger


@dataclass(frozen=True)
class SetupResult:
    key: str
    directory: Path
    value: Mapping[str, Any]
    computed_here: bool  # False: read from the cache


def options_of(settings: "Settings", config: "StudyConfig") -> dict[str, Any]:
    """``ctx.options``: the config's ``objective_args`` and the objective's settings."""
    return {**config.objective_args, **settings.objective}


def setup_options(settings: "Settings", config: "StudyConfig") -> dict[str, Any]:
    """The setup's ``ctx.options``, which its key hashes: the declared ``setup_inputs``, or
    every option when none are declared. Raises :class:`UsageError` for a declared name
    that is not an option."""
    options = options_of(settings, config)
    if config.setup_inputs is None:
        return options
    _check_inputs(config, options)
    return {name: options[name] for name in config.setup_inputs}


def check_setup_inputs(settings: "Settings", config: "StudyConfig") -> None:
    """Refuse (exit 2) a ``setup_inputs`` name that is not an option of the objective, before
    anything is written; ``config`` may be a whole sweep (its matrix variables are options)."""
    if config.setup_inputs is not None:
        _check_inputs(config, {**options_of(settings, config), **dict.fromkeys(n for n, _ in config.matrix)})


def _check_inputs(config: "StudyConfig", options: Mapping[str, Any]) -> None:
    unknown = [name for name in config.setup_inputs or () if name not in options]
    if unknown:
        valid = ", ".join(sorted(options)) or "none (no objective_args, matrix or objective settings)"
        raise UsageError(f"{config.path}: setup_inputs: {unknown[0]!r} is not an option of the objective; "
                         f"valid: {valid}")


def setup_key(function: str, options: Mapping[str, Any], data_seed: int) -> str:
    """The cache key: exactly the function's name, ``options`` (the setup's inputs) and ``DATA_SEED``."""
    text = json.dumps({"setup": function, "options": options, "data_seed": data_seed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _failure(config: "StudyConfig", error: Mapping[str, Any], path: Path) -> SetupFailed:
    return SetupFailed(f"setup {config.setup} (from {config.path}) failed: {error.get('error')}; no trial was run. "
                       f"Traceback: {path}")


def ensure_setup(settings: "Settings", config: "StudyConfig",
                 should_stop: Callable[[], bool] | None = None, wait: bool = True) -> SetupResult | None:
    """The study's setup result: from the cache, or computed now (once for every worker).

    Returns None when the config has no ``setup``. Raises :class:`SetupFailed` when the
    function raised or returned something that is not a JSON mapping (here or, recently,
    in another worker), :class:`UsageError` when it cannot be imported or ``setup_inputs``
    names no option, ``LockWaitAborted`` when ``should_stop()`` turns true while another
    worker runs it, and, with ``wait=False``, :class:`SetupBusy` instead of waiting for
    that worker.
    """
    if config.setup is None:
        return None
    from hpo.system.lock import LockTimeout, make_lock  # the journal's lock: cross-node, refreshed while held

    options = setup_options(settings, config)
    key = setup_key(config.setup, options, settings.data_seed)
    root = settings.journal_dir / CACHE_DIR
    directory, error_path = root / key, root / f"{key}.{ERROR_FILE}"
    done = _read(directory / RESULT_FILE)
    if done is not None:
        return SetupResult(key, directory, done["result"], computed_here=False)
    function = config.function("setup")  # a bad name is bad input: before any lock or file
    make_dirs(root)
    waited_from = time.time()
    lock = make_lock(root / key, should_stop)  # the lock file: <key>.lock
    try:
        # One look when not waiting: a live holder is computing it. A dead holder on this
        # host is broken at once; one on another host only by a waiter watching it for the
        # grace period, which this caller becomes once it has nothing else to do.
        lock.acquire(timeout=None if wait else 0)
    except LockTimeout as exc:
        raise SetupBusy(f"setup {config.setup} (key {key}) is being computed by another worker ({exc})") from None
    try:
        done = _read(directory / RESULT_FILE)
        if done is not None:  # another worker computed it while we waited
            return SetupResult(key, directory, done["result"], computed_here=False)
        error = _read(error_path)
        if error is not None and float(error.get("at", 0)) >= waited_from - ERROR_HOLD_SECONDS:
            raise _failure(config, error, error_path)
        return SetupResult(key, directory, _compute(function, settings, config, options, key, directory), True)
    finally:
        lock.release()


def _compute(function: Callable[[SetupContext], Any], settings: "Settings", config: "StudyConfig",
             options: Mapping[str, Any], key: str, directory: Path) -> Mapping[str, Any]:
    """Run the function in a fresh folder and rename it into place when done: an attempt
    that dies leaves no half-written cache, and a second writer (a lock broken under a
    stalled node) cannot mix its files into the first one's."""
    error_path = directory.with_name(f"{key}.{ERROR_FILE}")
    error_path.unlink(missing_ok=True)
    work = directory.with_name(f"{key}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    work.mkdir(parents=True)
    _logger.info("setup %s: computing (key %s, folder %s)", config.setup, key, directory)
    started = time.time()
    ctx = SetupContext(options, settings, work, logging.getLogger("hpo.setup.user"))
    try:
        value = function(ctx)
        json.dumps(value, allow_nan=False)
        if not isinstance(value, Mapping):
            raise TypeError(f"it returned a {type(value).__name__}; valid: a JSON mapping (write arrays and other "
                            "files into ctx.cache_dir)")
    except Exception as exc:  # noqa: BLE001 - the user's code: any failure stops the study's workers
        trace = traceback.format_exc()
        error = {"at": time.time(), "setup": config.setup, "error": f"{type(exc).__name__}: {exc}",
                 "traceback": trace}
        write_json_atomic(error_path, error)
        shutil.rmtree(work, ignore_errors=True)
        _logger.error("setup %s failed:\n%s", config.setup, trace.rstrip())
        raise _failure(config, error, error_path) from None
    seconds = time.time() - started
    write_json_atomic(work / RESULT_FILE, {"setup": config.setup, "key": key, "options": options,
                                           "data_seed": settings.data_seed, "seconds": round(seconds, 3),
                                           "result": value})
    try:
        os.rename(work, directory)
    except OSError:  # another writer got there first (a broken lock): its result stands
        shutil.rmtree(work, ignore_errors=True)
        done = _read(directory / RESULT_FILE)
        if done is None:
            raise
        return done["result"]  # type: ignore[no-any-return]
    _logger.info("setup %s: done in %.1fs, cached in %s", config.setup, seconds, directory)
    return value

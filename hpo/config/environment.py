"""The process environment: the one place hpo reads it.

Entry points (the ``hpo`` command, a submitit job) call :func:`environment` once and pass
the mapping down; settings (:func:`hpo.config.settings.resolve`) and the worker's identity
(:class:`hpo.config.identity.WorkerIdentity`) are built from it, and nothing below reads
``os.environ`` (``tests/test_layers.py`` checks that no other module does).
"""

from __future__ import annotations

import os
from typing import Mapping

from hpo.config.fields import Field
from hpo.config.settings import CONFIG_ENV, FIELDS


def environment() -> Mapping[str, str]:
    """The process environment, read here and nowhere else."""
    return os.environ


def export(values: Mapping[str, str]) -> None:
    """Set these variables in this process's own environment: for what reads it there,
    not through hpo (the OpenMP runtime's ``OMP_NUM_THREADS``, CUDA's
    ``CUDA_VISIBLE_DEVICES``, both read when torch first uses them)."""
    os.environ.update(values)


def without_settings(env: Mapping[str, str], objective_fields: tuple[Field, ...] = ()) -> dict[str, str]:
    """``env`` without any hpo setting (and those of ``objective_fields``), launcher variable
    or SLURM variable: what a child process needs so that only what is passed explicitly
    applies (tests, benchmarks)."""
    every = FIELDS + objective_fields
    drop = {f.env for f in every} | {a for f in every for a in f.aliases} | {CONFIG_ENV}
    return {k: v for k, v in env.items() if k not in drop and not k.startswith("SLURM_")}

"""The error hierarchy. Only the CLI turns these into exit codes."""

from __future__ import annotations


class HpoError(Exception):
    """Base class of every error ``hpo`` raises on purpose."""

    exit_code = 1


class UsageError(HpoError):
    """Bad input: a setting, flag, config key or file the user gave us.

    The message names the variable or field, the bad value and what is valid.
    Raised before anything is written.
    """

    exit_code = 2


class StudyMismatch(UsageError):
    """A resumed study was asked for something different from what it holds."""


class StorageError(HpoError):
    """The journal cannot be read or written (damage, permissions, lock)."""

    exit_code = 3


class SchedulerError(HpoError):
    """A scheduler command (sbatch, squeue, scancel ...) failed or was missing."""

    exit_code = 4


class LockWaitAborted(HpoError):
    """A wait for a lock ended because the process was asked to stop (a signal set
    the worker's stop flag); the worker turns it into its stop reason."""

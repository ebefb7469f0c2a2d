"""Keeping the shared Optuna journal usable when writers die, stall or tear lines.

- :mod:`hpo.journal.lock`: :class:`~hpo.journal.lock.OwnerLock`, a journal lock
  that records its owner, so a dead holder is recognised at once and a live but
  slow one is never robbed.
- :mod:`hpo.journal.repair`: find damage (``scan``, ``doctor``), cut a torn tail
  online (``repair_tail``, ``GuardedFileBackend``) and quarantine damage
  offline (``repair``).
"""

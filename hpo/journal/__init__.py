"""The study's journal file: a plain Optuna journal that many workers on many nodes share.

- :mod:`~hpo.journal.format`: op codes, lines, damage versus a newer format, Optuna's own replay;
- :mod:`~hpo.journal.backend`: the live path: open, append under the owner lock with its
  fence, cut a torn tail, read behind a barrier on a lagging filesystem;
- :mod:`~hpo.journal.filesystem` and :mod:`~hpo.journal.coherence`: what the mount promises,
  and reading through its transient errors;
- :mod:`~hpo.journal.reader`: the fast read-only index ``hpo status`` and the exports use;
- :mod:`~hpo.journal.scan`, :mod:`~hpo.journal.repair`: find damage, ``hpo doctor``, and
  the offline ``hpo repair``.
"""

"""Watch and harvest a study: ``hpo status``, ``logs``, ``best``, ``export``, ``plot``, ``report``, ``dashboard``.

Everything here only reads the study (the journal, worker logs and run directories);
``hpo dashboard`` is the one exception, as optuna-dashboard may write notes into the journal.

Modules:

- :mod:`hpo.journal.reader` (below, in the journal layer): the fast index of a study the commands read;
- :mod:`hpo.watch.status`: the one-screen status (``squeue`` runs through :mod:`hpo.system.slurm`);
- :mod:`hpo.watch.logs`: worker logs merged in time, and following them;
- :mod:`hpo.watch.export`: best parameters, CSV, parquet and JSON exports;
- :mod:`hpo.watch.plots`: PNG figures (matplotlib, Agg);
- :mod:`hpo.watch.report`: one self-contained HTML page;
- :mod:`hpo.watch.dashboard`: optuna-dashboard on the study's storage.

Plain functions only: the click commands that call them are in :mod:`hpo.cli.watch`.

Nothing is imported here so that ``hpo --help`` stays fast.
"""

"""What one worker process does: choose a study (:mod:`~hpo.worker.loop`), run its trials
(:mod:`~hpo.worker.study_run`, each by :mod:`~hpo.worker.trial`), stop (:mod:`~hpo.worker.stop`),
turn each end into a state (:mod:`~hpo.worker.outcome`), keep its trial alive and reap lost ones
(:mod:`~hpo.worker.recovery`), the cached setup and reused results."""

"""What one worker process does: choose a study (:mod:`~hpo.worker.loop`), run its trials
(:mod:`~hpo.worker.trial`), turn each end into a state (:mod:`~hpo.worker.outcome`), keep its
trial alive and reap lost ones (:mod:`~hpo.worker.recovery`), the cached setup and reused results."""

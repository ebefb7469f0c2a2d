"""Exceptions an objective raises to end a trial in a specific way (see hpo.outcome)."""
import optuna
class Diverged(optuna.TrialPruned):
    """A non-finite loss or metric: the trial ends PRUNED with this message as its reason
    (e.g. "diverged at B1 epoch 3"), so the sampler learns to avoid the region."""

"""Write a journal with plain Optuna 5.0 holding every case hpo's reader must agree on.

``python tests/golden/make_journal.py tests/golden/optuna5.journal`` made the
committed golden file (once); tests also call :func:`write` on a fresh path.

Three studies in one file:

- ``constrained`` (minimise): the lowest value (trial 1) is infeasible
  (``trial.set_constraint``), so ``best_trial`` is trial 3; +inf and -inf final
  values (-inf infeasible), a pruned trial with +inf/-inf intermediate values, a
  failed trial, a WAITING (enqueued) trial, user and system attributes;
- ``pareto`` (minimise, maximise) with old-style ``constraints`` system
  attributes (what ``constraints_func`` samplers write): an infeasible trial
  dominates the feasible front;
- ``plain`` (maximise): a trial left RUNNING, an enqueued one popped, a deleted
  study before it (study ids are not positions).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState


def _constrained(storage: optuna.storages.BaseStorage) -> None:
    study = optuna.create_study(study_name="constrained", storage=storage)
    cases = [(5.0, -1.0), (1.0, 2.0), (math.inf, 0.0), (3.0, 0.0), (-math.inf, 1.0)]
    for value, constraint in cases:
        trial = study.ask()
        trial.suggest_float("x", -10, 10)
        trial.suggest_categorical("kind", ["a", "b"])
        trial.set_user_attr("worker", f"w{trial.number % 2}")
        trial.set_constraint("c0", constraint)
        trial.report(value, 1)
        study.tell(trial, value)
    pruned = study.ask()
    pruned.suggest_float("x", -10, 10)
    pruned.report(math.inf, 1)
    pruned.report(-math.inf, 2)
    pruned.storage.set_trial_system_attr(pruned._trial_id, "hpo:heartbeat", 1.5)
    study.tell(pruned, state=TrialState.PRUNED)
    failed = study.ask()
    failed.set_user_attr("reason", "out of memory")
    study.tell(failed, state=TrialState.FAIL)
    study.enqueue_trial({"x": 0.5}, user_attrs={"origin": "enqueued"})


def _pareto(storage: optuna.storages.BaseStorage) -> None:
    study = optuna.create_study(study_name="pareto", storage=storage, directions=["minimize", "maximize"])
    study.set_metric_names(["loss", "accuracy"])
    study.set_user_attr("owner", "golden")
    points = [((1.0, 0.5), [0.0]), ((2.0, 0.9), [-1.0]), ((0.5, 0.95), [3.0]), ((1.0, 0.5), [0.0]),
              ((3.0, math.inf), [0.0]), ((4.0, 0.1), [0.0])]
    for values, constraints in points:
        trial = study.ask()
        trial.suggest_int("n", 1, 8)
        storage.set_trial_system_attr(trial._trial_id, "constraints", constraints)
        study.tell(trial, list(values))


def _plain(storage: optuna.storages.BaseStorage) -> None:
    doomed = optuna.create_study(study_name="deleted", storage=storage)
    doomed.optimize(lambda t: t.suggest_float("z", 0, 1), n_trials=2)
    optuna.delete_study(study_name="deleted", storage=storage)
    study = optuna.create_study(study_name="plain", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"x": 0.25})
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    study.add_trial(optuna.trial.create_trial(params={"x": 0.9}, distributions={"x": FloatDistribution(0, 1)},
                                              value=0.81, system_attrs={"source": "add_trial"}))
    running = study.ask()
    running.suggest_float("x", 0, 1)
    running.report(0.1, 3)


def write(path: Path) -> None:
    """Write the three studies into the journal at ``path`` (which must not exist)."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    _constrained(storage)
    _pareto(storage)
    _plain(storage)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    if target.exists():
        raise SystemExit(f"{target} exists; the golden file is written once")
    write(target)
    print(f"wrote {target} with optuna {optuna.__version__}")

"""``hpo retrain``: train one trial's parameters once more, as trial 0 of a new study, with
that trial's own budgets (its ``settings.json``) and no warm start first.

Budgets given to the command (``--arg N_SAMPLES=50``, ``N_SAMPLES=50 hpo retrain``) override
the trial's: "validate on the full data" is a retrain with a bigger ``N_SAMPLES``. The new
study records what it used (its budgets, :mod:`hpo.study.budgets`), and the command prints
each budget with where it came from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from hpo.config.settings import TRIAL_BUDGET_ATTR, Settings, parse_study_name
from hpo.config.study import Launch, StudyConfig, load_config, single_study_text
from hpo.errors import UsageError
from hpo.journal.reader import StudyJournal, TrialRecord
from hpo.launch.local import plan_gpus, run_local, visible_gpus
from hpo.launch.prepare import check_runnable
from hpo.study.budgets import mix_warning
from hpo.study.provenance import stored_config_path
from hpo.study.shared import open_study
from hpo.study.storage import open_storage
from hpo.system.files import write_bytes_atomic
from hpo.watch.export import choose_best, run_settings
from hpo.watch.status import open_view


@dataclass(frozen=True)
class Retrain:
    """A retrain, planned: the trial, where it is retrained, and where its budgets came from."""

    source: str  # the study the trial comes from
    trial: TrialRecord
    settings: Settings  # the new study's
    config: StudyConfig
    budgets_from: str  # which settings.json (the run directory's, its worker's), or "the current settings"
    budgets: tuple[str, ...] = ()  # "N_SAMPLES=50 (given)", one per budget, as the retrain runs them
    warning: str | None = None  # the source study mixes budgets (hpo.study.budgets.mix_warning)


def plan_retrain(settings: Settings, config: StudyConfig, to: str | None, number: int | None) -> Retrain:
    """Choose the trial (``number``, else the best one; with several objectives the knee)
    and the new study (``to``, else ``<study>-retrain``, which must not exist yet)."""
    journal = open_view(settings)
    trial = _chosen_trial(journal, settings, number)
    mixed = mix_warning(journal.user_attr_values([TRIAL_BUDGET_ATTR])[TRIAL_BUDGET_ATTR], trial.number)
    name = parse_study_name("--to", to or f"{settings.study_name}-retrain")
    storage = open_storage(dataclasses.replace(settings.spec, study_name=name))
    if name in [s.study_name for s in storage.get_all_studies()]:
        raise UsageError(f"--to {name!r}: that study exists already; valid: a new study name")
    # The trial's own budgets (N_TRAIN, stage epochs ...): its settings.json, else today's settings.
    found = run_settings(trial)
    ran_with = found.settings if found else {}
    source = found.source if found else "the current settings"
    given = {f.name for f in settings.objective_fields
             if settings.sources.get(f.name, "default") == "flag" or settings.sources.get(f.name, "").startswith("env:")}
    objective = {f.name: settings.objective.get(f.name) if f.name in given else ran_with.get(
        f.name, settings.objective.get(f.name)) for f in settings.objective_fields}
    shown = tuple(f"{f.env}={objective[f.name]} ({'given' if f.name in given else source})"
                  for f in settings.objective_fields if f.budget)
    new = dataclasses.replace(settings, study_name=name, max_trials=1, trials_per_worker=None, objective=objective)
    if config.cell:  # one study of a sweep: the new study gets that study's own config
        path = stored_config_path(new)
        write_bytes_atomic(path, single_study_text(config, name).encode())
        config, new = load_config(path), dataclasses.replace(new, config=path)
    check_runnable(new, config)
    return Retrain(settings.study_name, trial, new, config, source, shown, mixed)


def _chosen_trial(journal: StudyJournal, settings: Settings, number: int | None) -> TrialRecord:
    if number is None:
        best = choose_best(journal).trial
        if best is None:
            raise UsageError(f"study {settings.study_name!r} has no COMPLETE trial to retrain")
        return best
    if number >= len(journal.trials):
        raise UsageError(f"--trial {number}: study {settings.study_name!r} has trials 0-{len(journal.trials) - 1}")
    journal.decode([number])
    return journal.trials[number]


def start_retrain(plan: Retrain) -> None:
    """Create the new study with the trial's parameters first in line (no warm start: trial 0 is this one)."""
    shared = open_study(plan.settings.spec, plan.config, warm_start=False)
    shared.study.enqueue_trial(dict(plan.trial.params), user_attrs={
        "origin": f"retrain of study {plan.source!r} trial {plan.trial.number}"})


def run_retrain(plan: Retrain, env: Mapping[str, str]) -> tuple[int, TrialRecord | None]:
    """Run one worker here on the study :func:`start_retrain` made; its exit status and the
    new study's trial 0 (None if it never started)."""
    worker, _ = plan_gpus(visible_gpus(plan.settings, env), 1, None)
    code = run_local(Launch(plan.config, ((plan.settings, plan.config),)), worker, env)
    again = open_view(plan.settings)
    if not again.trials:
        return code, None
    again.decode([0])
    return code, again.trials[0]

"""The worker's loop in-process: the stop table, the time check, one study's loop, one trial.

No child processes: the Worker runs fake study runs (scripted stops, a fake clock), and
StudyRun and TrialRunner run on a real journal in ``tmp_path``. The whole file takes a
few seconds; the same behaviour through real workers is in test_worker.py and
test_workflows.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import pytest
from optuna.trial import TrialState

from conftest import TOY_CONFIG
from hpo.config.identity import WorkerIdentity
from hpo.config.settings import Settings
from hpo.config.study import Launch, StudyConfig, load_launch
from hpo.study.shared import SharedStudy, open_study
from hpo.worker.context import TrialContext, TrialStopped
from hpo.worker.loop import WAIT_POLL_SECONDS, Worker
from hpo.worker.recovery import Heartbeat
from hpo.worker.setup import SetupBusy
from hpo.worker.stop import EFFECT, Effect, Limits, Stop, StopFlag, final_stop
from hpo.worker.study_run import StudyRun, WorkerParts
from hpo.worker.trial import TrialRunner


@pytest.fixture(autouse=True)
def hpo_logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another test of this process may have set up a worker's log (which stops propagation).
    monkeypatch.setattr(logging.getLogger("hpo"), "propagate", True)
    caplog.set_level(logging.INFO, logger="hpo")


def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cells: tuple[str, ...] = (),
              **env: str) -> Launch:
    """The toy study (``cells``: a sweep ``cell_<mode>`` of them), its folders in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOY_STEP_SECONDS", "0")
    text = TOY_CONFIG.format(objective="quadratic")
    if cells:
        text = text.replace("study_name: toy", "study_name: cell_{mode}") + f"matrix:\n  mode: [{', '.join(cells)}]\n"
    (tmp_path / "toy.yaml").write_text(text)
    return load_launch({}, {"HPO_CONFIG": str(tmp_path / "toy.yaml"), "HPO_EXPORT_AT_END": "0", **env})


# -- fakes for the worker: scripted study runs, a clock, a flag that records its waits ----------
class Clock:
    """The worker's clock, moved by the fake trials only."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Step:
    """One call of a fake study's run_trials(): ``trials`` trials (None: until the worker's
    limits stop them), each ``seconds`` long and checked against the limits first, as
    StudyRun does; then ``then`` (None: every remaining slot held by a running trial)."""

    trials: int | None = 0
    then: Stop | None = None
    seconds: float = 1.0
    signal: Stop | None = None  # a signal that comes during the first trial


WAIT = f"wait {WAIT_POLL_SECONDS:g}"


@dataclass
class RecordingFlag(StopFlag):
    """A stop flag whose waits are recorded among the studies' calls, not slept."""

    calls: list[str] = field(default_factory=list)

    def wait(self, seconds: float) -> None:
        self.calls.append(f"wait {seconds:g}")


class FakeRun:
    """A study run that plays its script (see :class:`Step`) and records each call by name."""

    def __init__(self, settings: Settings, limits: Limits, clock: Clock, script: list[Step], calls: list[str]) -> None:
        self.settings, self.limits, self.clock, self.script, self.calls = settings, limits, clock, script, calls
        self.shared: Any = self  # the one-study end line asks the study's counts
        self.ran, self.closed, self.last_seconds = 0, False, 0.0

    def run_trials(self) -> Stop | None:
        self.calls.append(self.settings.study_name)
        step = self.script.pop(0)
        for n in range(step.trials) if step.trials is not None else itertools.count():
            stop = self.limits.before_next(lambda: self.last_seconds)
            if stop is not None:
                return stop
            if n == 0 and step.signal:
                self.limits.flag.stop = step.signal
            self.clock.now += step.seconds
            self.limits.trials_run += 1
            self.ran, self.last_seconds = self.ran + 1, step.seconds
        return step.then

    def close(self) -> None:
        self.closed = True

    def counts(self) -> Counter[TrialState]:
        return Counter({TrialState.COMPLETE: self.ran})


def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scripts: dict[str, list[Step]],
               **env: str) -> tuple[Stop, Worker, dict[str, FakeRun], list[str]]:
    """A worker over fake studies named after ``scripts`` (one: a plain study ``toy``).
    Returns its stop, the worker, the studies it opened and the order of its calls."""
    names = tuple(scripts)
    launch = configure(tmp_path, monkeypatch, () if names == ("toy",) else names, **env)
    clock, flag, opened = Clock(), RecordingFlag(), {}

    def open_run(s: Settings, c: StudyConfig, parts: WorkerParts, wait: bool = True) -> FakeRun:
        name = s.study_name.removeprefix("cell_")
        opened[name] = FakeRun(s, parts.limits, clock, scripts[name], flag.calls)
        return opened[name]

    identity = WorkerIdentity.from_env({}, "node1", 7)
    worker = Worker(launch, identity, flag=flag, clock=clock, open_run=open_run)
    return worker.run(), worker, opened, flag.calls


# -- the table: one study --------------------------------------------------------------------
@pytest.mark.parametrize(("stop", "label", "exit_code"), [
    (Stop.MAX_TRIALS, "max trials", 0),
    (Stop.TRIALS_PER_WORKER, "trials per worker", 0),
    (Stop.TRIAL_WOULD_NOT_FIT, "time budget", 0),
    (Stop.TIME_SPENT, "time budget", 0),
    (Stop.FAILING, "failing trials", 1),
    (Stop.INTERRUPTED, "interrupted", 130),
    (Stop.PREEMPTED, "preempted", 75),
])
def test_one_study_ends_with_its_own_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture, stop: Stop, label: str,
                                          exit_code: int) -> None:
    ended, worker, opened, _ = work(tmp_path, monkeypatch, {"toy": [Step(2, stop)]})
    assert (ended, ended.label, ended.exit_code) == (stop, label, exit_code)
    assert opened["toy"].closed and worker.limits.trials_run == 2
    assert f"worker node1_7 stopped: {label} (ran 2 trial(s) in 2.0s; study: 2 complete" in caplog.text
    assert "set aside" not in caplog.text  # one study: no sweep lines


# -- the table: a sweep ----------------------------------------------------------------------
@pytest.mark.parametrize(("stop", "others_run", "set_aside", "ended", "line"), [
    (Stop.MAX_TRIALS, True, {}, Stop.MAX_TRIALS, "max trials"),
    (Stop.TRIAL_WOULD_NOT_FIT, True, {"cell_a": Stop.TRIAL_WOULD_NOT_FIT}, Stop.TRIAL_WOULD_NOT_FIT, "time budget"),
    (Stop.FAILING, True, {"cell_a": Stop.FAILING}, Stop.FAILING, "max trials"),
    (Stop.TRIALS_PER_WORKER, False, {}, Stop.TRIALS_PER_WORKER, "trials per worker"),
    (Stop.TIME_SPENT, False, {}, Stop.TIME_SPENT, "time budget"),
    (Stop.INTERRUPTED, False, {}, Stop.INTERRUPTED, "interrupted"),
    (Stop.PREEMPTED, False, {}, Stop.PREEMPTED, "preempted"),
])
def test_a_sweep_applies_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                   stop: Stop, others_run: bool, set_aside: dict[str, Stop], ended: Stop,
                                   line: str) -> None:
    """The first of three studies ends with ``stop``: the others go on only when the table
    says the study is done or set aside; the last line names what ended the worker."""
    scripts = {"a": [Step(1, stop)], "b": [Step(1, Stop.MAX_TRIALS)], "c": [Step(1, Stop.MAX_TRIALS)]}
    result, worker, opened, calls = work(tmp_path, monkeypatch, scripts)
    assert result is ended and calls == (["cell_a", "cell_b", "cell_c"] if others_run else ["cell_a"])
    assert worker.set_aside == set_aside and worker.limits.trials_run == len(calls)
    assert all(run.closed for run in opened.values())
    aside = f"study 'cell_a' set aside by this worker ({stop.label}); the other studies of the sweep go on"
    assert (aside in caplog.text) == bool(set_aside)
    assert f"worker node1_7 stopped: {line} (ran {len(calls)} trial(s)" in caplog.text


def test_a_study_that_would_not_fit_ends_the_sweep_as_time_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    scripts = {"a": [Step(1, Stop.TRIAL_WOULD_NOT_FIT)], "b": [Step(1, Stop.MAX_TRIALS)]}
    result, _, _, _ = work(tmp_path, monkeypatch, scripts)
    assert (result.label, result.exit_code) == ("time budget", 0)
    assert "stopped: time budget (ran 2 trial(s) in 2.0s over 2 studies; set aside: cell_a (time budget))" in caplog.text


def test_a_failing_study_makes_exit_1_though_trials_per_worker_stops_the_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """cell_a fails (set aside), cell_b runs until TRIALS_PER_WORKER=4: the worker's last
    line names what stopped it, at ERROR, and its exit status is 1; cell_c is never opened."""
    scripts = {"a": [Step(2, Stop.FAILING)], "b": [Step(None)], "c": [Step(1, Stop.MAX_TRIALS)]}
    result, worker, opened, _ = work(tmp_path, monkeypatch, scripts, TRIALS_PER_WORKER="4")
    assert (result, result.exit_code) == (Stop.FAILING, 1)
    assert opened["b"].ran == 2 and "c" not in opened and worker.set_aside == {"cell_a": Stop.FAILING}
    line = next(r for r in caplog.records if "worker node1_7 stopped" in r.getMessage())
    assert line.levelno == logging.ERROR
    assert line.getMessage().startswith("worker node1_7 stopped: trials per worker (ran 4 trial(s) in 4.0s over 3 studies"
                                        "; set aside: cell_a (failing trials))")


@pytest.mark.parametrize(("signalled", "exit_code"), [(Stop.INTERRUPTED, 130), (Stop.PREEMPTED, 75)])
def test_a_signal_keeps_its_exit_status_after_a_failing_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              signalled: Stop, exit_code: int) -> None:
    scripts = {"a": [Step(2, Stop.FAILING)], "b": [Step(None, signal=signalled)]}
    result, worker, opened, _ = work(tmp_path, monkeypatch, scripts)
    assert (result, result.exit_code) == (signalled, exit_code) and opened["b"].ran == 1
    assert worker.set_aside == {"cell_a": Stop.FAILING}


def test_time_spent_stops_the_worker_a_trial_that_would_not_fit_sets_the_study_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """TIMEOUT_SECONDS=9: after one 5 s trial of cell_slow another would not fit (5 + 5 > 9):
    set aside; cell_fast's 1 s trials run until the 9 s are spent; cell_next never starts."""
    scripts = {"slow": [Step(None, seconds=5.0)], "fast": [Step(None, seconds=1.0)], "next": [Step(1, Stop.MAX_TRIALS)]}
    result, worker, opened, _ = work(tmp_path, monkeypatch, scripts, TIMEOUT_SECONDS="9")
    assert (result, result.label, result.exit_code) == (Stop.TIME_SPENT, "time budget", 0)
    assert (opened["slow"].ran, opened["fast"].ran) == (1, 4) and "next" not in opened
    assert worker.set_aside == {"cell_slow": Stop.TRIAL_WOULD_NOT_FIT}
    assert "not starting another trial: 5.0s elapsed + 5.0s estimated > 9.0s budget" in caplog.text
    assert "stopped: time budget (ran 5 trial(s) in 9.0s over 3 studies; set aside: cell_slow (time budget))" \
        in caplog.text


def test_all_studies_full_the_worker_waits_then_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full study (every slot held by a running trial) is passed over for the next one;
    the worker waits only when every study is full and no trial ran in the pass."""
    scripts = {"a": [Step(0), Step(1, Stop.MAX_TRIALS)], "b": [Step(0), Step(0), Step(1, Stop.MAX_TRIALS)]}
    result, worker, _, calls = work(tmp_path, monkeypatch, scripts)
    assert result is Stop.MAX_TRIALS and worker.limits.trials_run == 2
    assert calls == ["cell_a", "cell_b", WAIT, "cell_a", "cell_b", "cell_b"]


def test_one_full_study_waits_then_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, _, _, calls = work(tmp_path, monkeypatch, {"toy": [Step(0), Step(0), Step(2, Stop.MAX_TRIALS)]})
    assert result is Stop.MAX_TRIALS and calls == ["toy", WAIT, "toy", WAIT, "toy"]


def opening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scripts: dict[str, list[Step]],
            busy: dict[str, int]) -> tuple[Stop, list[str]]:
    """A worker over fake studies whose setup another worker computes during the first
    ``busy[name]`` looks that do not wait; its calls include each opening (and whether it waited)."""
    names = tuple(scripts)
    launch = configure(tmp_path, monkeypatch, () if names == ("toy",) else names)
    clock, flag = Clock(), RecordingFlag()

    def open_run(s: Settings, c: StudyConfig, parts: WorkerParts, wait: bool = True) -> FakeRun:
        name = s.study_name.removeprefix("cell_")
        flag.calls.append(f"open {name}{' waiting' if wait else ''}")
        if not wait and busy.get(name):
            busy[name] -= 1
            raise SetupBusy(f"setup of {name} is being computed by another worker")
        return FakeRun(s, parts.limits, clock, scripts[name], flag.calls)

    worker = Worker(launch, WorkerIdentity.from_env({}, "node1", 7), flag=flag, clock=clock, open_run=open_run)
    return worker.run(), flag.calls


def test_a_sweep_passes_over_a_setup_being_computed_and_waits_for_it_only_when_idle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """cell_a's setup is another worker's for two looks: cell_b's trials run first; then,
    with nothing else to do, the worker waits for cell_a's setup (no poll sleep) and runs it."""
    scripts = {"a": [Step(1, Stop.MAX_TRIALS)], "b": [Step(1, Stop.MAX_TRIALS)]}
    result, calls = opening(tmp_path, monkeypatch, scripts, {"a": 2})
    assert result is Stop.MAX_TRIALS
    assert calls == ["open a", "open b", "cell_b", "open a", "open a waiting", "cell_a"]
    assert caplog.text.count("this worker goes on with the other studies and comes back") == 1


def test_one_study_waits_for_its_setup_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, calls = opening(tmp_path, monkeypatch, {"toy": [Step(1, Stop.MAX_TRIALS)]}, {"toy": 5})
    assert result is Stop.MAX_TRIALS and calls == ["open toy waiting", "toy"]


@pytest.mark.parametrize(("stopped_by", "set_aside", "final"), [
    (None, {}, Stop.MAX_TRIALS),
    (None, {"a": Stop.TRIAL_WOULD_NOT_FIT}, Stop.TRIAL_WOULD_NOT_FIT),
    (None, {"a": Stop.TRIAL_WOULD_NOT_FIT, "b": Stop.FAILING}, Stop.FAILING),
    (Stop.TIME_SPENT, {"a": Stop.FAILING}, Stop.FAILING),
    (Stop.TIME_SPENT, {"a": Stop.TRIAL_WOULD_NOT_FIT}, Stop.TIME_SPENT),
    (Stop.PREEMPTED, {"a": Stop.FAILING}, Stop.PREEMPTED),
    (Stop.INTERRUPTED, {"a": Stop.FAILING}, Stop.INTERRUPTED),
])
def test_final_stop(stopped_by: Stop | None, set_aside: dict[str, Stop], final: Stop) -> None:
    assert final_stop(stopped_by, set_aside) is final


# -- the worker-wide limits, with a fake clock -------------------------------------------------
def limits(budget: float | None, now: float, trials_per_worker: int | None = None) -> Limits:
    clock = Clock()
    clock.now = now
    return Limits(StopFlag(), clock, trials_per_worker, started=0.0, budget_seconds=budget)


def unasked() -> float:
    raise AssertionError("the estimate reads the journal: asked only under a budget")


@pytest.mark.parametrize(("now", "estimate", "stop"), [
    (4.0, 5.0, None),  # 4 + 5 <= 10: it fits
    (4.0, 7.0, Stop.TRIAL_WOULD_NOT_FIT),  # 4 + 7 > 10, time left: only this study's trial does not fit
    (10.0, 0.0, None),  # no estimate yet and not past the budget
    (10.5, 0.0, Stop.TIME_SPENT),
    (12.0, 7.0, Stop.TIME_SPENT),
])
def test_time_check(now: float, estimate: float, stop: Stop | None, caplog: pytest.LogCaptureFixture) -> None:
    assert limits(10.0, now).before_next(lambda: estimate) is stop
    assert ("not starting another trial" in caplog.text) == (stop is not None)


def test_no_budget_no_time_check_and_the_flag_comes_first() -> None:
    assert limits(None, 1e9).before_next(unasked) is None
    capped = limits(10.0, 20.0, trials_per_worker=3)
    capped.trials_run = 3
    assert capped.before_next(unasked) is Stop.TRIALS_PER_WORKER
    capped.flag.stop = Stop.PREEMPTED
    assert capped.before_next(unasked) is Stop.PREEMPTED


def test_signals_set_the_flag_and_objectives_see_the_label() -> None:
    flag = StopFlag()
    assert flag.requested() is None
    flag._on_signal(signal.SIGINT, None)
    assert (flag.stop, flag.requested()) == (Stop.INTERRUPTED, "interrupted")
    flag._on_signal(signal.SIGUSR2, None)
    assert (flag.stop, flag.requested()) == (Stop.PREEMPTED, "preempted")
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
        flag._on_signal(signal.SIGINT, None)
    flag._on_signal(signal.SIGINT, None)  # a third lets the trial's end be written
    assert (flag.stop, flag.interrupts) == (Stop.PREEMPTED, 3)


# -- one study's loop on a real journal ----------------------------------------------------------
def quick(params: dict[str, Any], ctx: TrialContext) -> float:
    return float(params["x"]) ** 2


def raises(exc: BaseException) -> Callable[[dict[str, Any], TrialContext], float]:
    def objective(params: dict[str, Any], ctx: TrialContext) -> float:
        raise exc
    return objective


def scripted(outcomes: list[str]) -> Callable[[dict[str, Any], TrialContext], float]:
    """An objective that fails or completes in the given order."""
    it: Iterator[str] = iter(outcomes)

    def objective(params: dict[str, Any], ctx: TrialContext) -> float:
        if next(it) == "fail":
            raise RuntimeError("this batch size never fits")
        return 1.0
    return objective


@pytest.fixture
def study_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., StudyRun]]:
    """Opens the toy study with the real StudyRun.open: ``objective`` and settings given."""
    runs: list[StudyRun] = []

    def make(objective: Any = quick, flag: StopFlag | None = None, **env: str) -> StudyRun:
        settings, config = configure(tmp_path, monkeypatch, **env).one()
        identity = WorkerIdentity.from_env({}, socket.gethostname(), os.getpid())
        limits = Limits(flag or StopFlag(), Clock(), settings.trials_per_worker, started=0.0)
        runs.append(StudyRun.open(settings, config, WorkerParts(identity, "cpu", objective, limits)))
        return runs[-1]

    yield make
    for run in runs:
        run.close()


def states(shared: SharedStudy) -> list[str]:
    return [t.state.name for t in shared.trials()]


def test_study_run_runs_exactly_max_trials(study_run: Callable[..., StudyRun]) -> None:
    run = study_run(MAX_TRIALS="3")
    assert run.run_trials() is Stop.MAX_TRIALS
    assert run.limits.trials_run == 3 and states(run.shared) == ["COMPLETE"] * 3
    assert run.run_trials() is Stop.MAX_TRIALS and run.limits.trials_run == 3  # nothing more


def test_study_run_stops_after_max_failures_in_a_row(study_run: Callable[..., StudyRun],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A completed trial between failures starts the count again."""
    run = study_run(scripted(["fail", "ok", "fail", "fail", "ok"]), MAX_TRIALS="10", HPO_MAX_FAILURES="2")
    assert run.run_trials() is Stop.FAILING
    assert states(run.shared) == ["FAIL", "COMPLETE", "FAIL", "FAIL"] and run.failures_in_a_row == 2
    assert "2 trials of study 'toy' failed in a row (HPO_MAX_FAILURES)" in caplog.text


def test_study_run_returns_none_while_a_running_trial_holds_the_last_slot(study_run: Callable[..., StudyRun]) -> None:
    run = study_run(MAX_TRIALS="1")
    other, _ = run.shared.ask_within_budget(run.runner.attrs)  # another worker's trial, running
    assert other is not None
    assert run.run_trials() is None and run.limits.trials_run == 0 and states(run.shared) == ["RUNNING"]
    run.shared.study.tell(other, 0.5)
    assert run.run_trials() is Stop.MAX_TRIALS and run.limits.trials_run == 0


def test_study_run_stops_for_the_flag_before_a_trial(study_run: Callable[..., StudyRun]) -> None:
    run = study_run(flag=StopFlag(stop=Stop.PREEMPTED), MAX_TRIALS="3")
    assert run.run_trials() is Stop.PREEMPTED and states(run.shared) == []


def test_study_run_stops_when_its_trial_was_preempted(study_run: Callable[..., StudyRun]) -> None:
    """A trial that ends "preempted" (TrialStopped), with no flag of this loop set: the
    trial's outcome alone stops the study's loop, and its retry waits."""
    run = study_run(raises(TrialStopped("preempted")), MAX_TRIALS="3")
    assert run.run_trials() is Stop.PREEMPTED
    assert run.limits.trials_run == 1 and states(run.shared) == ["FAIL", "WAITING"]


# -- one trial on a real journal -------------------------------------------------------------
@pytest.fixture
def trial_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., TrialRunner]]:
    """A TrialRunner over the toy study, opened with the real open_study."""
    heartbeats: list[Heartbeat] = []

    def make(objective: Any) -> TrialRunner:
        settings, config = configure(tmp_path, monkeypatch).one()
        shared = open_study(settings.spec, config)
        identity = WorkerIdentity.from_env({}, socket.gethostname(), os.getpid())
        heartbeats.append(Heartbeat(shared, settings.heartbeat_seconds, settings.stale_seconds, identity.worker_id))
        return TrialRunner(shared, settings, config, identity, "cpu", objective, heartbeats[-1])

    yield make
    for heartbeat in heartbeats:
        heartbeat.close()


def run_one(runner: TrialRunner, stop: Callable[[], str | None] = lambda: None) -> tuple[Any, optuna.trial.FrozenTrial]:
    trial, _ = runner.shared.ask_within_budget(runner.attrs)
    assert trial is not None
    result = runner.run(trial, stop)
    return result, runner.shared.trials()[trial.number]


def writes_a_file(params: dict[str, Any], ctx: TrialContext) -> float:
    (ctx.run_dir / "model.txt").write_text("weights")
    return quick(params, ctx)


def logs_a_line(params: dict[str, Any], ctx: TrialContext) -> float:
    ctx.logger.info("epoch 1: loss %.3f", 0.5)
    return quick(params, ctx)


@pytest.mark.parametrize(("objective", "own"), [(writes_a_file, ["model.txt"]), (logs_a_line, [])])
def test_trial_that_keeps_something_gets_its_run_directory_with_hpo_files(
        trial_runner: Callable[..., TrialRunner], objective: Any, own: list[str]) -> None:
    runner = trial_runner(objective)
    result, trial = run_one(runner)
    assert (result.state, trial.state, trial.value) == (TrialState.COMPLETE, TrialState.COMPLETE, trial.params["x"] ** 2)
    run_dir = runner.run_dir(trial.number)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(["params.json", "settings.json", "trial.json",
                                                                "trial.log", *own])
    record = json.loads((run_dir / "trial.json").read_text())
    assert (record["state"], record["values"]) == ("COMPLETE", [trial.value])
    assert json.loads((run_dir / "params.json").read_text())["params"] == trial.params
    assert json.loads((run_dir / "settings.json").read_text())["study_name"] == runner.settings.study_name
    log = (run_dir / "trial.log").read_text().splitlines()
    # Every line of its run, the ones written before the folder was made included.
    assert f"trial {trial.number} started on cpu" in log[0] and f"trial {trial.number} finished: COMPLETE" in log[-1]
    assert ("epoch 1: loss 0.500" in "\n".join(log)) == (objective is logs_a_line)


def test_trial_that_keeps_nothing_leaves_no_run_directory(trial_runner: Callable[..., TrialRunner],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """An objective that only returns a number: the journal and the worker log hold the
    trial, and no folder is made for it (a folder and four files were most of a short
    trial's cost)."""
    runner = trial_runner(quick)
    result, trial = run_one(runner)
    assert (result.state, trial.value) == (TrialState.COMPLETE, trial.params["x"] ** 2)
    assert trial.user_attrs["run_dir"] == str(runner.run_dir(trial.number).resolve())  # where it would be
    assert not runner.run_dir(trial.number).exists()
    assert f"trial {trial.number} finished: COMPLETE" in caplog.text


def test_a_warning_from_another_thread_makes_the_folder_once(trial_runner: Callable[..., TrialRunner]) -> None:
    """The heartbeat thread (here: the objective's own thread) may warn while the trial's
    main thread asks for its folder: one folder, every line once, and its trial.json."""
    import threading

    def objective(params: dict[str, Any], ctx: TrialContext) -> float:
        go = threading.Event()
        other = threading.Thread(target=lambda: (go.wait(), logging.getLogger("hpo.worker.recovery").warning(
            "a beat was late")))
        other.start()
        go.set()
        for _ in range(200):
            assert ctx.run_dir.is_dir()
        other.join(timeout=10)
        return quick(params, ctx)

    runner = trial_runner(objective)
    result, trial = run_one(runner)
    assert result.state == TrialState.COMPLETE
    run_dir = runner.run_dir(trial.number)
    log = (run_dir / "trial.log").read_text()
    assert log.count("a beat was late") == 1 and log.count(f"trial {trial.number} started") == 1
    assert json.loads((run_dir / "trial.json").read_text())["state"] == "COMPLETE"


def test_a_folder_left_by_an_earlier_study_of_the_name_gets_this_trial_s_files(
        trial_runner: Callable[..., TrialRunner]) -> None:
    runner = trial_runner(quick)
    stale = runner.run_dir(0)
    stale.mkdir(parents=True)
    (stale / "settings.json").write_text('{"study_name": "an older study"}')
    (stale / "trial.json").write_text('{"state": "FAIL"}')
    result, trial = run_one(runner)
    assert trial.number == 0 and result.state == TrialState.COMPLETE
    assert json.loads((stale / "settings.json").read_text())["study_name"] == runner.settings.study_name
    assert json.loads((stale / "trial.json").read_text())["state"] == "COMPLETE"


class OutOfMemoryError(RuntimeError):
    """What torch.cuda raises, by name (hpo.worker.outcome does not import torch)."""


def test_out_of_memory_is_given_back_once_the_trial_s_tensors_are_gone(
        trial_runner: Callable[..., TrialRunner], monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache is emptied after the failed trial's frames are dropped: inside the except
    block its traceback still held every tensor it made, so nothing was given back and a
    neighbour on the same GPU ran out too."""
    import weakref

    from hpo.worker import outcome as outcomes

    class Activations:  # stands for the trial's tensors
        pass

    held: list[weakref.ReferenceType[Activations]] = []

    def objective(params: dict[str, Any], ctx: TrialContext) -> float:
        activations = Activations()
        held.append(weakref.ref(activations))
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    alive_when_freed: list[bool] = []
    real = outcomes.free_memory
    monkeypatch.setattr(outcomes, "free_memory", lambda: (real(), alive_when_freed.append(held[-1]() is not None)))
    result, trial = run_one(trial_runner(objective))
    assert (trial.state, trial.user_attrs["reason"]) == (TrialState.FAIL, "out of memory")
    assert alive_when_freed == [False]


def test_an_oom_a_neighbour_caused_is_retried_once_with_the_same_parameters(
        trial_runner: Callable[..., TrialRunner]) -> None:
    """Another process filled the card (torch's message says how much): the parameters get one
    more try, and a retry that meets a full card again is not retried."""
    from tests.test_unit_outcome import CROWDED

    def objective(params: dict[str, Any], ctx: TrialContext) -> float:
        raise OutOfMemoryError(CROWDED)

    runner = trial_runner(objective)
    _, first = run_one(runner)
    _, retry = run_one(runner)
    _, nothing_more = run_one(runner)
    reason = "out of memory: other processes held 60.1 of the GPU's 79.2 GiB"
    assert (first.state, first.user_attrs["reason"]) == (TrialState.FAIL, reason)
    assert (retry.user_attrs["retry_of"], retry.params, retry.user_attrs["reason"]) == (first.number, first.params, reason)
    assert nothing_more.user_attrs.get("retry_of") is None  # a fresh trial: the retry was not retried
    # Trial 1 (the retry) was not retried; trial 2, a fresh one, gets its own retry (trial 3).
    assert [t.user_attrs.get("retry_of") for t in runner.shared.trials()] == [None, 0, None, 2]


def test_the_one_oom_retry_holds_along_the_lineage(trial_runner: Callable[..., TrialRunner]) -> None:
    """Crowded card, retry preempted, its retry on a crowded card again: not retried a third
    time (the lineage spent its out-of-memory retry, whatever came between)."""
    from tests.test_unit_outcome import CROWDED

    flag = StopFlag()

    def objective(params: dict[str, Any], ctx: TrialContext) -> float:
        if ctx.number == 1:
            flag.stop = Stop.PREEMPTED
            ctx.check_stop()
        raise OutOfMemoryError(CROWDED)

    runner = trial_runner(objective)
    run_one(runner)  # trial 0: out of memory, retried (trial 1)
    run_one(runner, flag.requested)  # trial 1: preempted, retried (trial 2)
    flag.stop = None
    _, last = run_one(runner)  # trial 2: out of memory again
    trials = runner.shared.trials()
    assert [t.user_attrs.get("retry_of") for t in trials] == [None, 0, 1], [t.user_attrs for t in trials]
    assert (last.number, last.user_attrs["oom_retried"]) == (2, True)


@pytest.mark.parametrize(("exc", "state", "reason", "folder"), [
    (ValueError("bad shape"), TrialState.FAIL, "ValueError: bad shape", True),  # its traceback is kept
    (optuna.TrialPruned(), TrialState.PRUNED, "pruned", False),
])
def test_trial_that_raises_ends_as_the_table_says(trial_runner: Callable[..., TrialRunner], exc: BaseException,
                                                  state: TrialState, reason: str, folder: bool) -> None:
    result, trial = run_one(trial_runner(raises(exc)))
    assert (result.state, result.stop_worker, trial.state, trial.user_attrs["reason"]) == (state, None, state, reason)
    run_dir = Path(trial.user_attrs["run_dir"])
    assert run_dir.exists() == folder
    if folder:
        assert json.loads((run_dir / "trial.json").read_text())["state"] == state.name
        assert "Traceback" in (run_dir / "trial.log").read_text() and "bad shape" in (run_dir / "trial.log").read_text()


def test_preempted_trial_fails_is_retried_and_stops_the_worker(trial_runner: Callable[..., TrialRunner]) -> None:
    """The flag is set: the objective sees "preempted" and stops at its check (TrialStopped)."""
    seen: list[str | None] = []

    def objective(params: dict[str, Any], ctx: TrialContext) -> float:
        seen.append(ctx.stop_requested())
        ctx.check_stop()
        return 1.0

    runner, flag = trial_runner(objective), StopFlag(stop=Stop.PREEMPTED)
    result, trial = run_one(runner, flag.requested)
    assert seen == ["preempted"] and result.stop_worker is Stop.PREEMPTED
    assert (trial.state, trial.user_attrs["reason"]) == (TrialState.FAIL, "preempted")
    retry = runner.shared.trials()[-1]  # a WAITING trial holds its parameters as Optuna's enqueue_trial put them
    assert (retry.state, retry.system_attrs["fixed_params"], retry.user_attrs["retry_of"]) == \
        (TrialState.WAITING, trial.params, trial.number)

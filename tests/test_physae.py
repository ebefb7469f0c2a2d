"""PhysAE on the CPU with real torch: data, learning, artefacts, divergence, stop and resume."""

from __future__ import annotations

import json
import math
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from hpo.config.settings import Settings, resolve
from hpo.physae import data as D
from hpo.physae import model as M
from hpo.physae import train as T
from hpo.physae.objective import objective
from hpo.physae.settings import SETTINGS
from hpo.worker.context import TrialContext, TrialStopped
from hpo.worker.context import Diverged

ROOT = Path(__file__).resolve().parent.parent
# Two epochs per stage, learning rates at the upper ends of configs/physae.yaml's ranges.
PARAMS: dict[str, Any] = {
    "A.epochs": 2, "A.base_lr": 3.0e-4, "A.refiner_lr": 5.0e-5,
    "B1.epochs": 2, "B1.refiner_lr": 5.0e-4, "B1.delta_scale": 0.20, "B1.refine_steps": 3,
    "B2.epochs": 2, "B2.base_lr": 1.0e-4, "B2.refiner_lr": 5.0e-5, "B2.delta_scale": 0.15, "B2.refine_steps": 3,
}  # fmt: skip
TOTAL_EPOCHS = 6
TINY_ENV = {"N_TRAIN": "256", "N_VAL": "64", "N_POINTS": "64", "BATCH_SIZE": "32"}


@dataclass
class Recorder:
    """Stands in for the worker: records reports, asks to stop after ``stop_after`` reports."""

    stop_after: int | None = None
    reports: list[tuple[int, float]] = field(default_factory=list)

    def report(self, step: int, value: float) -> None:
        self.reports.append((step, value))

    def stop_reason(self) -> str | None:
        if self.stop_after is not None and len(self.reports) >= self.stop_after:
            return "preempted"
        return None


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from more threads, and on a busy 2-core machine
    two OpenMP threads made these tests ~6x slower (oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return resolve(flags={}, env=TINY_ENV, config_settings={}, config=ROOT / "configs" / "physae.yaml",
                   objective_fields=SETTINGS)


def make_ctx(settings: Settings, run_dir: Path, recorder: Recorder, resume_dir: Path | None = None,
             params: dict[str, Any] | None = None) -> TrialContext:  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    return TrialContext(
        number=0, params=params or PARAMS, fixed={}, settings=settings, run_dir=run_dir, device="cpu",
        logger=logging.getLogger("test_physae"), resume_dir=resume_dir,
        options=settings.objective, _report=recorder.report, _stop_reason=recorder.stop_reason,
    )  # fmt: skip


@dataclass
class Completed:
    run_dir: Path
    value: float
    recorder: Recorder


@pytest.fixture(scope="module")
def completed(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Completed:
    """One uninterrupted tiny run, shared by the read-only checks."""
    run_dir = tmp_path_factory.mktemp("full")
    recorder = Recorder()
    value = objective(dict(PARAMS), make_ctx(settings, run_dir, recorder))
    return Completed(run_dir, value, recorder)


def metric_lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_seconds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


# ---------------------------------------------------------------- data


def test_dataset_is_pure_and_cached() -> None:
    D.clear_dataset_cache()
    first = D.get_dataset(32, 8, 64, 3, "cpu")
    assert D.get_dataset(32, 8, 64, 3, "cpu") is first
    fresh = D.generate_dataset(32, 8, 64, 3)
    assert torch.equal(fresh.train_signal, first.train_signal) and torch.equal(fresh.val_params, first.val_params)
    other = D.get_dataset(32, 8, 64, 4, "cpu")
    assert not torch.equal(other.train_signal, first.train_signal)
    # The validation set depends on (n_val, n_points, seed) only.
    assert torch.equal(D.generate_dataset(64, 8, 64, 3).val_signal, first.val_signal)
    D.clear_dataset_cache()
    assert D.cached_keys() == [] and D.get_dataset(32, 8, 64, 3, "cpu") is not first


def test_labels_are_normalised_sorted_and_render_the_spectra() -> None:
    data = D.generate_dataset(200, 8, 128, 0)
    params = data.train_params
    assert params.min() >= 0.0 and params.max() <= 1.0
    positions = data.physics.denormalise(params)[:, D.N_PEAKS : 2 * D.N_PEAKS]
    assert bool((positions[:, 1:] > positions[:, :-1]).all())
    residual = data.train_signal - data.physics(params)
    assert abs(residual.std().item() - D.NOISE_STD) < 0.1 * D.NOISE_STD


# ---------------------------------------------------------------- a full run


def test_model_learns_well_below_untrained(settings: Settings, completed: Completed) -> None:
    o = settings.objective
    data = D.get_dataset(o["n_train"], o["n_val"], o["n_points"], settings.data_seed, "cpu")
    encoder, refiner = M.build_models(data.train_signal, settings.train_seed, "cpu")
    untrained = T.evaluate(encoder, refiner, data, PARAMS["B2.delta_scale"], PARAMS["B2.refine_steps"])
    mean_guess = data.train_params.mean(dim=0)
    mean_predictor = ((data.val_params - mean_guess) ** 2).mean().sqrt().item()
    # Measured: untrained 0.295, predicting the training mean 0.269, trained 0.171: 0.58x untrained,
    # 0.64x the mean predictor (0.55-0.58x untrained over three other data/train seeds).
    assert completed.value < 0.7 * untrained.val_param_error
    assert completed.value < 0.75 * mean_predictor


def test_b1_leaves_the_encoder_unchanged(completed: Completed) -> None:
    stage_a = torch.load(completed.run_dir / "stage_A.pt", weights_only=True)
    stage_b1 = torch.load(completed.run_dir / "stage_B1.pt", weights_only=True)
    stage_b2 = torch.load(completed.run_dir / "stage_B2.pt", weights_only=True)
    for name, tensor in stage_a["encoder"].items():
        assert torch.equal(tensor, stage_b1["encoder"][name]), name
    assert any(not torch.equal(t, stage_b1["refiner"][n]) for n, t in stage_a["refiner"].items())
    assert any(not torch.equal(t, stage_b2["encoder"][n]) for n, t in stage_b1["encoder"].items())


def test_metrics_lines_and_reports(completed: Completed) -> None:
    records = metric_lines(completed.run_dir)
    assert [(r["stage"], r["epoch"]) for r in records] == [(s, e) for s in T.STAGES for e in (1, 2)]
    assert all(set(r) == set(T.METRIC_KEYS) for r in records)
    assert [r["global_step"] for r in records] == list(range(1, TOTAL_EPOCHS + 1))
    assert [step for step, _ in completed.recorder.reports] == list(range(1, TOTAL_EPOCHS + 1))
    assert [v for _, v in completed.recorder.reports] == [r["val_param_error"] for r in records]


def test_artefacts(completed: Completed) -> None:
    for stage in T.STAGES:
        state = torch.load(completed.run_dir / f"stage_{stage}.pt", weights_only=True)
        assert set(state) >= {"encoder", "refiner"}
    result = json.loads((completed.run_dir / "result.json").read_text())
    assert result["value"] == completed.value == metric_lines(completed.run_dir)[-1]["val_param_error"]
    assert result["global_steps"] == TOTAL_EPOCHS
    timings = result["timings"]
    assert {"data", "train", "eval", "checkpoint", "total", "other", "stages"} <= set(timings)
    assert timings["stages"]["A"]["samples"] == 2 * 256 and timings["stages"]["B2"]["samples_per_second"] > 0
    assert not (completed.run_dir / "resume.pt").exists()
    assert not list(completed.run_dir.glob(".*.tmp"))


def test_cpu_runs_are_deterministic(settings: Settings, completed: Completed, tmp_path: Path) -> None:
    value = objective(dict(PARAMS), make_ctx(settings, tmp_path, Recorder()))
    assert value == completed.value
    assert without_seconds(metric_lines(tmp_path)) == without_seconds(metric_lines(completed.run_dir))


def test_bf16_autocast_path_runs_on_cpu(settings: Settings, completed: Completed, tmp_path: Path) -> None:
    """PRECISION=bf16 runs the mixed-precision code a CUDA trial runs (autocast, the float()
    before the sigmoid, float32 physics), here on CPU: it trains, reports finite values, and
    differs from the float32 run, so autocast really was on."""
    bf16 = replace(settings, objective={**settings.objective, "precision": "bf16"})
    ctx = make_ctx(bf16, tmp_path, Recorder())
    ctx = replace(ctx, options=bf16.objective)
    value = objective(dict(PARAMS), ctx)
    assert math.isfinite(value) and value < 1.0
    lines = metric_lines(tmp_path)
    assert [(r["stage"], r["epoch"]) for r in lines] == [(r["stage"], r["epoch"]) for r in metric_lines(completed.run_dir)]
    assert value != completed.value
    assert T.uses_bf16("cuda") and not T.uses_bf16("cpu") and T.uses_bf16("cpu", "bf16") and not T.uses_bf16("cuda", "fp32")
    # auto: bf16 only where the GPU computes in it (Ampere, 8.0, and later), not emulated on a V100 or T4.
    assert T.uses_bf16("cuda", "auto", (8, 0)) and T.uses_bf16("cuda", "auto", (9, 0))
    assert not T.uses_bf16("cuda", "auto", (7, 0)) and not T.uses_bf16("cuda", "auto", (7, 5))
    assert T.uses_bf16("cuda", "bf16", (7, 0))  # asked for: as asked


def test_train_seed_changes_the_run(settings: Settings, completed: Completed, tmp_path: Path) -> None:
    params = {**PARAMS, "A.epochs": 1, "B1.epochs": 1, "B2.epochs": 1}
    one = objective(params, make_ctx(settings, tmp_path / "a", Recorder(), params=params))
    two = objective(params, make_ctx(replace(settings, train_seed=1), tmp_path / "b", Recorder(), params=params))
    assert one != two


def test_missing_parameter_is_named(settings: Settings, tmp_path: Path) -> None:
    params = {k: v for k, v in PARAMS.items() if k != "B1.delta_scale"}
    with pytest.raises(ValueError, match="B1.delta_scale"):
        objective(params, make_ctx(settings, tmp_path, Recorder()))


# ---------------------------------------------------------------- divergence


def test_non_finite_loss_raises_diverged_with_stage_and_epoch(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = {**PARAMS, "A.epochs": 1, "B1.epochs": 2}
    real_loss: Callable[..., torch.Tensor] = T.loss_fn
    batches = {"n": 0}

    def poisoned(*args: Any) -> torch.Tensor:
        batches["n"] += 1  # 8 batches per epoch: batch 17 is the first of B1 epoch 2
        loss = real_loss(*args)
        return loss * float("nan") if batches["n"] > 16 else loss

    monkeypatch.setattr(T, "loss_fn", poisoned)
    recorder = Recorder()
    with pytest.raises(Diverged, match="diverged at B1 epoch 2"):
        objective(params, make_ctx(settings, tmp_path, recorder, params=params))
    assert [step for step, _ in recorder.reports] == [1, 2]


# ---------------------------------------------------------------- stop and resume


def test_stop_request_saves_resume_and_a_retry_matches_the_full_run(
    settings: Settings, completed: Completed, tmp_path: Path
) -> None:
    stopped_dir = tmp_path / "stopped"
    with pytest.raises(TrialStopped) as info:
        objective(dict(PARAMS), make_ctx(settings, stopped_dir, Recorder(stop_after=3)))  # B1 epoch 1
    assert info.value.reason == "preempted"
    resume = torch.load(stopped_dir / "resume.pt", weights_only=True)
    assert (resume["stage"], resume["epoch"], resume["global_step"]) == ("B1", 1, 3)
    assert len(metric_lines(stopped_dir)) == 3

    retry_dir, recorder = tmp_path / "retry", Recorder()
    value = objective(dict(PARAMS), make_ctx(settings, retry_dir, recorder, resume_dir=stopped_dir))
    assert value == completed.value  # bit-identical to the uninterrupted run on CPU
    assert [step for step, _ in recorder.reports] == list(range(1, TOTAL_EPOCHS + 1))
    assert without_seconds(metric_lines(retry_dir)) == without_seconds(metric_lines(completed.run_dir))
    assert all((retry_dir / f"stage_{s}.pt").is_file() for s in T.STAGES)
    assert json.loads((retry_dir / "result.json").read_text())["resumed_from"].endswith("resume.pt")


def test_resume_in_place_from_the_same_directory(settings: Settings, completed: Completed, tmp_path: Path) -> None:
    with pytest.raises(TrialStopped):
        objective(dict(PARAMS), make_ctx(settings, tmp_path, Recorder(stop_after=2)))  # end of stage A
    value = objective(dict(PARAMS), make_ctx(settings, tmp_path, Recorder(), resume_dir=tmp_path))
    assert value == completed.value
    assert len(metric_lines(tmp_path)) == TOTAL_EPOCHS and not (tmp_path / "resume.pt").exists()


def test_resume_from_stage_checkpoints_only(settings: Settings, completed: Completed, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for name in ("stage_A.pt", "stage_B1.pt", "metrics.jsonl"):
        shutil.copy(completed.run_dir / name, old / name)
    retry_dir, recorder = tmp_path / "retry", Recorder()
    value = objective(dict(PARAMS), make_ctx(settings, retry_dir, recorder, resume_dir=old))
    assert value == completed.value
    assert [r["global_step"] for r in metric_lines(retry_dir)] == list(range(1, TOTAL_EPOCHS + 1))

    shutil.copy(completed.run_dir / "stage_B2.pt", old / "stage_B2.pt")  # all done: only the final evaluation
    done_dir, recorder = tmp_path / "done", Recorder()
    assert objective(dict(PARAMS), make_ctx(settings, done_dir, recorder, resume_dir=old)) == completed.value
    assert [step for step, _ in recorder.reports] == list(range(1, TOTAL_EPOCHS + 1))


def test_resume_ignores_checkpoints_of_other_parameters(
    settings: Settings, completed: Completed, tmp_path: Path
) -> None:
    params = {**PARAMS, "A.epochs": 1, "B1.epochs": 1, "B2.epochs": 1}
    recorder = Recorder()
    objective(params, make_ctx(settings, tmp_path, recorder, resume_dir=completed.run_dir, params=params))
    assert [step for step, _ in recorder.reports] == [1, 2, 3]
    assert json.loads((tmp_path / "result.json").read_text())["resumed_from"] is None


# ---------------------------------------------------------------- imports


def _imports_torch(module: str) -> bool:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def test_importing_the_package_does_not_import_torch() -> None:
    assert not _imports_torch("hpo.physae")


def test_importing_the_cli_does_not_import_torch() -> None:
    assert not _imports_torch("hpo.cli")


def test_a_resumed_optimizer_steps_as_this_device_does() -> None:
    """A checkpoint written on a GPU (fused Adam) resumed on the CPU: the moments come back,
    the way to step is the CPU's (not fused)."""
    weight = torch.nn.Parameter(torch.ones(3))
    gpu_side = torch.optim.Adam([weight], lr=0.1)
    weight.grad = torch.ones(3)
    gpu_side.step()
    state = gpu_side.state_dict()
    state["param_groups"][0]["fused"] = True  # as a CUDA trial saved it
    cpu_side = torch.optim.Adam([weight], lr=0.1)
    T.load_optimizer(cpu_side, state)
    assert cpu_side.param_groups[0]["fused"] is None
    assert torch.equal(cpu_side.state[weight]["exp_avg"], gpu_side.state[weight]["exp_avg"])


def test_the_compiled_step_compiles_once_per_variant_not_per_trial(settings: Settings, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """STEP_COMPILE: three trials with other delta_scale values, the same refine steps, a last
    smaller batch: the step is compiled for each stage's kind (A, B1 with the encoder frozen,
    B2) and then reused, never for a sampled float or a batch size (torch.compile's eager
    backend: dynamo's graphs without the code generation), and trains as the eager step."""
    import functools

    import torch._dynamo

    torch._dynamo.reset()
    monkeypatch.setattr(T, "step_function", functools.partial(T.step_function, backend="eager"))
    odd = replace(settings, objective={**settings.objective, "step_compile": "default", "n_train": 250})
    values = []
    for i, scale in enumerate((0.20, 0.07, 0.13)):
        params = {**PARAMS, "A.epochs": 1, "B1.epochs": 1, "B2.epochs": 1, "B1.delta_scale": scale,
                  "B2.delta_scale": scale - 0.01}
        ctx = replace(make_ctx(odd, tmp_path / str(i), Recorder(), params=params), options=odd.objective)
        values.append(objective(params, ctx))
    frames = torch._dynamo.utils.counters["frames"]
    assert all(math.isfinite(v) for v in values) and len(set(values)) == 3
    assert frames["ok"] <= 4, dict(frames)  # A, B1, B2 (and the batch dimension made dynamic once)
    eager = objective(dict(PARAMS), make_ctx(settings, tmp_path / "eager", Recorder()))
    compiled = objective(dict(PARAMS), replace(make_ctx(odd, tmp_path / "c", Recorder()),
                                                options={**odd.objective, "n_train": 256}))
    assert abs(compiled - eager) < 1e-4 * max(1.0, abs(eager))

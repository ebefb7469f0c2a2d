"""PhysAE's own settings: seed 000's dataset sizes, batch size and stage epochs.

Declared here, not in :mod:`hpo.config.settings`, because only this objective knows them;
hpo resolves them like its own (default < config ``settings:`` < environment <
``--arg NAME=VALUE``), shows them in ``hpo config``, records them in each trial's
``settings.json`` and hands them to the objective as ``ctx.options``. A stage's
epochs, when set, fix that stage's ``epochs`` parameter instead of sampling it.
No torch here: the CLI reads this table at start-up.
"""

from __future__ import annotations

from hpo.api import Field, choice, int_in, optional

SETTINGS: tuple[Field, ...] = (
    Field("n_train", "N_TRAIN", int_in(1, 10_000_000), 50000, "training samples", budget=True),
    Field("n_val", "N_VAL", int_in(1, 1_000_000), 4000, "validation samples", budget=True),
    Field("n_points", "N_POINTS", int_in(16, 65536), 256, "points per spectrum", budget=True),
    Field("stagea_epochs", "STAGEA_EPOCHS", optional(int_in(1, 10000)), None, "fix Stage A epochs (else sampled)",
          fixes="A.epochs", budget=True),
    Field("stageb1_epochs", "STAGEB1_EPOCHS", optional(int_in(1, 10000)), None, "fix Stage B1 epochs (else sampled)",
          fixes="B1.epochs", budget=True),
    Field("stageb2_epochs", "STAGEB2_EPOCHS", optional(int_in(1, 10000)), None, "fix Stage B2 epochs (else sampled)",
          fixes="B2.epochs", budget=True),
    Field("batch_size", "BATCH_SIZE", int_in(1, 1_000_000), 512, "training batch size"),
    Field("precision", "PRECISION", choice(("auto", "bf16", "fp32")), "auto",
          "auto: bf16 autocast and fused Adam on CUDA from Ampere (8.0) on, float32 elsewhere; bf16 or fp32 force "
          "it (bf16 works on CPU)"),
    Field("step_compile", "STEP_COMPILE", choice(("off", "default", "reduce-overhead")), "off",
          "torch.compile the training step: reduce-overhead replays it as a CUDA graph (one launch "
          "instead of ~370 kernels); default fuses kernels (CPU too); off: eager, exact as before"),
)

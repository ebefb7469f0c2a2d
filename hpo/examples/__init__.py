"""Small runnable objectives for the other research workflows (seeds 001-004).

Each is a plain ``objective(params, ctx)`` named by a config in ``configs/examples/``
and runs through ``hpo run``, ``sbatch slurm/bash_optuna.sh`` and ``hpo submit`` unchanged.
"""

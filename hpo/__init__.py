"""hpo: Optuna studies on SLURM GPU clusters and on one machine, through one journal file.

Importing ``hpo`` is cheap: no torch, no optuna. See ``hpo --help``.
"""

__version__ = "0.1.0"

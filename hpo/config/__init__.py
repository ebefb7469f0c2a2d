"""What a launch is told: hpo's settings and the objective's (one table, one resolver), the worker's
identity, the process environment (read here only), the study config YAML, its search space and sweeps."""

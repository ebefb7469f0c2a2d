"""PhysAE: a physics-informed autoencoder trained in stages A -> B1 -> B2.

The default objective of ``hpo`` (``hpo.physae.objective:objective``). Modules:

- :mod:`hpo.physae.data`: forward model and the cached, deterministic dataset
  (:func:`~hpo.physae.data.get_dataset`, :func:`~hpo.physae.data.clear_dataset_cache`);
- :mod:`hpo.physae.model`: encoder, refiner, :func:`~hpo.physae.model.predict`;
- :mod:`hpo.physae.train`: the staged training loop and its run-directory artefacts;
- :mod:`hpo.physae.objective`: the objective function the worker calls.

Importing this package does not import torch (the CLI must start fast); the
submodules above do.
"""

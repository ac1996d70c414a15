"""open_clip pretraining: model configs and factory, data loaders, objectives, the training loop,
checkpoints and embeddings. Free of Prefect and Ray (tests/test_imports.py)."""

import os

# OpenMP threads that spin while waiting make torch ~3x slower when other processes share the cores
# (measured with training.throughput on the 2-core dev machine under load). libgomp reads this when torch
# is first imported, so it only takes effect where `training` is imported before torch; an explicit
# setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

METRICS_FILE = "metrics.jsonl"
"""In a training run folder: one JSON line of metrics per logged step (training.progress writes it). Named here,
where nothing imports torch, so tasks.store.layout can read the name without importing the training stack."""

"""Shared fixtures: a very small open_clip config (fast on a loaded CPU) and tiny image-text data."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import typing
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from training.config import TrainConfig

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230), "yellow": (230, 230, 30)}

MICRO_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 1, "width": 64, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
}


@pytest.fixture
def two_gloo_ranks(tmp_path) -> Callable[..., list[dict]]:
    """Run a rank script as two fresh processes joined through a file store (as under torchrun or Ray
    Train): `run(script_text, *extra_args)`; each process gets `rank init_url out_json *extra_args` and
    the JSON each rank wrote comes back, rank-major. Both must exit 0 within two minutes.

    Rank scripts end with barrier, destroy_process_group and `os._exit(0)`: about one run in 20–40 on
    this machine, a rank that had finished every collective and torn down its group still aborted in
    interpreter teardown ("terminate called without an active exception", SIGABRT, after
    destroy_process_group returned), so the exit skips C++ static destruction. What is tested is
    everything up to the barrier."""
    def run(script_text: str, *extra_args: str) -> list[dict]:
        script = tmp_path / "rank.py"
        script.write_text(script_text)
        init = f"file://{tmp_path / 'store'}"
        procs = [subprocess.Popen([sys.executable, str(script), str(r), init, str(tmp_path / f"r{r}.json"),
                                   *extra_args], env={**os.environ, "OMP_NUM_THREADS": "1"}) for r in range(2)]
        try:
            codes = [p.wait(timeout=120) for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert codes == [0, 0]
        return [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    return run


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory) -> str:
    """Path of a JSON open_clip config ~50x cheaper than curaclip-vit-tiny (same code paths)."""
    path = tmp_path_factory.mktemp("configs") / "curaclip-test-micro.json"
    path.write_text(json.dumps(MICRO_CONFIG))
    return str(path)


def square_png(colour: tuple[int, int, int], size: int = 32, offset: int = 0) -> bytes:
    """A coloured square on a grey background, PNG-encoded."""
    pixels = np.full((size, size, 3), 90, np.uint8)
    lo, hi = size // 4 + offset, 3 * size // 4 + offset
    pixels[lo:hi, lo:hi] = colour
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def colour_rows(n: int, seed: int = 0) -> list[dict]:
    """n samples, colour i % 4, with every caption field of the data contract."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows = []
    for i in range(n):
        name = names[i % len(names)]
        rows.append({
            "uid": f"u{i:04d}",
            "image": square_png(COLOURS[name], offset=int(rng.integers(-3, 4))),
            "text": f"a {name} square",
            "rewrites": [f"a square that is {name}", "x"],
            "long_caption": f"A {name} square. It sits on grey.",
            "synthetic_caption": f"{name} square",
            "cluster_labels": [i % 4, (i + 1) % 4],
            "cluster_scores": [0.9, 0.5],
        })
    return rows


@pytest.fixture
def colour_table() -> pa.Table:
    return pa.Table.from_pylist(colour_rows(64))


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch):
    """Train the micro model on one thread: with two threads on a loaded 2-core machine, OpenMP's
    spin-waiting makes these tests ~10x slower. The loop reads OMP_NUM_THREADS (as under Ray)."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_config(**flat) -> TrainConfig:
    """A TrainConfig from flat keywords, as tests write them (`epochs=2, batch_size=8`): each key that moved into
    a component goes there (TrainConfig.MOVED_KEYS), and a tuple of objectives means weight 1.0 each."""
    hints, top, parts = typing.get_type_hints(TrainConfig), {}, {}
    for key, value in flat.items():
        component, _, name = TrainConfig.MOVED_KEYS.get(key, "").partition(".")
        if component in hints and name == key:
            parts.setdefault(component, {})[name] = value
        elif key == "objectives" and not isinstance(value, dict):
            top[key] = dict.fromkeys(value, 1.0)
        else:
            top[key] = value
    return TrainConfig(**top, **{component: hints[component](**values) for component, values in parts.items()})


def tiny_cfg(micro_model: str, **kw) -> TrainConfig:
    """24 steps of 16 on the 64-row colour table (6 epochs), a metrics line every 4 steps, epoch checkpoints only."""
    base = dict(model=micro_model, epochs=6, batch_size=16, lr=2e-3, warmup_steps=3, log_every=4,
                checkpoint_every=0, context_length=16, workers=0)
    return train_config(**{**base, **kw})


def train_killed_at(cfg: TrainConfig, table: pa.Table, out_dir: str, step: int) -> None:
    """Train `cfg` into out_dir and stop it, as a kill would, when the metrics line of `step` is logged."""
    from training.loop import train

    def stop(line: dict) -> None:
        if line["step"] == step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, table, out_dir, log=stop)

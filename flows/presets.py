"""Run presets: named override lists applied over the packaged default config (before any --set).

`default` is `flows/default.yaml` as it stands (the `make run` size); `smoke` runs every stage for real on a few
hundred samples, for tests, CI and trying a config change (under 3 minutes on two cores).
"""

from __future__ import annotations

PRESETS: dict[str, tuple[str, ...]] = {
    "default": (),
    "smoke": (
        "ingest.world.num_images=360",   # ~190 curated samples: every stage has rows to work on
        "ingest.partitions=2",           # two parts, so the Ray fan-out and the reductions still run
        "curate.t=40",                   # MetaCLIP's threshold scaled to the tiny pool
        "embed.bootstrap_epochs=1",
        "cluster.num_centers=8",
        "shard.samples_per_shard=64",    # several shards
        "train.schedule.epochs=1",
        "train.data.batch_size=32",
        "eval.synthetic.train_per_class=4",
        "eval.synthetic.validation_per_class=2",
        "eval.synthetic.test_per_class=2",
        "eval.synthetic.retrieval_pairs=40",
        "eval.synthetic.compositional_pairs=20",
        "eval.fewshot.shots=1,2",
        "eval.fewshot.draws=2",
    ),
}
"""Preset name -> `key=value` overrides, in the form `--set` takes."""


def preset_overrides(name: str) -> tuple[str, ...]:
    """The overrides of preset `name`; an unknown name is an error listing the presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
    return PRESETS[name]

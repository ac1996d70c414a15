"""Raw pool sources for the ingest stage.

The embedded default is the synthetic world (``curation.synthetic``); img2dataset/WebDataset
shards, Parquet, image+txt folders and TSV/CSV come next (issue 3) as further entries of
:data:`SOURCES`. A source turns a partition spec into the sample table of the data contract
(``uid, text, image, image_sha256, width, height``) plus, for the synthetic world only, the truth
table that only the simulated caption backends and eval may read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from curation import synthetic
from curation.synthetic import WorldConfig


@dataclass(frozen=True)
class IngestConfig:
    source: str = "synthetic"
    """Which raw pool to read (a key of ``curation.sources.SOURCES``)."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The synthetic world's generator settings (used when source is "synthetic")."""
    partitions: int = 8
    """Number of Parquet parts the pool is split into; each is one Ray task here and downstream."""


def synthetic_partitions(cfg: IngestConfig) -> list[tuple[int, int]]:
    """Contiguous index ranges covering the synthetic pool, one per part."""
    n, p = cfg.world.num_images, max(1, min(cfg.partitions, cfg.world.num_images))
    bounds = [round(i * n / p) for i in range(p + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(p)]


def read_synthetic(cfg: IngestConfig, span: tuple[int, int]) -> tuple[pa.Table, pa.Table | None]:
    """Samples and truth of the synthetic pool's images ``span[0]..span[1]-1``."""
    return synthetic.generate_pool(cfg.world, span[0], span[1])


SOURCES = {"synthetic": (synthetic_partitions, read_synthetic)}
"""source name -> (partition planner, partition reader)."""


def plan_partitions(cfg: IngestConfig) -> list[tuple[int, int]]:
    if cfg.source not in SOURCES:
        raise ValueError(f"unknown ingest source {cfg.source!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[cfg.source][0](cfg)


def read_partition(cfg: IngestConfig, span: tuple[int, int]) -> tuple[pa.Table, pa.Table | None]:
    return SOURCES[cfg.source][1](cfg, span)

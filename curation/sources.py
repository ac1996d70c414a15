"""Raw pool sources for the ingest stage.

A pool is one or more source blocks (:class:`curation.readers.SourceConfig`): the embedded synthetic
world (``curation.world``), img2dataset/WebDataset tar shards, Parquet with image bytes or paths,
folders of image + txt pairs, and CSV/TSV of caption + path (``curation.readers``). The partitions
of every block are planned together; each partition turns into the sample table of the data contract
(``uid, text, image, image_sha256, width, height``), the quarantine table (``uid, stage, reason,
detail``) of the rows it could not use (``curation.validation``), and, for the synthetic world only,
the truth table that only the simulated caption backends and eval may read.

Duplicate uids (within a partition, across partitions or across sources) are left in the sample
table: the ingest task's cross-partition pass quarantines every repeat as ``duplicate_uid``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from curation import readers
from curation.readers import SourceConfig
from curation.schema import DROPPED_SCHEMA
from curation.validation import REASONS, Limits, validate_rows
from curation.world.pool import WorldConfig, generate_pool

__all__ = ["REASONS", "SOURCES", "IngestConfig", "PartitionSpec", "SourceConfig",
           "plan_partitions", "read_partition", "read_synthetic", "synthetic_partitions"]


@dataclass(frozen=True)
class IngestConfig:
    sources: tuple[SourceConfig, ...] = (SourceConfig(),)
    """raw pool sources, read together (the synthetic world by default)."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """the synthetic world's generator settings (its source blocks and eval read these)."""
    partitions: int = 8
    """Parquet parts the synthetic world is split into; each is one Ray task here and downstream."""
    max_pixels: int = 89_478_485
    """decompression-bomb cap on width * height, read from the header before decoding (PIL's default;
    PIL itself refuses anything over twice its Image.MAX_IMAGE_PIXELS whatever this says)."""
    max_caption_chars: int = 4096
    """captions longer than this many characters are quarantined as caption_too_long."""

    @property
    def source(self) -> str:
        """The formats read, joined by "+" (a manifest's one-word summary of the pool)."""
        return "+".join(s.format for s in self.sources)

    @property
    def limits(self) -> Limits:
        return Limits(max_pixels=self.max_pixels, max_caption_chars=self.max_caption_chars)


@dataclass(frozen=True)
class PartitionSpec:
    """One unit of ingest work: a slice of one source block."""

    source: int
    """index of the block in ``IngestConfig.sources``."""
    units: tuple
    """(start, stop) of the synthetic pool; file URLs; or ``readers.FolderSample``s."""


Tables = tuple[pa.Table, pa.Table | None, pa.Table]
"""(samples, truth or None, quarantine) of one partition."""
Reader = Callable[[IngestConfig, SourceConfig, tuple], Tables]


def synthetic_partitions(cfg: IngestConfig) -> list[tuple[int, int]]:
    """Contiguous index ranges covering the synthetic pool, one per part."""
    n, p = cfg.world.num_images, max(1, min(cfg.partitions, cfg.world.num_images))
    bounds = [round(i * n / p) for i in range(p + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(p)]


def read_synthetic(cfg: IngestConfig, span: tuple[int, int]) -> Tables:
    """Samples, truth and (empty) quarantine of the synthetic pool's images ``span[0]..span[1]-1``."""
    samples, truth = generate_pool(cfg.world, span[0], span[1])
    return samples, truth, DROPPED_SCHEMA.empty_table()


def _plan_synthetic(cfg: IngestConfig, src: SourceConfig) -> list[tuple]:
    return synthetic_partitions(cfg)


def _read_synthetic(cfg: IngestConfig, src: SourceConfig, units: tuple) -> Tables:
    return read_synthetic(cfg, units)


def _plan_files(cfg: IngestConfig, src: SourceConfig) -> list[tuple]:
    return readers.plan_units(src)


def _read_files(cfg: IngestConfig, src: SourceConfig, units: tuple) -> Tables:
    samples, quarantine = validate_rows(readers.iter_rows(src, units), cfg.limits)
    return samples, None, quarantine


SOURCES: dict[str, tuple[Callable[[IngestConfig, SourceConfig], list[tuple]], Reader]] = {
    "synthetic": (_plan_synthetic, _read_synthetic),
    **{name: (_plan_files, _read_files) for name in readers.FORMATS},
}
"""source format -> (partition planner, partition reader)."""


def _entry(src: SourceConfig) -> tuple[Callable, Reader]:
    if src.format not in SOURCES:
        raise ValueError(f"unknown ingest source format {src.format!r}; known: {', '.join(sorted(SOURCES))}")
    if src.format != "synthetic" and not src.path:
        raise ValueError(f"ingest source format {src.format!r} needs a path")
    return SOURCES[src.format]


def plan_partitions(cfg: IngestConfig) -> list[PartitionSpec]:
    """Partitions of every source block, in block order. Raises ValueError for an unknown format, a
    missing path, or a source that holds nothing to read."""
    if not cfg.sources:
        raise ValueError("ingest needs at least one source")
    return [PartitionSpec(i, tuple(units))
            for i, src in enumerate(cfg.sources) for units in _entry(src)[0](cfg, src)]


def read_partition(cfg: IngestConfig, spec: PartitionSpec) -> Tables:
    """(samples of the data contract, truth table or None, quarantine rows ``uid, stage, reason, detail``).

    Every record of the partition is in exactly one of samples and quarantine."""
    src = cfg.sources[spec.source]
    return _entry(src)[1](cfg, src, spec.units)

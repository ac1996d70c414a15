"""Which datasets a run is scored on: `eval.datasets` resolved against the pool, and the providers that build them.

`eval.datasets` is `auto` (the default) or a list of provider names. `auto` means the pool's own evaluation
sets: the synthetic world's when every ingest source is the synthetic world, none otherwise. A run on real
data is never scored on the synthetic world: with `auto` its eval stage is skipped, with the reason in the
eval manifest and the run report, until it names datasets of its own; naming `synthetic` for it is an error.

A resolved dataset is a ``DatasetSource``: a provider name and that provider's config (the WorldConfig
for `synthetic`). A later issue adds providers for image folders and CSV/TSV or WebDataset files, each with
its own config block, under new names in PROVIDERS.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from curation.world.pool import WorldConfig
from eval.config import EvalConfig
from eval.datasets import EvalDataset
from eval.synthetic_world import synthetic_datasets

AUTO = "auto"

PROVIDERS: dict[str, Callable[[Any, EvalConfig], list[EvalDataset]]] = {"synthetic": synthetic_datasets}
"""Provider name -> builder(provider config, eval config) of its datasets."""


class DatasetSource(NamedTuple):
    """One provider to build datasets from, with its config."""

    provider: str
    config: Any


def dataset_names(choice: str | Sequence[str]) -> tuple[str, ...]:
    """`eval.datasets` as a tuple of names ('auto' or 'synthetic' alone become one-name tuples)."""
    return (choice,) if isinstance(choice, str) else tuple(choice)


def resolve_sources(choice: str | Sequence[str], pool_formats: Sequence[str], world: WorldConfig
                    ) -> tuple[tuple[DatasetSource, ...], str | None]:
    """(sources to score on, why there are none or None). Raises ValueError for an unknown name, or for the
    synthetic sets named on a pool that is not the synthetic world."""
    synthetic_pool = bool(pool_formats) and all(f == "synthetic" for f in pool_formats)
    names = dataset_names(choice)
    if AUTO in names:
        if len(names) > 1:
            raise ValueError(f"eval.datasets: {AUTO!r} stands alone, got {list(names)}")
        names = ("synthetic",) if synthetic_pool else ()
    unknown = sorted(set(names) - set(PROVIDERS))
    if unknown:
        raise ValueError(f"eval.datasets: unknown dataset {unknown[0]!r}; choose from {AUTO!r}, "
                         f"{', '.join(repr(p) for p in sorted(PROVIDERS))}")
    if "synthetic" in names and not synthetic_pool:
        raise ValueError(f"eval.datasets names 'synthetic' but the pool is {'+'.join(pool_formats)}, not the "
                         "synthetic world: a run on real data is never scored on the synthetic world")
    if not names:
        reason = ("the pool is not the synthetic world (sources: " + "+".join(pool_formats) + ") and eval.datasets "
                  "names no datasets of its own" if AUTO in dataset_names(choice) else "eval.datasets is empty")
        return (), reason
    configs = {"synthetic": world}
    return tuple(DatasetSource(name, configs[name]) for name in names), None


def build_datasets(sources: Sequence[DatasetSource], cfg: EvalConfig) -> list[EvalDataset]:
    """Every source's datasets, in source order."""
    return [ds for source in sources for ds in PROVIDERS[source.provider](source.config, cfg)]


def eval_key_config(cfg: EvalConfig, sources: Sequence[DatasetSource]) -> tuple:
    """What the eval stage's key hashes: the suite settings and what the datasets resolved to (each source's
    config), not how they were named, so `auto` and `[synthetic]` on a synthetic pool are one artifact (and
    the key is the one it was before `eval.datasets` existed)."""
    settings = json.loads(json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k != "datasets"}))
    return (settings, *(source.config for source in sources))

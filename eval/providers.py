"""Which datasets a run is scored on: `eval.datasets` resolved against the pool, and the providers that load them.

`eval.datasets` is `auto` (the default) or a list of dataset sources (``synthetic``, ``folder:DIR``,
``csv:FILE``, ``wds:URL``), each a string or a :class:`eval.config.DatasetSpec` mapping. `auto` means the
pool's own evaluation sets: the synthetic world's when every ingest source is the synthetic world, none
otherwise. A run on real data is never scored on the synthetic world: with `auto` its eval stage is skipped,
with the reason in the eval manifest and the run report, until it names datasets of its own; naming
`synthetic` for it is an error.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import NamedTuple

from curation.world.pool import WorldConfig
from eval.config import DatasetSpec, EvalConfig
from eval.datasets import EvalDataset
from eval.loaders import LOADERS, load_dataset
from eval.suite import tasks_for
from eval.synthetic_world import synthetic_datasets

AUTO = "auto"
SYNTHETIC = "synthetic"


class DatasetSource(NamedTuple):
    """One dataset entry to load: its spec, and the world config when it is the synthetic world's sets."""

    spec: DatasetSpec
    world: WorldConfig | None = None


def as_spec(item: str | DatasetSpec) -> DatasetSpec:
    """A config entry as a DatasetSpec; its source checked for a known form."""
    spec = item if isinstance(item, DatasetSpec) else DatasetSpec(source=item)
    kind, _, rest = spec.source.partition(":")
    if spec.source != SYNTHETIC and (kind not in LOADERS or not rest):
        raise ValueError(f"eval dataset {spec.source!r}: expected {SYNTHETIC!r} or one of "
                         f"{', '.join(p + ':PATH' for p in LOADERS)}")
    return spec


def dataset_names(choice: str | Sequence[str | DatasetSpec]) -> tuple[str | DatasetSpec, ...]:
    """`eval.datasets` as a tuple ('auto' or a single source alone become one-item tuples)."""
    return (choice,) if isinstance(choice, str) else tuple(choice)


def resolve_sources(choice: str | Sequence[str | DatasetSpec], pool_formats: Sequence[str], world: WorldConfig
                    ) -> tuple[tuple[DatasetSource, ...], str | None]:
    """(sources to score on, why there are none or None). Raises ValueError for an unknown form, or for the
    synthetic sets named on a pool that is not the synthetic world."""
    synthetic_pool = bool(pool_formats) and all(f == "synthetic" for f in pool_formats)
    items = dataset_names(choice)
    if AUTO in items:
        if len(items) > 1:
            raise ValueError(f"eval.datasets: {AUTO!r} stands alone, got {list(items)}")
        items = (SYNTHETIC,) if synthetic_pool else ()
    specs = [as_spec(item) for item in items]
    if any(s.source == SYNTHETIC for s in specs) and not synthetic_pool:
        raise ValueError(f"eval.datasets names 'synthetic' but the pool is {'+'.join(pool_formats)}, not the "
                         "synthetic world: a run on real data is never scored on the synthetic world")
    if not specs:
        reason = ("the pool is not the synthetic world (sources: " + "+".join(pool_formats) + ") and eval.datasets "
                  "names no datasets of its own" if AUTO in dataset_names(choice) else "eval.datasets is empty")
        return (), reason
    return tuple(DatasetSource(s, world if s.source == SYNTHETIC else None) for s in specs), None


def build_datasets(source: DatasetSource, cfg: EvalConfig) -> list[tuple[EvalDataset, tuple[str, ...]]]:
    """The source's datasets, each with the tasks to run on it (the spec's, else eval.tasks)."""
    spec = source.spec
    if spec.source == SYNTHETIC:
        datasets = synthetic_datasets(source.world, cfg)
        if spec.name:
            raise ValueError("the synthetic sets keep their own names (synthetic-shapes, ...); drop 'name'")
    else:
        datasets = load_dataset(spec, cfg)
    chosen = [(ds, tasks_for(ds, spec.tasks or cfg.tasks, explicit=False)) for ds in datasets]
    ran = {task for _, tasks in chosen for task in tasks}
    if unfit := [task for task in spec.tasks if task not in ran]:  # asked of this dataset by name: must run
        kinds = ", ".join(sorted({type(ds).__name__ for ds in datasets}))
        raise ValueError(f"eval dataset {spec.source!r} ({kinds}) cannot run {unfit[0]!r}")
    return [(ds, tasks) for ds, tasks in chosen if tasks]


def eval_key_config(cfg: EvalConfig, sources: Sequence[DatasetSource]) -> tuple:
    """What the eval stage's key hashes: the suite settings and what the datasets resolved to (each spec, and
    the world config for the synthetic sets), not how they were named, so `auto` and `[synthetic]` on a
    synthetic pool are one artifact. A dataset's files are taken as immutable under their path, as ingest
    takes its sources; `curaclip eval`'s feature cache, keyed on file sizes and times, is not."""
    settings = json.loads(json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k != "datasets"}))
    return (settings, *((dataclasses.asdict(s.spec), s.world) for s in sources))

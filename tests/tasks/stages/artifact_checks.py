"""Checks the stage tests share on a stage's artifact (its manifest, its parts' columns, its counts)."""

import json
from pathlib import Path

import pyarrow.parquet as pq

from curation import partitions as P
from curation.schema import SAMPLE_SCHEMA, STAGE_COLUMNS
from flows.config import STAGES as ORDER
from tasks.store import layout as L


def manifest(ref) -> dict:
    return json.loads((Path(ref.path) / L.MANIFEST).read_text())


def columns(ref) -> list[str]:
    return pq.read_schema(P.list_parts(Path(ref.path) / L.PARTS)[0]).names


def expected_columns(stage: str) -> list[str]:
    names = list(SAMPLE_SCHEMA.names)
    for earlier in ORDER[: ORDER.index(stage) + 1]:
        names += [f.name for f in STAGE_COLUMNS.get(earlier, ()) if earlier != "shard"]
    return names


def reconciles(ref) -> bool:
    c = ref.counts
    return c["rows_in"] == c["rows_out"] + c.get("filtered", 0) + c.get("quarantined", 0)



"""The data contract (docs/architecture.md, "Data contract"): the sample table's first columns, the one table
of dropped rows (quarantined and filtered alike), and the columns each stage adds. A stage adds columns and
never renames them; `tests/flows/test_pipeline.py` checks every stage's parts against STAGE_COLUMNS."""

from __future__ import annotations

import pyarrow as pa

SAMPLE_SCHEMA = pa.schema([
    ("uid", pa.string()), ("text", pa.string()), ("image", pa.binary()), ("image_sha256", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()),
])
"""The raw pool's sample table, as ingest writes it: every later stage's parts start with these columns."""

DROPPED_SCHEMA = pa.schema([("uid", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
                            ("detail", pa.string())])
"""A dropped row: which sample, which stage dropped it, why (a reason name), and the measured value or the first
occurrence ('3 words, 14 characters', 'first seen as uid u00'). Quarantine (bad input) and filtered (a filter's
decision) tables both have this schema."""

STAGE_COLUMNS: dict[str, tuple[pa.Field, ...]] = {
    "curate": (pa.field("matched_entries", pa.list_(pa.int32())), pa.field("keep_prob", pa.float32())),
    "embed": (pa.field("image_emb", pa.list_(pa.float16())), pa.field("text_emb", pa.list_(pa.float16()))),
    "cluster": (pa.field("cluster_labels", pa.list_(pa.int32())), pa.field("cluster_scores", pa.list_(pa.float32())),
                pa.field("neighbours", pa.list_(pa.string()))),
    "rewrite": (pa.field("rewrites", pa.list_(pa.string())),),
    "longcap": (pa.field("long_caption", pa.string()), pa.field("long_captions", pa.list_(pa.string())),
                pa.field("long_caption_sentences", pa.list_(pa.string())), pa.field("synthetic_caption", pa.string())),
    "shard": (pa.field("shard", pa.string()), pa.field("key", pa.string())),
}
"""The columns each stage adds to the sample table, in order (the shard stage's are in its Parquet sidecars)."""

"""The plain, single-table form of the filter stage: the parity reference its partitioned production path
(curation.partitions.FilterKeys -> global_filter_reasons -> ApplyReasons) is tested against."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.filters import FilterConfig, duplicate_reasons, row_details, row_filters


def apply_filters(table: pa.Table, cfg: FilterConfig) -> tuple[pa.Table, pa.Table]:
    """(kept rows, removed rows as ``uid, reason, detail``): every input row is in exactly one.

    Row rules first; duplicates are then looked for among the rows that passed them, so a row too short to
    keep never makes a later copy of its image count as a duplicate."""
    keep, reasons = row_filters(table, cfg)
    details = row_details(table, reasons)
    passed = np.flatnonzero(keep)
    dup_reasons, dup_details = duplicate_reasons(table.take(pa.array(passed, pa.int64())), cfg)
    for i, reason, detail in zip(passed.tolist(), dup_reasons, dup_details, strict=True):
        reasons[i], details[i] = reason, detail
    keep = np.array([r is None for r in reasons], dtype=bool)
    removed = np.flatnonzero(~keep).tolist()
    return table.filter(pa.array(keep)), pa.table({
        "uid": pa.array([table.column("uid")[i].as_py() for i in removed], pa.string()),
        "reason": pa.array([reasons[i] for i in removed], pa.string()),
        "detail": pa.array([details[i] for i in removed], pa.string())})

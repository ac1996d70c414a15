"""The curate stage: MetaCLIP substring matching and balancing (the metadata chosen by curation.metadata)."""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from curation import partitions as P
from curation.balancing import CurateConfig, curate_key_config, entry_count_table, entry_probs
from curation.matching import EntryMatcher
from curation.metadata import choose_metadata, save_metadata
from curation.statistics import distribution_stats, top_entries
from tasks.stages.common import (
    CODE_VERSIONS,
    RunContext,
    StageRun,
    discard,
    fetched,
    list_parts,
    part_path,
    parts_of,
    passthrough_counts,
    run_stage,
    stored,
)
from tasks.store import layout as L
from tasks.store.artifacts import ArtifactRef


def _caption_counts(run: StageRun, parts: list[str]) -> tuple[Counter, Counter]:
    """Word and pair counts of every part's captions, counted in parallel (the metadata builder's input)."""
    outs = [part_path(run.tmp, L.CAPTION_COUNTS, i) for i in range(len(parts))]
    run.map("caption_counts", [P.CaptionCounts(p, out) for p, out in zip(parts, outs)])
    counts = P.read_caption_counts(fetched(*outs))
    discard(run, "caption_counts", run.tmp / L.CAPTION_COUNTS)
    return counts


@task(name="curate", cache_policy=NO_CACHE, persist_result=False)
def curate(ctx: RunContext, cfg: CurateConfig, upstream: ArtifactRef, synthetic_only: bool = True) -> ArtifactRef:
    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        tmp, parts = run.tmp, parts_of(upstream)
        out = partial(part_path, tmp)
        entries, manifest["metadata"] = choose_metadata(cfg.metadata, synthetic_only, cfg.builder,
                                                        lambda: _caption_counts(run, parts))
        save_metadata(entries, str(tmp / L.METADATA))
        stored(tmp / L.METADATA)
        matcher = EntryMatcher(entries)  # built once, shared by every part's unit
        match = [P.MatchPart(p, matcher, out(L.MATCHED, i), out(L.MATCH_COUNTS, i, ".npy"))
                 for i, p in enumerate(parts)]
        run.map("match", match)
        before = P.sum_arrays(fetched(*[u.counts for u in match]))
        probs = entry_probs(before, cfg.t)
        balance = [P.BalancePart(u.source, u.matched, probs, cfg.seed, out(L.PARTS, i), out(L.FILTERED, i),
                                 out(L.KEPT_COUNTS, i, ".npy")) for i, u in enumerate(match)]
        results = run.map("balance", balance)
        after = P.sum_arrays(fetched(*[u.counts_after for u in balance]))
        P.write_table(entry_count_table(entries, before, after, probs), tmp / L.ENTRY_COUNTS)
        manifest["counts"] = passthrough_counts(results)
        manifest["reasons"] = {"filtered": P.reason_counts(fetched(*list_parts(tmp / L.FILTERED)))}
        manifest["distribution"] = distribution_stats(before, after, cfg.t)
        manifest["top_entries"] = top_entries(entries, before, after, n=20)
        (tmp / L.CURATE_STATS).write_text(json.dumps(manifest["distribution"]))
        stored(tmp / L.ENTRY_COUNTS, tmp / L.CURATE_STATS)
        discard(run, "balance", tmp / L.KEPT_COUNTS)
        discard(run, "match", tmp / L.MATCH_COUNTS)

    return run_stage(ctx, "curate", CODE_VERSIONS["curate"], curate_key_config(cfg, synthetic_only), [upstream],
                     compute)

"""The cluster stage on the in-process executor: centers, labels, whole clusters per part, sizes, agreement with
the synthetic world's classes; and, on the same embeddings, SemDeDup, the CLIP-score refusal and neighbours."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import cluster_units as C
from curation import partitions as P
from curation.cluster_units import CLIP_SCORE_REASON, IMAGE_FILTER_REASON, SEMDEDUP_REASON
from curation.embedding_filters import ClipScoreConfig, ImageFilterConfig
from curation.semdedup import SemDedupConfig
from tasks.stages import cluster
from tasks.stages.common import RunContext
from tasks.store import layout as L
from tasks.store.artifacts import ArtifactRef
from tests.tasks.stages.artifact_checks import columns, expected_columns, manifest, reconciles
from training.jobs import float16_lists


def parts_table(ref) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in P.list_parts(Path(ref.path) / L.PARTS)])


def test_cluster_on_the_local_executor(local_run):
    cfg, refs = local_run
    ref = refs["cluster"]
    assert columns(ref) == expected_columns("cluster")
    centers = np.load(Path(ref.path) / L.CENTERS)
    assert centers.dtype == np.float32 and centers.shape[0] == cfg.cluster.num_centers
    assert np.allclose(np.linalg.norm(centers, axis=1), 1.0, atol=1e-5)
    labels = parts_table(ref).column("cluster_labels").to_pylist()
    assert all(len(row) == cfg.cluster.top_k and all(0 <= c < cfg.cluster.num_centers for c in row) for row in labels)
    sizes = pq.read_table(Path(ref.path) / L.CLUSTER_SIZES)
    assert sizes.num_rows == cfg.cluster.num_centers and sum(sizes.column("size").to_pylist()) == ref.counts["rows_in"]
    assert reconciles(ref) and ref.counts["rows_out"] == refs["embed"].counts["rows_out"]  # no filter is on


def test_input_order_is_kept_by_default(local_run):
    cfg, refs = local_run
    assert cfg.cluster.order == "input"  # the smoke preset trains ALIP: no neighbours needed in the stream
    assert parts_table(refs["cluster"]).column("uid").to_pylist() == parts_table(refs["embed"]).column(
        "uid").to_pylist()
    assert not set(C.ORIGIN) & set(parts_table(refs["cluster"]).column_names)
    assert set(manifest(refs["cluster"])["agreement"]) == {"shape", "colour", "background"}


def test_cluster_order_puts_whole_clusters_in_each_part_in_center_order(local_run, tmp_path):
    cfg, refs = local_run
    ctx = RunContext(workdir=str(tmp_path), run_id="order", executor="local", resources=cfg.resources)
    ref = cluster.cluster.fn(ctx, dataclasses.replace(cfg.cluster, order="cluster"), refs["embed"], cfg.embed)
    assert manifest(ref)["order"] == "cluster" and ref.counts["rows_out"] == refs["embed"].counts["rows_out"]
    seen: dict[int, int] = {}
    for i, path in enumerate(P.list_parts(Path(ref.path) / L.PARTS)):
        top1 = [row[0] for row in pq.read_table(path).column("cluster_labels").to_pylist()]
        assert top1 == sorted(top1)  # contiguous clusters: neighbours stay close in the shards' stream
        for c in set(top1):
            assert seen.setdefault(c, i) == i  # a cluster lives in one part
    assert sorted(parts_table(ref).column("uid").to_pylist()) == sorted(parts_table(refs["embed"]).column(
        "uid").to_pylist())


def test_clusters_agree_with_planted_classes_far_above_random(local_run, tmp_path):
    cfg, refs = local_run
    upstream, _ = planted_embed_artifact(refs, tmp_path / "embed", duplicates=0)
    uids = parts_table(upstream).column("uid").to_pylist()
    objects = pa.array([[{"shape": f"shape{i % 8}", "colour": "red"}] for i in range(len(uids))])
    truth = pa.table({"uid": uids, "objects": objects, "background": ["plain"] * len(uids)})
    P.write_table(truth, tmp_path / "ingest" / L.TRUTH / P.part_name(0))
    truth_ref = ArtifactRef(stage="ingest", key="planted", path=str(tmp_path / "ingest"))
    ctx = RunContext(workdir=str(tmp_path / "work"), run_id="agree", executor="local", resources=cfg.resources)
    run_cfg = dataclasses.replace(cfg.cluster, num_centers=8, nredo=5)
    shape = manifest(cluster.cluster.fn(ctx, run_cfg, upstream, cfg.embed, truth_ref))["agreement"]["shape"]
    assert shape["classes"] == 8 and shape["nmi"] > 0.9 and shape["purity"] > 0.9  # the 8 planted directions
    assert shape["nmi_random"] < 0.2 and shape["purity_random"] < 0.4


def planted_embed_artifact(refs, folder: Path, duplicates: int) -> tuple[ArtifactRef, set[tuple[str, str]]]:
    """The embed artifact's rows with embeddings of a known answer: 8 well-separated directions with spread inside
    each (cosines within a cluster about 0.8), and `duplicates` rows (at most 8, so no copy is copied again) made
    near copies (cosine > 0.999) of the row 8 before them, in the same cluster. Returns the artifact and the
    planted (copy, original) uid pairs: SemDeDup must drop one of each pair and nothing else."""
    rng = np.random.default_rng(0)
    table = parts_table(refs["embed"])
    n, d = table.num_rows, 32
    directions = np.linalg.qr(rng.normal(size=(d, d)))[0][:8]  # (8, D) orthonormal
    emb = directions[np.arange(n) % 8] + 0.45 * rng.normal(size=(n, d)) / np.sqrt(d)
    uids = table.column("uid").to_pylist()
    planted = set()
    for i in range(8, 8 + duplicates):
        emb[i] = emb[i - 8] + 1e-3 * rng.normal(size=d)  # the same cluster (i - 8 = i mod 8), a near copy
        planted.add((uids[i], uids[i - 8]))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    for column in ("image_emb", "text_emb"):
        index = table.schema.get_field_index(column)
        table = table.set_column(index, column, float16_lists(emb))
    for i, start in enumerate(range(0, n, 100)):
        P.write_table(table.slice(start, 100), folder / L.PARTS / P.part_name(i))
    ref = ArtifactRef(stage="embed", key="planted", path=str(folder), counts={"rows_out": n})
    return ref, planted


def test_semdedup_and_neighbours_on_embeddings_with_planted_duplicates(local_run, tmp_path):
    cfg, refs = local_run
    upstream, planted = planted_embed_artifact(refs, tmp_path / "embed", duplicates=8)
    ctx = RunContext(workdir=str(tmp_path / "work"), run_id="semdedup", executor="local", resources=cfg.resources)
    run_cfg = dataclasses.replace(cfg.cluster, neighbours=3,
                                  semdedup=SemDedupConfig(enabled=True, eps=0.01, report_eps=(0.001, 0.01, 0.5)))
    ref = cluster.cluster.fn(ctx, run_cfg, upstream, cfg.embed)
    record = manifest(ref)
    assert reconciles(ref) and ref.counts["filtered"] == 8 == record["reasons"]["filtered"][SEMDEDUP_REASON]
    assert record["semdedup"]["dropped_by_eps"][repr(0.01)] == 8 and record["semdedup"]["dropped_by_eps"]["0.5"] > 8
    pairs = pa.concat_tables([pq.read_table(p) for p in P.list_parts(Path(ref.path) / L.SEMDEDUP_PAIRS)])
    assert {frozenset(p) for p in zip(pairs.column("uid").to_pylist(), pairs.column("duplicate_of").to_pylist())} \
        == {frozenset(p) for p in planted}  # each copy pair loses one of its two (SemDeDup keeps the "hard" one)
    table = parts_table(ref)
    assert not set(table.column("uid").to_pylist()) & set(pairs.column("uid").to_pylist())
    top1 = {u: row[0] for u, row in zip(table.column("uid").to_pylist(), table.column("cluster_labels").to_pylist())}
    neighbours = table.column("neighbours").to_pylist()
    assert all(len(near) == 3 for near in neighbours)
    for uid, near in zip(table.column("uid").to_pylist(), neighbours):
        assert uid not in near and all(top1[n] == top1[uid] for n in near)
    assert "agreement" not in record  # no truth given


def test_the_clip_score_filter_refuses_the_bootstrap_model(local_run, tmp_path):
    cfg, refs = local_run
    ctx = RunContext(workdir=str(tmp_path), run_id="clip", executor="local", resources=cfg.resources)
    run_cfg = dataclasses.replace(cfg.cluster, clip_score=ClipScoreConfig(enabled=True, fraction=0.3))
    with pytest.raises(ValueError, match="embed.checkpoint"):
        cluster.cluster.fn(ctx, run_cfg, refs["embed"], cfg.embed)
    assert json.loads((Path(refs["embed"].path) / L.MANIFEST).read_text())["model"]["source"] != "config"


def test_the_image_based_filter_keeps_the_clusters_nearest_the_target_images(local_run, tmp_path):
    cfg, refs = local_run
    table = parts_table(refs["cluster"])
    top1 = np.array([row[0] for row in table.column("cluster_labels").to_pylist()])
    target_cluster = int(np.bincount(top1).argmax())
    target = tmp_path / "target"
    target.mkdir()
    for i in np.flatnonzero(top1 == target_cluster)[:6]:
        (target / f"{i}.png").write_bytes(table.column("image")[int(i)].as_py())
    ctx = RunContext(workdir=str(tmp_path / "work"), run_id="image", executor="local", resources=cfg.resources)
    run_cfg = dataclasses.replace(cfg.cluster, image_filter=ImageFilterConfig(enabled=True, target=str(target)))
    ref = cluster.cluster.fn(ctx, run_cfg, refs["embed"], cfg.embed)
    record = manifest(ref)
    assert record["image_filter"]["target_images"] == 6 and reconciles(ref)
    kept = parts_table(ref)
    kept_clusters = {row[0] for row in kept.column("cluster_labels").to_pylist()}
    assert target_cluster in kept_clusters  # the target images are pool images of that cluster
    assert len(kept_clusters) == record["image_filter"]["kept_clusters"]
    sizes = pq.read_table(Path(ref.path) / L.CLUSTER_SIZES).column("size").to_numpy()
    assert kept.num_rows == sizes[sorted(kept_clusters)].sum()  # whole clusters kept, the others dropped
    assert record["reasons"]["filtered"] == {IMAGE_FILTER_REASON: ref.counts["rows_in"] - kept.num_rows}


def test_the_clip_score_filter_keeps_the_top_fraction_of_the_pool(local_run, tmp_path):
    cfg, refs = local_run
    upstream, _ = planted_embed_artifact(refs, tmp_path / "embed", duplicates=0)
    table = parts_table(upstream)
    rng = np.random.default_rng(1)
    image = np.array(table.column("image_emb").to_pylist(), np.float32)
    noise = rng.normal(size=image.shape)
    weights = np.linspace(0.0, 1.0, len(image))[:, None]  # row i's caption drifts further from its image
    text = (1 - weights) * image + weights * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    table = table.set_column(table.schema.get_field_index("text_emb"), "text_emb", float16_lists(text))
    for i, start in enumerate(range(0, table.num_rows, 100)):
        P.write_table(table.slice(start, 100), tmp_path / "embed" / L.PARTS / P.part_name(i))
    scores = (np.array(table.column("image_emb").to_pylist(), np.float32)
              * np.array(table.column("text_emb").to_pylist(), np.float32)).sum(axis=1)
    expected = set(np.array(table.column("uid").to_pylist())[scores >= np.sort(scores)[::-1][int(0.3 * len(scores))]])
    ctx = RunContext(workdir=str(tmp_path / "work"), run_id="clip", executor="local", resources=cfg.resources)
    embed_cfg = dataclasses.replace(cfg.embed, checkpoint=str(tmp_path / "pretrained.pt"))  # as if pretrained
    run_cfg = dataclasses.replace(cfg.cluster, clip_score=ClipScoreConfig(enabled=True, fraction=0.3))
    ref = cluster.cluster.fn(ctx, run_cfg, upstream, embed_cfg)
    kept = set(parts_table(ref).column("uid").to_pylist())
    assert kept == expected and reconciles(ref)  # DataComp's rule: the score at index int(0.3 N), ties kept
    assert manifest(ref)["reasons"]["filtered"] == {CLIP_SCORE_REASON: len(scores) - len(expected)}


def test_an_empty_part_is_counted_and_passes_through(local_run, tmp_path):
    cfg, refs = local_run
    upstream, _ = planted_embed_artifact(refs, tmp_path / "embed", duplicates=0)
    empty = parts_table(upstream).slice(0, 0)
    P.write_table(empty, tmp_path / "embed" / L.PARTS / P.part_name(99))  # curate can leave a part empty
    ctx = RunContext(workdir=str(tmp_path / "work"), run_id="empty", executor="local", resources=cfg.resources)
    ref = cluster.cluster.fn(ctx, cfg.cluster, upstream, cfg.embed)
    assert reconciles(ref) and ref.counts["rows_in"] == ref.counts["rows_out"] == parts_table(upstream).num_rows

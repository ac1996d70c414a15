import json
import os
import threading
from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch
import webdataset as wds

from training.config import TrainConfig
from training.data import (
    LIST_FIELDS,
    BatchFields,
    SampleWindow,
    ShardData,
    attach_neighbours,
    batch_fields,
    collate,
    decode_image,
    label_matrix,
    laclip_text,
    make_sample,
    neighbour_candidates,
    pick_neighbour,
    row_order,
    shard_loader,
    shard_passes,
    table_loader,
)
from training.models import create_model, image_transform
from training.objectives.mlcd import MLCDConfig
from training.objectives.negatives import NegativeVocabulary
from training.objectives.negclip import NegCLIPConfig

from .conftest import colour_rows


@pytest.fixture
def micro(micro_model):
    model, _, tokenizer = create_model(micro_model)
    return tokenizer, image_transform(model, True), image_transform(model, False)


def write_shards(folder, rows, per_shard):
    """The shard stage's layout: {shard:05d}.tar with <key>.png/.txt/.json, and sizes.json."""
    sizes = {}
    for shard, start in enumerate(range(0, len(rows), per_shard)):
        name = f"{shard:05d}.tar"
        with wds.TarWriter(str(folder / name)) as sink:
            for i, row in enumerate(rows[start:start + per_shard]):
                meta = {k: v for k, v in row.items() if k != "image"}
                sink.write({"__key__": f"{shard:05d}{i:04d}", "png": row["image"], "txt": row["text"],
                            "json": json.dumps(meta).encode()})
        sizes[name] = len(rows[start:start + per_shard])
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return ShardData.from_folder(folder)


def check_batch(batch, size, context):
    assert batch["image"].shape == (size, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["text"].shape == (size, context) and batch["text"].dtype == torch.int64
    for key in LIST_FIELDS:
        assert len(batch[key]) == size, key
    assert all(t.startswith("a ") for t in batch["raw_text"])
    assert all(isinstance(r, list) for r in batch["rewrites"]) and all(len(c) == 2 for c in batch["cluster_labels"])


def test_table_loader_batches_carry_every_caption_field(micro, colour_table):
    tokenizer, train_tf, val_tf = micro
    batches = list(table_loader(colour_table, 16, tokenizer, True, seed=0, transform=train_tf))
    assert len(batches) == 4
    for b in batches:
        check_batch(b, 16, 16)
    assert sorted(u for b in batches for u in b["uid"]) == colour_table.column("uid").to_pylist()
    evals = list(table_loader(colour_table.slice(0, 20), 8, tokenizer, False, seed=0, transform=val_tf))
    assert [len(b["uid"]) for b in evals] == [8, 8, 4]
    assert [u for b in evals for u in b["uid"]] == colour_table.column("uid").to_pylist()[:20]


def test_table_loader_accepts_the_bootstrap_table_of_image_and_text_only(micro, colour_table):
    tokenizer, train_tf, _ = micro
    table = colour_table.select(["image", "text"])
    batch = next(iter(table_loader(table, 8, tokenizer, True, seed=1, transform=train_tf)))
    check_batch_core = batch["image"].shape == (8, 3, 32, 32) and batch["text"].shape == (8, 16)
    assert check_batch_core and batch["rewrites"] == [[]] * 8 and all(u.isdigit() for u in batch["uid"])


def test_table_loader_is_seeded_and_resumes_mid_epoch(micro, colour_table):
    tokenizer, _, val_tf = micro
    first = [b["uid"] for b in table_loader(colour_table, 16, tokenizer, True, seed=5, transform=val_tf)]
    again = [b["uid"] for b in table_loader(colour_table, 16, tokenizer, True, seed=5, transform=val_tf)]
    later = [b["uid"] for b in table_loader(colour_table, 16, tokenizer, True, seed=5, transform=val_tf,
                                            start_batch=2)]
    assert first == again and later == first[2:]


def test_missing_or_null_fields_get_defaults(micro):
    tokenizer, _, val_tf = micro
    rows = colour_rows(2)
    rows[0]["rewrites"], rows[0]["long_caption"], rows[1]["text"] = None, None, None
    batch = collate([make_sample(r["image"], r["text"], r, val_tf, "laclip", np.random.default_rng(0))
                     for r in rows], tokenizer)
    assert batch["rewrites"][0] == [] and batch["long_caption"][0] == "" and batch["raw_text"][1] == ""
    assert batch["caption"][0] == rows[0]["text"]


def test_row_order_splits_ranks_without_overlap():
    ranks = [np.concatenate(row_order(103, 10, True, 0, r, 2)) for r in range(2)]
    assert len(set(ranks[0]) & set(ranks[1])) == 0 and all(len(r) == 50 for r in ranks)
    assert [len(b) for b in row_order(5, 10, True, 0)] == [5]  # less than a batch: one short batch


def test_shard_loader_batches_from_two_tars(micro, tmp_path):
    tokenizer, train_tf, val_tf = micro
    rows = colour_rows(24)
    data = write_shards(tmp_path, rows, 12)
    assert data.num_samples == 24 and [u.rsplit("/", 1)[1] for u in data.urls] == ["00000.tar", "00001.tar"]
    loader = shard_loader(data.urls, 8, data.num_samples, tokenizer, True, workers=0, seed=0, transform=train_tf,
                          shuffle_buffer=16)
    batches = list(loader)
    assert len(batches) == 3
    for b in batches:
        check_batch(b, 8, 16)
    evals = list(shard_loader(data.urls, 10, data.num_samples, tokenizer, False, workers=0, seed=0,
                              transform=val_tf))
    assert [len(b["uid"]) for b in evals] == [10, 10, 4]
    assert [u for b in evals for u in b["uid"]] == [r["uid"] for r in rows]
    assert evals[0]["long_caption"][0] == rows[0]["long_caption"]


def test_shard_loader_with_a_worker_process_covers_the_data(micro, tmp_path):
    tokenizer, _, val_tf = micro
    rows = colour_rows(32)
    data = write_shards(tmp_path, rows, 8)
    # A one-sample buffer keeps stream order, so an epoch's 32 samples are exactly the first shard pass.
    loader = shard_loader(data.urls, 8, 32, tokenizer, True, workers=1, seed=3, transform=val_tf, shuffle_buffer=1)
    uids = Counter(u for b in loader for u in b["uid"])
    assert sum(uids.values()) == 32 and len(uids) == 32


def test_shard_loader_workers_survive_the_exit_hooks_of_the_parents_threads(micro, tmp_path):
    """A thread in the training process (Prefect's log and event services: prefect/_internal/concurrency/
    services.py, QueueService._at_exit) registers an exit hook that fails in a forked child, where its thread
    is gone; a DataLoader worker that ran it exited with code 1 mid-epoch."""
    tokenizer, _, val_tf = micro
    data = write_shards(tmp_path, colour_rows(16), 8)

    def parent_only():
        assert os.getpid() == parent, "a parent thread's exit hook ran in a forked worker"

    parent = os.getpid()
    threading._register_atexit(parent_only)
    hook = threading._threading_atexits[-1]
    try:
        for _ in range(2):
            loader = shard_loader(data.urls, 8, 16, tokenizer, True, workers=2, seed=3, transform=val_tf)
            assert sum(len(b["uid"]) for b in loader) == 16
    finally:
        threading._threading_atexits.remove(hook)


def test_shard_passes_permute_every_shard_per_pass_and_split_ranks():
    urls = [f"s{i}" for i in range(6)]
    stream = shard_passes(urls, 0, True, 0, 1)
    first, second = [next(stream)["url"] for _ in range(6)], [next(stream)["url"] for _ in range(6)]
    assert sorted(first) == sorted(second) == urls and first != second
    halves = [[next(s)["url"] for _ in range(3)] for s in (shard_passes(urls, 0, True, r, 2) for r in range(2))]
    assert sorted(halves[0] + halves[1]) == urls
    lone = shard_passes(urls[:1], 0, True, 1, 2)  # fewer shards than ranks: never runs dry
    assert [next(lone)["url"] for _ in range(3)] == ["s0"] * 3


def test_laclip_draws_uniformly_and_falls_back_on_short_rewrites():
    sample = {"raw_text": "a red square", "rewrites": ["a square in red", "red"]}
    rng = np.random.default_rng(0)
    drawn = Counter(laclip_text(sample, rng) for _ in range(3000))
    assert set(drawn) == {"a red square", "a square in red"}
    assert drawn["a red square"] == pytest.approx(2000, abs=150)  # original + the 1-word rewrite's fallback


def test_table_loader_laclip_sampler_tokenizes_the_drawn_caption(micro, colour_table):
    tokenizer, _, val_tf = micro
    batch = next(iter(table_loader(colour_table, 64, tokenizer, True, seed=0, transform=val_tf,
                                   text_sampler="laclip")))
    assert any(c != r for c, r in zip(batch["caption"], batch["raw_text"], strict=True))
    assert torch.equal(batch["text"], tokenizer(batch["caption"]))


# --- the objectives' extra inputs ----------------------------------------------------------------------


ALL_FIELDS = BatchFields(synthetic=True, num_subcaptions=3, negatives=("word_shuffle", "attribute_swap"),
                         vocabulary=NegativeVocabulary(), num_labels=2)


def test_batch_fields_follow_the_objectives(tmp_path):
    assert batch_fields(TrainConfig()) == BatchFields()
    (tmp_path / "metadata.json").write_text('["chevron", "left of"]')
    negclip = NegCLIPConfig(kinds=("attribute_swap",), noun_words=("Gizmo",),
                            metadata_file=str(tmp_path / "metadata.json"))
    fields = batch_fields(TrainConfig(objectives={"dreamlip": 1.0, "negclip": 1.0, "mlcd": 1.0}, negclip=negclip,
                                      mlcd=MLCDConfig(num_centers=8, top_k=2)))
    assert fields.num_subcaptions == 6 and fields.negatives == ("attribute_swap",) and fields.num_labels == 2
    assert not fields.synthetic and {"gizmo", "chevron"} <= fields.vocabulary.nouns
    assert "left of" not in fields.vocabulary.nouns
    assert batch_fields(TrainConfig(objectives={"alip": 1.0})) == BatchFields(synthetic=True)
    no_metadata = batch_fields(TrainConfig(objectives={"negclip": 1.0}, negclip=replace(negclip, use_metadata=False)))
    assert "chevron" not in no_metadata.vocabulary.nouns


def test_collate_builds_every_extra_input(micro):
    tokenizer, _, val_tf = micro
    rows = colour_rows(4)
    rows[1]["long_caption"], rows[2]["synthetic_caption"], rows[3]["cluster_labels"] = "", None, [3]
    rows[3]["text"] = "square"  # one word: neither shuffle nor swap can make a negative of it
    samples = [make_sample(r["image"], r["text"], r, val_tf, "original", np.random.default_rng(i), ALL_FIELDS)
               for i, r in enumerate(rows)]
    batch = collate(samples, tokenizer, ALL_FIELDS)
    assert batch["synthetic_text"].shape == (4, 16) and batch["subcaption_text"].shape == (12, 16)
    assert torch.equal(batch["synthetic_text"][2], batch["text"][2])  # no synthetic caption: the caption
    assert set(samples[0]["subcaptions"]) <= {"A red square", "It sits on grey"}  # 3 draws of 2 sentences
    assert samples[1]["subcaptions"] == [rows[1]["text"]] * 3 and batch["subcaption_ids"][1].tolist() == [0, 0, 0]
    assert batch["subcaption_ids"].shape == (4, 3)
    (negative,) = samples[0]["negatives"]  # one attribute word: only the word-order shuffle is possible
    assert sorted(negative.split()) == sorted("a red square".split()) and negative != "a red square"
    assert batch["negative_text"].shape == (4, 16)  # one negative drawn per caption, as NegCLIP draws
    assert batch["negative_mask"].tolist() == [[True]] * 3 + [[False]]
    assert batch["cluster_label_ids"].tolist() == [[0, 1], [1, 2], [2, 3], [3, -1]]


def test_attribute_swaps_use_the_configured_vocabulary(micro):
    tokenizer, _, val_tf = micro
    row = colour_rows(1)[0]
    row["text"] = "a small red circle above a large blue square"
    fields = BatchFields(negatives=("attribute_swap",), vocabulary=NegativeVocabulary())
    sample = make_sample(row["image"], row["text"], row, val_tf, "original", np.random.default_rng(0), fields)
    swapped = sample["negatives"][0].split()
    assert swapped != row["text"].split() and sorted(swapped) == sorted(row["text"].split())


def test_label_matrix_pads_and_truncates():
    assert label_matrix([[4, 5, 6], [], [7]], 2).tolist() == [[4, 5], [-1, -1], [7, -1]]


def test_resumed_table_batches_draw_the_same_subcaptions(micro, colour_table):
    tokenizer, _, val_tf = micro
    fields = BatchFields(num_subcaptions=1, negatives=("word_shuffle",), vocabulary=NegativeVocabulary())

    def draws(**kw):
        return [(b["uid"], b["negative_text"].tolist(), b["subcaption_ids"].tolist())
                for b in table_loader(colour_table, 16, tokenizer, True, seed=5, transform=val_tf, fields=fields, **kw)]

    full = draws()
    assert draws(start_batch=2) == full[2:] and draws(start_batch=1, stop_batch=3) == full[1:3]


# --- NegCLIP's hard negative images ---------------------------------------------------------------------

PAIRS = BatchFields(neighbour_choices=3, neighbour_lookups=3, neighbour_window=8)


def raw(i: int, neighbours: list[str]) -> dict:
    """A raw tar sample as tarfile_to_samples yields it (no image: the window never decodes)."""
    return {"__key__": f"k{i}", "json": json.dumps({"uid": f"u{i}", "neighbours": neighbours}).encode()}


def attached(raws, fields=PAIRS, seed=0):
    return {r["__meta__"]["uid"]: (r["__neighbour__"]["__meta__"]["uid"] if "__neighbour__" in r else None)
            for r in attach_neighbours(raws, fields, seed, 0)}


def test_the_sample_window_keeps_only_the_last_samples_read():
    window = SampleWindow(3)
    for i in range(10):
        window.add(f"u{i}", {"i": i})
    assert len(window) == 3 and [u for u in ("u6", "u7", "u8", "u9") if u in window] == ["u7", "u8", "u9"]
    window.add("u7", {"i": 70})  # read again: now the newest, nothing evicted but the oldest
    window.add("u10", {"i": 10})
    assert "u8" not in window and window["u7"] == {"i": 70} and len(window) == 3


def test_neighbours_in_the_window_are_found_absent_ones_skipped():
    """Window 8: a sample leaves after 4 later ones are read, so it sees 3 samples back and 4 ahead."""
    lists = {i: [] for i in range(40)}
    lists[10] = ["gone", "u14"]  # a filtered-out uid, then one 4 ahead
    lists[11] = ["u8"]  # 3 behind
    lists[20] = ["u25"]  # 5 ahead: not read yet when u20 leaves
    lists[30] = ["u26", "u30"]  # 4 behind (evicted) and itself
    lists[39] = ["u36", "u38"]  # the stream's end: the waiting samples still leave, with what is there
    got = attached([raw(i, lists[i]) for i in range(40)])
    assert list(got) == [f"u{i}" for i in range(40)]  # every sample once, in order
    assert got["u10"] == "u14" and got["u11"] == "u8" and got["u20"] is None and got["u30"] is None
    assert got["u39"] in {"u36", "u38"}
    assert sum(v is not None for v in got.values()) == 3


def test_the_drawn_neighbour_is_uniform_among_the_first_choices_found():
    listed = ["a", "b", "c", "d", "e"]
    fields = BatchFields(neighbour_choices=2, neighbour_lookups=4, neighbour_window=8)
    assert neighbour_candidates(listed, "x", {"b", "c", "d", "e"}, fields) == ["b", "c"]  # a absent, e too far
    assert neighbour_candidates(listed, "c", {"c", "e"}, fields) == []  # itself, and e past the lookups
    negclip_rule = BatchFields(neighbour_choices=3, neighbour_lookups=3, neighbour_window=8)
    rng = np.random.default_rng(0)
    drawn = Counter(pick_neighbour(listed, "x", set(listed), negclip_rule, rng) for _ in range(3000))
    assert set(drawn) == {"a", "b", "c"} and min(drawn.values()) > 900  # random.choice over the 3 nearest


def neighbour_rows(n: int) -> list[dict]:
    """colour_rows whose first 12 samples list the sample 4 later (the same colour) after a filtered-out uid."""
    rows = colour_rows(n)
    for i, row in enumerate(rows):
        row["neighbours"] = ["gone", f"u{i + 4:04d}"] if i < 12 else ["gone"]
    return rows


def check_pairs(batch, rows, anchors, tokenizer, transform):
    """Rows B + j hold the j-th anchor's neighbour: its image, its caption as positive, its own negative."""
    by_uid, size = {r["uid"]: r for r in rows}, len(anchors)
    b = len(batch["neighbour_pair"]) - size
    assert batch["neighbour_pair"].tolist() == [False] * b + [True] * size
    assert batch["image"].shape[0] == batch["text"].shape[0] == len(batch["uid"]) == b + size
    assert batch["negative_text"].shape[0] == b + size and batch["negative_mask"].shape == (b + size, 1)
    for j, anchor in enumerate(anchors):
        uid = batch["uid"][b + j]
        assert uid in by_uid[anchor]["neighbours"] and batch["raw_text"][b + j] == by_uid[uid]["text"]
        assert torch.equal(batch["text"][b + j], tokenizer([by_uid[uid]["text"]])[0])
        assert torch.equal(batch["image"][b + j], transform(decode_image(by_uid[uid]["image"])))
        words = batch["negative_text"][b + j]
        assert sorted(words.tolist()) == sorted(batch["text"][b + j].tolist())  # a word shuffle of its caption
        assert not torch.equal(words, batch["text"][b + j])


def test_shard_batches_grow_by_the_pairs_found_each_image_with_its_own_caption(micro, tmp_path):
    tokenizer, _, val_tf = micro
    rows = neighbour_rows(16)
    data = write_shards(tmp_path, rows, 16)
    fields = replace(PAIRS, negatives=("word_shuffle",), vocabulary=NegativeVocabulary())
    # one shard and a one-sample buffer keep the stream's order: batch 1 is u0..u7, batch 2 u8..u15
    first, second = list(shard_loader(data.urls, 8, 16, tokenizer, True, workers=0, seed=0, transform=val_tf,
                                      shuffle_buffer=1, fields=fields))
    assert first["uid"][:8] == [r["uid"] for r in rows[:8]] and second["uid"][:8] == [r["uid"] for r in rows[8:]]
    check_pairs(first, rows, first["uid"][:8], tokenizer, val_tf)  # every u0..u7 finds u(i+4): 8 + 8 rows
    check_pairs(second, rows, second["uid"][:4], tokenizer, val_tf)  # u8..u11 do, u12..u15 list none: 8 + 4
    plain = next(iter(shard_loader(data.urls, 8, 16, tokenizer, True, workers=0, seed=0, transform=val_tf,
                                   shuffle_buffer=1, fields=replace(fields, neighbour_choices=0))))
    assert plain["image"].shape[0] == 8 and "neighbour_pair" not in plain


def test_table_batches_draw_pairs_from_the_neighbours_column(micro):
    tokenizer, _, val_tf = micro
    rows = neighbour_rows(16)
    table = pa.Table.from_pylist(rows)
    fields = replace(PAIRS, negatives=("word_shuffle",), vocabulary=NegativeVocabulary())
    first, second = list(table_loader(table, 8, tokenizer, False, seed=0, transform=val_tf, fields=fields))
    check_pairs(first, rows, first["uid"][:8], tokenizer, val_tf)
    check_pairs(second, rows, second["uid"][:4], tokenizer, val_tf)
    again = next(table_loader(table, 8, tokenizer, True, seed=3, transform=val_tf, fields=fields, start_batch=1))
    whole = list(table_loader(table, 8, tokenizer, True, seed=3, transform=val_tf, fields=fields))[1]
    assert again["uid"] == whole["uid"] and torch.equal(again["image"], whole["image"])  # seeded per batch
    without = next(table_loader(table.drop_columns(["neighbours"]), 8, tokenizer, False, seed=0, transform=val_tf,
                                fields=fields))
    assert without["image"].shape[0] == 8 and not bool(without["neighbour_pair"].any())


def test_hard_negative_images_are_on_for_negclip_as_negclip_trains():
    fields = batch_fields(TrainConfig(objectives={"negclip": 1.0}))
    assert (fields.neighbour_choices, fields.neighbour_lookups, fields.neighbour_window) == (3, 3, 4096)
    off = NegCLIPConfig(hard_negative_images=False)
    assert batch_fields(TrainConfig(objectives={"negclip": 1.0}, negclip=off)).neighbour_choices == 0
    assert batch_fields(TrainConfig(objectives={"siglip": 1.0})).neighbour_choices == 0
    with pytest.raises(ValueError, match="protoclip"):
        batch_fields(TrainConfig(objectives={"negclip": 1.0, "protoclip": 1.0}))
    assert batch_fields(TrainConfig(objectives={"negclip": 1.0, "protoclip": 1.0}, negclip=off)).negatives
    with pytest.raises(ValueError, match="neighbour_window"):
        NegCLIPConfig(neighbour_window=1)


@pytest.mark.parametrize("workers, skip", [(0, 3), (2, 4), (2, 3)])
def test_a_skipping_shard_stream_is_the_tail_of_the_whole_stream(micro, tmp_path, workers, skip):
    """A resumed run's stream (skip_batches = the batches already trained on) is the undisturbed stream from that
    batch on: the same samples in the same order with the same crops and captions, over whole rounds of the
    workers (skipped undecoded in them) and a partial round (dropped after the loader)."""
    tokenizer, train_tf, _ = micro
    data = write_shards(tmp_path, colour_rows(48), 12)

    def load(skip_batches):
        return list(shard_loader(data.urls, 4, 96, tokenizer, True, workers=workers, seed=7, transform=train_tf,
                                 shuffle_buffer=8, text_sampler="laclip", skip_batches=skip_batches))

    whole, tail = load(0), load(skip)
    assert len(whole) == 24 and len(tail) == 24 - skip
    for a, b in zip(whole[skip:], tail, strict=True):
        assert a["uid"] == b["uid"] and a["caption"] == b["caption"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["text"], b["text"])
    assert not torch.equal(whole[skip - 1]["image"], tail[0]["image"])  # the crops differ between batches

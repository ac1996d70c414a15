"""Training batches from the shard stage's WebDataset tars, or from an in-memory Arrow table.

Both loaders yield the same batch dict, so every objective reads one format:

- "image": (B, 3, H, W) float32, open_clip's transform (RandomResizedCrop when training);
- "text": (B, L) int64 tokens of "caption", the text drawn for this step by a TEXT_SAMPLERS entry;
- lists of length B: "uid", "raw_text" (the original alt-text), "caption", "rewrites" (LaCLIP),
  "long_caption" (DreamLIP), "synthetic_caption" (ALIP), "cluster_labels" and "cluster_scores" (MLCD);
- and only when the objectives ask for them (BatchFields): "synthetic_text" (B, L) tokens of the synthetic
  caption (ALIP); "subcaption_text" (B*K, L) tokens of K sentences of the long caption per image, with
  "subcaption_ids" (B, K) each sentence's index (DreamLIP); "negative_text" (B*M, L) tokens of M hard
  negatives per caption, with "negative_mask" (B, M) marking the real ones (NegCLIP); "cluster_label_ids"
  (B, k) the first k cluster labels, -1 padded (MLCD).

NegCLIP's hard negative images (BatchFields.neighbour_choices > 0): each sample may bring one of its nearest
images (the shard json's `neighbours`: uids, nearest first) with that image's own caption, as vinid/neg_clip's
`CsvDataset.__getitem__` does. The M pairs found (M <= B) are appended after the B samples as whole samples, so
every key above then holds B + M rows (images and captions of pair j at row B + j, each its own positive; its
negatives, sub-captions and labels likewise), in the order of the samples that brought them, and
"neighbour_pair" (B + M,) bool marks them (training.objectives.negclip tells how the loss and the other
objectives read them). The shard loader finds neighbours in a bounded window of recently read samples
(`attach_neighbours`), the table loader by random access over the table's `neighbours` column; a table without
that column, or a listed neighbour that is in neither, brings no pair.

The shard pipeline follows open_clip_train's `get_wds_dataset`: shard lists split across ranks and
dataloader workers, a sample shuffle buffer, decode, transform, batch. Shards are drawn in passes: each
pass is a fresh seeded permutation of all shards, so an epoch sees every sample about once without the
short epochs a plain split leaves, and the stream never runs dry mid-run.
"""

from __future__ import annotations

import copy
import json
import random
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import count, islice
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import torch
import webdataset as wds
from PIL import Image

from curation.images import decode_rgb
from training.config import TrainConfig
from training.models import transform_for
from training.objectives.dreamlip import sample_subcaption_ids, split_sentences
from training.objectives.negatives import NegativeVocabulary, draw_negative
from training.objectives.negclip import PAIR_KEY, NegCLIPConfig

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
"""Image members a shard sample may hold (open_clip's image_key "jpg;png;jpeg;webp")."""

META_DEFAULTS: dict[str, Any] = {
    "uid": "",
    "rewrites": [],
    "long_caption": "",
    "long_caption_sentences": [],
    "synthetic_caption": "",
    "cluster_labels": [],
    "cluster_scores": [],
}
"""Per-sample fields carried to the batch as lists, with the value used when a source lacks them."""

LIST_FIELDS = ("uid", "raw_text", "caption", "rewrites", "long_caption", "synthetic_caption",
               "cluster_labels", "cluster_scores")
"""Batch keys holding a Python list of length B (B + M with NegCLIP's hard negative image pairs)."""

NEIGHBOUR_STREAM = 1
"""Extra seed word of the neighbour draws, so they never share a random stream with the captions'."""

TEXT_INPUTS: dict[str, str] = {
    "text": "text_features",
    "synthetic_text": "synthetic_features",
    "subcaption_text": "subcaption_features",
    "negative_text": "negative_features",
}
"""Token tensors a batch may hold -> the name of their (normalised) features in the model's `out`."""

@dataclass(frozen=True)
class BatchFields:
    """The extra per-sample inputs the configured objectives read, built by the loaders."""

    synthetic: bool = False
    """tokenize each synthetic caption (ALIP's second text path)."""
    num_subcaptions: int = 0
    """sentences of the long caption drawn per image (DreamLIP's num_text); 0 draws none."""
    negatives: tuple[str, ...] = ()
    """NegCLIP's negative kinds (training.objectives.negatives.KINDS); one negative drawn per caption, () draws none."""
    vocabulary: NegativeVocabulary | None = None
    """the words NegCLIP's swaps recognise (negclip_vocabulary); None with no negatives."""
    num_labels: int = 0
    """cluster labels kept per sample as a (B, k) tensor (MLCD's top-k positives); 0 keeps none."""
    neighbour_choices: int = 0
    """NegCLIP's hard negative images: a sample's pair is drawn among the first this-many of its listed neighbours
    found (NegCLIPConfig.neighbour_choices); 0 appends no pairs."""
    neighbour_lookups: int = 0
    """how far down a sample's `neighbours` list the loaders look (NegCLIPConfig.neighbour_lookups)."""
    neighbour_window: int = 0
    """recent shard samples kept by uid to find neighbours in (NegCLIPConfig.neighbour_window)."""


NO_FIELDS = BatchFields()
"""Plain CLIP's batches: image and text only."""


def negclip_vocabulary(cfg: NegCLIPConfig) -> NegativeVocabulary:
    """The default English words, the configured extra ones, and the pool's metadata entries when asked."""
    base = NegativeVocabulary()
    vocab = NegativeVocabulary(base.attributes | {w.lower() for w in cfg.attribute_words},
                               base.nouns | {w.lower() for w in cfg.noun_words}, base.relations)
    if cfg.use_metadata and cfg.metadata_file:
        with fsspec.open(cfg.metadata_file, "r", encoding="utf-8") as f:
            vocab = vocab.with_entries(json.load(f))
    return vocab


def batch_fields(cfg: TrainConfig) -> BatchFields:
    """What the loaders must build for `cfg.objectives` (nothing beyond image and text for plain CLIP)."""
    names = set(cfg.objectives)
    negclip = "negclip" in names and bool(cfg.negclip.kinds)
    pairs = "negclip" in names and cfg.negclip.hard_negative_images
    if pairs and "protoclip" in names:  # its episodes index B samples per batch (training.episodes)
        raise ValueError("negclip.hard_negative_images grows each batch past protoclip's episode slots; set "
                         "negclip.hard_negative_images: false to train negclip with protoclip")
    return BatchFields(synthetic="alip" in names,
                       num_subcaptions=cfg.dreamlip.num_text if "dreamlip" in names else 0,
                       negatives=tuple(cfg.negclip.kinds) if negclip else (),
                       vocabulary=negclip_vocabulary(cfg.negclip) if negclip else None,
                       num_labels=cfg.mlcd.top_k if "mlcd" in names else 0,
                       neighbour_choices=cfg.negclip.neighbour_choices if pairs else 0,
                       neighbour_lookups=cfg.negclip.neighbour_lookups if pairs else 0,
                       neighbour_window=cfg.negclip.neighbour_window if pairs else 0)


@dataclass(frozen=True)
class ShardData:
    """A set of WebDataset shards and how many samples they hold (open_clip's --train-num-samples)."""

    urls: list[str] = field(default_factory=list)
    num_samples: int = 0

    @classmethod
    def from_folder(cls, folder: str | Path) -> ShardData:
        """The tars listed in `folder`/sizes.json (the shard stage's manifest of sample counts)."""
        sizes = json.loads((Path(folder) / "sizes.json").read_text())
        names = sorted(sizes)
        return cls([str(Path(folder) / name) for name in names], int(sum(sizes[n] for n in names)))


# --- caption sampling -----------------------------------------------------------------------------

def original_text(sample: dict, rng: np.random.Generator) -> str:
    """The alt-text as it came."""
    return sample["raw_text"]


def laclip_text(sample: dict, rng: np.random.Generator) -> str:
    """LaCLIP (Fan et al. 2023): uniform over the original and its rewrites; a rewrite under 2 words
    falls back to the original."""
    options = [sample["raw_text"], *sample["rewrites"]]
    pick = options[int(rng.integers(len(options)))]
    return pick if len(pick.split()) >= 2 else sample["raw_text"]


TEXT_SAMPLERS: dict[str, Callable[[dict, np.random.Generator], str]] = {
    "original": original_text,
    "laclip": laclip_text,
}


# --- samples and batches --------------------------------------------------------------------------

def decode_image(data: bytes) -> Image.Image:
    """PNG/JPEG/WebP bytes -> upright 8-bit RGB PIL image (curation.images: EXIF orientation, 16-bit samples,
    alpha over white)."""
    return decode_rgb(data)


def add_objective_inputs(sample: dict, fields: BatchFields, rng: np.random.Generator) -> None:
    """Draw the sample's DreamLIP sub-captions and NegCLIP negatives (in that order, from `rng`).

    Without a long caption the caption itself is the only sentence; an impossible negative is None."""
    if fields.num_subcaptions:
        # the longcap stage's sentences of every captioner (DreamLIP combines several); else the one caption's
        sentences = sample["long_caption_sentences"] or split_sentences(sample["long_caption"]) or [sample["caption"]]
        ids = sample_subcaption_ids(len(sentences), fields.num_subcaptions, rng)
        sample["subcaptions"], sample["subcaption_ids"] = [sentences[k] for k in ids], ids
    if fields.negatives:
        sample["negatives"] = [draw_negative(sample["caption"], fields.negatives, fields.vocabulary, rng)]


def make_sample(image: bytes, text: str, meta: dict, transform: Callable, sampler: str,
                rng: np.random.Generator, fields: BatchFields = NO_FIELDS) -> dict:
    """One decoded, transformed sample with every caption field (defaults where `meta` lacks or nulls one)."""
    sample = {k: copy.copy(default) if meta.get(k) is None else meta[k] for k, default in META_DEFAULTS.items()}
    sample["uid"] = str(sample["uid"])
    sample["raw_text"] = text or ""
    sample["caption"] = TEXT_SAMPLERS[sampler](sample, rng)
    add_objective_inputs(sample, fields, rng)
    sample["image"] = transform(decode_image(image))  # (3, H, W)
    return sample


def label_matrix(labels: Sequence[Sequence[int]], k: int) -> torch.Tensor:
    """(B, k) int64 of each sample's first k labels, -1 where a sample has fewer."""
    out = torch.full((len(labels), k), -1, dtype=torch.long)
    for i, row in enumerate(labels):
        row = list(row)[:k]
        out[i, :len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def collate_objective_inputs(samples: Sequence[dict], fields: BatchFields, tokenizer: Callable) -> dict:
    """The extra tensors of BatchFields (see the module docstring for their shapes)."""
    batch: dict[str, Any] = {}
    if fields.synthetic:  # a sample without a synthetic caption trains ALIP's caption path on its caption
        batch["synthetic_text"] = tokenizer([s["synthetic_caption"] or s["caption"] for s in samples]).long()
    if fields.num_subcaptions:
        batch["subcaption_text"] = tokenizer([t for s in samples for t in s["subcaptions"]]).long()  # (B*K, L)
        batch["subcaption_ids"] = torch.tensor([s["subcaption_ids"] for s in samples], dtype=torch.long)
    if fields.negatives:
        negatives = [n for s in samples for n in s["negatives"]]
        batch["negative_text"] = tokenizer([n or "" for n in negatives]).long()  # (B*M, L)
        batch["negative_mask"] = torch.tensor([n is not None for n in negatives]).reshape(len(samples), -1)
    if fields.num_labels:
        batch["cluster_label_ids"] = label_matrix([s["cluster_labels"] for s in samples], fields.num_labels)
    return batch


def with_pairs(samples: Sequence[dict]) -> list[dict]:
    """The B samples, then the M hard negative image pairs they brought (`sample["neighbour"]`), in their order."""
    return [*samples, *(s["neighbour"] for s in samples if s.get("neighbour") is not None)]


def collate(samples: Sequence[dict], tokenizer: Callable, fields: BatchFields = NO_FIELDS) -> dict:
    """Stack images, tokenize the drawn captions (and the objectives' extra texts), keep other fields as lists;
    with hard negative images, over the B samples and their M pairs (B + M rows)."""
    rows = with_pairs(samples) if fields.neighbour_choices else list(samples)
    batch: dict[str, Any] = {
        "image": torch.stack([s["image"] for s in rows]),  # (B + M, 3, H, W)
        "text": tokenizer([s["caption"] for s in rows]).long(),  # (B + M, L)
        **collate_objective_inputs(rows, fields, tokenizer),
    }
    for key in LIST_FIELDS:
        batch[key] = [s[key] for s in rows]
    if fields.neighbour_choices:
        batch[PAIR_KEY] = torch.arange(len(rows)) >= len(samples)  # (B + M,)
    return batch


# --- NegCLIP's hard negative images ---------------------------------------------------------------

def neighbour_candidates(neighbours: Sequence[str] | None, own: str, found: Container[str],
                         fields: BatchFields) -> list[str]:
    """Of the first neighbour_lookups listed neighbours (nearest first), the first neighbour_choices that `found`
    holds, the sample itself left out."""
    listed = [str(u) for u in list(neighbours or [])[:fields.neighbour_lookups]]
    return [u for u in listed if u != own and u in found][:fields.neighbour_choices]


def pick_neighbour(neighbours: Sequence[str] | None, own: str, found: Container[str], fields: BatchFields,
                   rng: np.random.Generator) -> str | None:
    """NegCLIP's draw (`random.choice` over a sample's nearest images), among the candidates found; None if none."""
    options = neighbour_candidates(neighbours, own, found, fields)
    return options[int(rng.integers(len(options)))] if options else None


class SampleWindow:
    """The last `size` samples read, by uid (oldest evicted first): what the shard loader finds neighbours in."""

    def __init__(self, size: int) -> None:
        self.size, self.samples = size, OrderedDict()

    def add(self, uid: str, sample: dict) -> None:
        self.samples.pop(uid, None)
        self.samples[uid] = sample
        while len(self.samples) > self.size:
            self.samples.popitem(last=False)

    def __contains__(self, uid: object) -> bool:
        return uid in self.samples

    def __getitem__(self, uid: str) -> dict:
        return self.samples[uid]

    def __len__(self) -> int:
        return len(self.samples)


def with_meta(raw: dict) -> dict:
    """A raw tar sample with its json parsed once into "__meta__" (uid defaulting to the tar key)."""
    meta = json.loads(raw["json"]) if "json" in raw else {}
    meta.setdefault("uid", raw["__key__"])
    return {**raw, "__meta__": meta}


def attach_neighbours(samples: Iterable[dict], fields: BatchFields, seed: int, rank: int) -> Iterator[dict]:
    """Raw samples, each with "__neighbour__" (a raw sample) when one of its neighbours is in the window, drawn
    from a stream seeded per rank and worker (apart from the captions').

    The window holds the last neighbour_window samples read; a sample leaves once neighbour_window // 2 later
    ones have been read, so neighbours up to that far before or after it in the stream are found (the shard
    stage writes a cluster's samples together). Memory: the window's raw samples, and the neighbours the
    shuffle buffer's samples carry."""
    rng = np.random.default_rng([worker_seed(seed, rank), NEIGHBOUR_STREAM])
    window, waiting, ahead = SampleWindow(fields.neighbour_window), deque(), fields.neighbour_window // 2
    for raw in samples:
        raw = with_meta(raw)
        window.add(str(raw["__meta__"]["uid"]), raw)
        waiting.append(raw)
        if len(waiting) > ahead:
            yield paired(waiting.popleft(), window, fields, rng)
    while waiting:
        yield paired(waiting.popleft(), window, fields, rng)


def paired(raw: dict, window: SampleWindow, fields: BatchFields, rng: np.random.Generator) -> dict:
    """`raw` with its drawn neighbour from `window` attached (a copy: the window's samples carry none)."""
    meta = raw["__meta__"]
    uid = pick_neighbour(meta.get("neighbours"), str(meta["uid"]), window, fields, rng)
    return raw if uid is None else {**raw, "__neighbour__": window[uid]}


def dataloader_worker() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def worker_seed(seed: int, rank: int) -> int:
    """A seed distinct per (rank, dataloader worker), stable across runs."""
    return int(np.random.SeedSequence([seed, rank, dataloader_worker()[0]]).generate_state(1)[0])


# --- WebDataset shards ----------------------------------------------------------------------------

def shard_passes(urls: Sequence[str], seed: int, train: bool, rank: int, world_size: int) -> Iterator[dict]:
    """{"url": ...} for this rank and worker: endless seeded shard permutations when training, else one
    ordered pass split across workers only (evaluation reads everything on one rank)."""
    worker, num_workers = dataloader_worker()
    if not train:
        yield from ({"url": u} for u in list(urls)[worker::num_workers])
        return
    slot, slots = rank * num_workers + worker, world_size * num_workers
    for epoch in count():
        order = np.random.default_rng([seed, epoch]).permutation(len(urls))
        # Fewer shards than readers: each reader takes one shard per pass, so the stream never stalls.
        mine = order[slot::slots] if len(urls) >= slots else order[[slot % len(urls)]]
        yield from ({"url": urls[i]} for i in mine)


def shuffle_samples(samples: Iterable[dict], bufsize: int, seed: int, rank: int) -> Iterator[dict]:
    """Reservoir-style shuffle buffer (as wds.shuffle), seeded per rank and worker."""
    rng = random.Random(worker_seed(seed, rank))
    buf: list[dict] = []
    for sample in samples:
        if len(buf) < bufsize:
            buf.append(sample)
            continue
        i = rng.randrange(bufsize)
        yield buf[i]
        buf[i] = sample
    rng.shuffle(buf)
    yield from buf


def decodable(raw: dict) -> bool:
    """Whether a raw tar sample has an image and a caption (the others are skipped)."""
    return "txt" in raw and any(e in raw for e in IMAGE_EXTENSIONS)


def decode_raw(raw: dict, transform: Callable, sampler: str, rng: np.random.Generator,
               fields: BatchFields) -> dict | None:
    """One raw tar sample -> a decoded sample; None without an image or caption."""
    if not decodable(raw):
        return None
    ext = next(e for e in IMAGE_EXTENSIONS if e in raw)
    meta = raw["__meta__"] if "__meta__" in raw else with_meta(raw)["__meta__"]
    return make_sample(raw[ext], raw["txt"].decode("utf-8"), meta, transform, sampler, rng, fields)


@contextmanager
def sample_randomness(seed: int, position: int) -> Iterator[np.random.Generator]:
    """The randomness of the sample at `position` of a worker's stream: a numpy generator (caption sampling,
    objective inputs) and, inside the block, torch's CPU generator (the transform's crop and flip) seeded
    from (seed, position) alone; torch's generator is put back as it was afterwards."""
    numpy_seed, torch_seed = np.random.SeedSequence([seed, position]).generate_state(2)
    with torch.random.fork_rng(devices=[]):
        # the CPU generator alone: torch.manual_seed would also seed every CUDA device's, which fork_rng(devices=[])
        # does not put back, and costs ~100 µs a call (benchmarks/bench_resume.py)
        torch.default_generator.manual_seed(int(torch_seed))
        yield np.random.default_rng(int(numpy_seed))


def decode_samples(samples: Iterable[dict], transform: Callable, sampler: str, seed: int, rank: int,
                   fields: BatchFields = NO_FIELDS, skip: int = 0) -> Iterator[dict]:
    """Raw tar members -> decoded samples (with their decoded "neighbour" when one is attached); members without
    an image or caption are skipped, and so, undecoded, are the first `skip` that have both.

    Design note: each sample draws its randomness from its own seed, (seed, rank, worker, position in the
    stream), not from a generator it shares with the samples before it, so a sample decodes the same whether
    the ones before it were decoded or skipped. That is what lets a resumed run skip the batches it already
    trained on cheaply (no image decoded) and still see the undisturbed run's samples, augmentations included."""
    base, seen = worker_seed(seed, rank), 0
    for position, raw in enumerate(samples):
        if not decodable(raw):
            continue
        seen += 1
        if seen <= skip:
            continue
        with sample_randomness(base, position) as rng:
            sample = decode_raw(raw, transform, sampler, rng, fields)
            if "__neighbour__" in raw:
                sample["neighbour"] = decode_raw(raw["__neighbour__"], transform, sampler, rng, fields)
        yield sample


class Dropping:
    """An iterable of `loader`'s items after its first `first` (re-iterable, as the loader is)."""

    def __init__(self, loader: Iterable[dict], first: int) -> None:
        self.loader, self.first = loader, first

    def __iter__(self) -> Iterator[dict]:
        return islice(iter(self.loader), self.first, None)


def shard_loader(
    urls: list[str],
    batch_size: int,
    num_samples: int,
    tokenizer: Callable,
    train: bool,
    workers: int,
    seed: int,
    transform: Callable | None = None,
    text_sampler: str = "original",
    shuffle_buffer: int = 2000,
    rank: int = 0,
    world_size: int = 1,
    fields: BatchFields = NO_FIELDS,
    skip_batches: int = 0,
) -> Iterable[dict]:
    """Batches from WebDataset tars. Training: ceil(num_samples / (batch_size x world_size)) full batches for
    this rank (rounded up to a multiple of `workers`), from endless shard passes. Evaluation: one ordered
    pass, last batch partial. `transform` defaults to open_clip's transform of the default model. With
    fields.neighbour_choices, each batch of batch_size samples also holds the hard negative image pairs found.

    `skip_batches` (training): the stream starts at that batch of the same stream, as a resumed run needs.
    The DataLoader takes batches from its workers in turn, so batch k is worker k % workers' (k // workers)-th:
    each worker passes over its batches of the whole rounds skipped without decoding them (decode_samples),
    and the batches of a partial round (fewer than `workers`) are decoded and dropped here."""
    transform = transform or default_transform(train)
    readers = max(1, workers)
    rounds, partial_round = divmod(skip_batches, readers) if train else (0, 0)
    pipeline = [partial(shard_passes, list(urls), seed, train, rank, world_size),
                wds.tarfile_to_samples(handler=wds.warn_and_continue)]
    if fields.neighbour_choices:  # before the shuffle, while a cluster's samples are still together
        pipeline.append(partial(attach_neighbours, fields=fields, seed=seed, rank=rank))
    if train:
        pipeline.append(partial(shuffle_samples, bufsize=shuffle_buffer, seed=seed, rank=rank))
    pipeline += [partial(decode_samples, transform=transform, sampler=text_sampler, seed=seed, rank=rank,
                         fields=fields, skip=rounds * batch_size),
                 wds.batched(batch_size, collation_fn=partial(collate, tokenizer=tokenizer, fields=fields),
                             partial=not train)]
    dataset = wds.DataPipeline(*pipeline)
    if train:
        batches = -(-num_samples // (batch_size * world_size))
        per_reader = -(-batches // readers)  # per worker, as open_clip_train
        if skip_batches >= per_reader * readers:
            raise ValueError(f"skip_batches={skip_batches} leaves none of the stream's {per_reader * readers} batches")
        dataset = dataset.with_epoch(per_reader - rounds)
    loader = wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                           worker_init_fn=forget_inherited_thread_exits if workers else None)
    return Dropping(loader, partial_round) if partial_round else loader


def forget_inherited_thread_exits(_worker_id: int) -> None:
    """DataLoader `worker_init_fn`: drop the exit hooks a forked worker inherits from its parent's threads.

    A worker is forked from the training process, whose threads (Prefect's log and event services among them)
    registered `threading._register_atexit` hooks. The threads do not exist in the child, but the hooks do, and
    run when the worker's process ends: Prefect's asserts on its missing thread state, so the worker exits with
    code 1 and torch reports "DataLoader worker exited unexpectedly" (prefect/_internal/concurrency/services.py,
    `QueueService._at_exit`). The hooks belong to the parent, so the child forgets them."""
    hooks = getattr(threading, "_threading_atexits", None)
    if hooks is not None:
        hooks.clear()


def default_transform(train: bool) -> Callable:
    """open_clip's transform for the default model (64x64, OpenAI mean/std)."""
    cfg = TrainConfig()
    return transform_for(cfg.model, train, cfg.data.crop_scale_min)


# --- in-memory table ------------------------------------------------------------------------------

def row_order(num_rows: int, batch_size: int, train: bool, seed: int, rank: int = 0, world_size: int = 1
              ) -> list[np.ndarray]:
    """Row indices of each batch: a seeded permutation split across ranks, full batches only when training
    (unless a rank holds less than one batch), in order with a partial last batch otherwise."""
    rows = np.random.default_rng(seed).permutation(num_rows) if train else np.arange(num_rows)
    rows = rows[rank::world_size]
    stop = len(rows) - len(rows) % batch_size if train and len(rows) >= batch_size else len(rows)
    return [rows[i:i + batch_size] for i in range(0, stop, batch_size)]


def table_loader(
    table: pa.Table,
    batch_size: int,
    tokenizer: Callable,
    train: bool,
    seed: int,
    transform: Callable | None = None,
    text_sampler: str = "original",
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
    fields: BatchFields = NO_FIELDS,
    stop_batch: int | None = None,
) -> Iterator[dict]:
    """One epoch of batches from a table with `image` (encoded bytes) and `text` columns (other contract
    columns - uid, rewrites, long_caption, neighbours, ... - travel along when present). Decodes in this process.
    Batches [start_batch, stop_batch) of the epoch's order are yielded. With fields.neighbour_choices and a
    `neighbours` column, each sample's hard negative image pair is drawn among its neighbours in the table."""
    transform = transform or default_transform(train)
    order = row_order(table.num_rows, batch_size, train, seed, rank, world_size)
    index = uid_index(table) if fields.neighbour_choices and "neighbours" in table.column_names else None
    for b in range(start_batch, len(order) if stop_batch is None else min(stop_batch, len(order))):
        rows = table_rows(table, order[b])
        # Captions and augmentations drawn from per-batch seeds (torchvision's crops use torch's global RNG,
        # forked here and left as it was): batch b is the same whenever it is drawn, so a resumed run, or
        # one that draws a ProtoCLIP episode ahead, sees exactly the batches of an uninterrupted run.
        rng = np.random.default_rng([seed, rank, b])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**63)))
            make = partial(table_sample, transform=transform, sampler=text_sampler, rng=rng, fields=fields)
            samples = [make(r) for r in rows]
            if index is not None:
                add_table_pairs(samples, rows, table, index, fields, make,
                                np.random.default_rng([seed, rank, b, NEIGHBOUR_STREAM]))
        yield collate(samples, tokenizer, fields)


def table_rows(table: pa.Table, idx: np.ndarray | list[int]) -> list[dict]:
    """Rows `idx` as dicts; tables without uids (the bootstrap's) use the row number."""
    rows = table.take(pa.array(idx, type=pa.int64())).to_pylist()
    for i, row in zip(idx, rows, strict=True):
        row["uid"] = row.get("uid") or str(i)
    return rows


def table_sample(row: dict, transform: Callable, sampler: str, rng: np.random.Generator,
                 fields: BatchFields) -> dict:
    return make_sample(row["image"], row["text"], row, transform, sampler, rng, fields)


def uid_index(table: pa.Table) -> dict[str, int]:
    """uid -> row number (the row number itself for rows without a uid, as table_rows names them)."""
    uids = table.column("uid").to_pylist() if "uid" in table.column_names else [None] * table.num_rows
    return {str(u or i): i for i, u in enumerate(uids)}


def add_table_pairs(samples: list[dict], rows: list[dict], table: pa.Table, index: dict[str, int],
                    fields: BatchFields, make: Callable[[dict], dict], rng: np.random.Generator) -> None:
    """Give each sample its hard negative image pair (`sample["neighbour"]`), drawn among its neighbours in the
    table (random access, as vinid/neg_clip's CsvDataset)."""
    picks = [pick_neighbour(r.get("neighbours"), r["uid"], index, fields, rng) for r in rows]
    found = [index[u] for u in picks if u is not None]
    pairs = iter(table_rows(table, found) if found else [])
    for sample, uid in zip(samples, picks, strict=True):
        if uid is not None:
            sample["neighbour"] = make(next(pairs))

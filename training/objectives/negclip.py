"""NegCLIP: Yuksekgonul et al. 2023, "When and Why Vision-Language Models Behave like Bags-of-Words, and What to
Do About It" (ARO), as vinid/neg_clip computes it.

Hard negative captions (training.objectives.negatives) join the image->text softmax only; text->image stays
plain CLIP (`ClipLoss.forward` in src/open_clip/loss.py).

Hard negative images (`NegCLIPConfig.hard_negative_images`): in vinid/neg_clip, `CsvDataset.__getitem__`
(src/training/data.py) gives every sample one of its 3 precomputed nearest images by CLIP image similarity
(`random.choice` over the `neg_image` column), with that image's own caption and one of *its* hard negative
captions; `train_one_epoch` (src/training/train.py) concatenates images = [images; new_images] and texts =
[texts; new_texts; hard_captions; new_hard]. So each neighbour is a full member of the batch: an anchor whose
positive is its own caption, a candidate of every text->image softmax, and it brings a negative caption of its
own to the image->text softmax. Here the loaders (training.data) append the neighbour pairs after the batch's
own samples, every per-sample field included, mark them in `batch["neighbour_pair"]` (B + M,) and this loss
runs unchanged on the grown batch: NegCLIP's loss on the concatenated inputs.

How the batch grows: a rank's batch of B samples holds B + M rows, M <= B the neighbours found (NegCLIP: always
M = B, a batch of 2B). The contrastive batch over ranks is N = sum over ranks of (B + M_r); ranks may hold
different M_r, so this objective gathers ragged rows (`gather_rows`) and weighs each rank's mean by its share
of N, so that the mean over ranks (what DDP's gradient average and the metrics line take) is the mean over the
N rows, as NegCLIP's single-process mean over 2B. The other objectives, and the logged raw-caption CLIP loss,
see only the B own rows (`own_rows`, used by training.objectives.WeightedObjectives): their losses, and their
equal-sized gathers across ranks, are as without neighbours. `negclip_image_pairs` (a metrics-line entry) is
M over the step's micro-batches on a rank, averaged over the line's steps and the ranks.

Where this differs from vinid/neg_clip, on purpose: (1) neighbours are not read by random access. The shard
loader keeps a bounded window of recently read samples by uid (`NegCLIPConfig.neighbour_window`) and draws a
sample's neighbour among those of its listed neighbours present there; the table loader (random access) draws
among those in the table. A sample none of whose neighbours is found brings no pair, so M may be below B.
(2) The shard stage lists neighbours nearest first; `neighbour_lookups` may reach past the first
`neighbour_choices` so that a farther neighbour stands in for a missing nearer one (default 3 and 3: NegCLIP's
three nearest only). (3) The authors' code runs on one GPU only (their README); the ragged gather is ours.
(4) The neighbour's caption is drawn by the run's text sampler, as every sample's caption is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.distributed import (
    DistContext,
    gather_detached,
)
from training.objectives.common import CONTRASTIVE_READS, Objective, fp32, own_columns
from training.objectives.negatives import KINDS, NegativeKind

PAIR_KEY = "neighbour_pair"
"""Batch key of the (B + M,) bool mask: True on the rows appended as hard negative image pairs."""

SHARED_OUTPUTS = ("logit_scale", "logit_bias")
"""`out` entries that are parameters, not per-row features (training.module.SHARED_OUTPUTS)."""


def negclip_loss_gathered(image_features: torch.Tensor, text_features: torch.Tensor, all_image: torch.Tensor,
                          all_text: torch.Tensor, hard_negatives: torch.Tensor, logit_scale: torch.Tensor,
                          offset: int) -> torch.Tensor:
    """NegCLIP of local rows: image->text over [N texts; M hard negatives (M, D)], text->image over N images."""
    labels = own_columns(image_features.shape[0], offset, image_features.device)
    candidates = torch.cat([all_text, hard_negatives], dim=0)  # (N + M, D)
    logits_per_image = fp32(logit_scale * image_features @ candidates.T)  # (B, N + M)
    logits_per_text = fp32(logit_scale * text_features @ all_image.T)  # (B, N)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def negclip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                 hard_negative_text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """NegCLIP: image->text softmax over [B texts; M hard negatives] (M, D), text->image over the B images."""
    return negclip_loss_gathered(image_features, text_features, image_features, text_features,
                                 hard_negative_text_features, logit_scale, 0)


@dataclass(frozen=True)
class NegCLIPConfig:
    """NegCLIP's hard negative captions and images (Yuksekgonul et al. 2023, ARO; vinid/neg_clip)."""

    kinds: tuple[NegativeKind, ...] = KINDS
    """negative kinds a caption may get (keys of training.negatives.NEGATIVE_KINDS); each step draws one of those
    its caption allows, as NegCLIP draws one of its precomputed negatives per sample."""
    attribute_words: tuple[str, ...] = ()
    """attribute words added to training.negatives.DEFAULT_ATTRIBUTES (what the attribute swap exchanges)."""
    noun_words: tuple[str, ...] = ()
    """nouns added to training.negatives.DEFAULT_NOUNS (what the noun and noun-phrase swaps exchange)."""
    use_metadata: bool = True
    """add the pool's MetaCLIP metadata entries (the curate artifact's metadata.json) to the vocabulary."""
    metadata_file: str | None = None
    """the metadata.json read when use_metadata holds; the train stage points it at the curate artifact's."""
    hard_negative_images: bool = True
    """append each sample's nearest-image neighbour (the shard json's `neighbours`) with its own caption to the
    batch, as NegCLIP trains: up to 2x the rows a step encodes (samples_seen still counts the B samples); samples
    without neighbours add none. Not with protoclip, whose episodes index B rows per batch."""
    neighbour_choices: int = 3
    """a sample's hard negative image is drawn uniformly among the first this-many of its listed neighbours that
    are found (NegCLIP: `random.choice` over its 3 nearest images, `neg_image`)."""
    neighbour_lookups: int = 3
    """how far down a sample's `neighbours` list (nearest first) the loaders look; more than neighbour_choices lets
    a farther neighbour stand in for a nearer one absent from the window or filtered out of the shards."""
    neighbour_window: int = 4096
    """shard samples kept by uid to find neighbours in, half before and half after each sample (which waits for
    the half after); memory per dataloader worker: this many encoded samples (image bytes + json; ~40 MB at 10 KB
    a sample), plus the neighbours carried by the shuffle buffer's samples (at most data.shuffle_buffer more)."""

    def __post_init__(self) -> None:
        if self.neighbour_choices < 1 or self.neighbour_lookups < 1 or self.neighbour_window < 2:
            raise ValueError("negclip.neighbour_choices and neighbour_lookups must be >= 1 and neighbour_window "
                             f">= 2, got {self.neighbour_choices}, {self.neighbour_lookups}, {self.neighbour_window}")


def row_counts(rows: int, dist: DistContext, device: torch.device) -> list[int]:
    """Every rank's number of rows."""
    return gather_detached(torch.tensor([rows], device=device), dist).tolist()


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))])  # (rows, ...)


def gather_rows(x: torch.Tensor, counts: list[int], dist: DistContext, grad: bool = True) -> torch.Tensor:
    """(sum(counts), ...) every rank's rows, rank-major, when ranks hold different numbers (`counts`); with
    `grad`, gradients flow back to each rank as through training.distributed.gather_features."""
    if dist.world_size == 1:
        return x
    padded = _pad_rows(x, max(counts))  # all_gather needs one shape on every rank
    if grad:
        import torch.distributed.nn.functional as dist_fn

        parts = list(dist_fn.all_gather(padded))
    else:
        parts = list(gather_detached(padded, dist).split(max(counts)))
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])


def _per_row(key: str, value: object, rows: int) -> bool:
    return key not in SHARED_OUTPUTS and key != PAIR_KEY and (
        isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows
        or isinstance(value, list) and len(value) == rows)


def _keep(value: torch.Tensor | list, keep: torch.Tensor, flags: list[bool]) -> torch.Tensor | list:
    return value[keep.to(value.device)] if isinstance(value, torch.Tensor) \
        else [v for v, kept in zip(value, flags, strict=True) if kept]


def own_rows(out: dict, batch: dict) -> tuple[dict, dict]:
    """`out` and `batch` without the hard negative image pairs: every per-row entry (a tensor or list of B + M
    rows) cut to the B own samples. Unchanged when the batch has no pairs."""
    pairs = batch.get(PAIR_KEY)
    if pairs is None or not bool(pairs.any()):
        return out, batch
    keep, rows = ~pairs, pairs.shape[0]
    flags = keep.tolist()
    cut = {k: _keep(v, keep, flags) if _per_row(k, v, rows) else v for k, v in out.items()}
    return cut, {k: _keep(v, keep, flags) if _per_row(k, v, rows) else v for k, v in batch.items() if k != PAIR_KEY}


class NegCLIPObjective(Objective):
    """CLIP with every rank's hard negative captions as extra image->text negatives, on a batch grown by the hard
    negative image pairs (the module docstring)."""

    reads = CONTRASTIVE_READS | {"negative_features"}
    reads_pairs = True
    """training.objectives.WeightedObjectives gives this term the neighbour pairs; the others get own_rows."""

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        image, text = out["image_features"], out["text_features"]  # (B + M, D)
        rows = image.shape[0]
        counts = row_counts(rows, dist, image.device) if dist.world_size > 1 else [rows]
        negatives = out.get("negative_features", image.new_zeros((rows, 0, image.shape[-1])))  # (B + M, K, D)
        mask = batch.get("negative_mask", torch.zeros(negatives.shape[:2], dtype=torch.bool))  # (B + M, K)
        per = negatives.shape[1]
        all_negatives = gather_rows(negatives.flatten(0, 1), [n * per for n in counts], dist)  # (N*K, D)
        real = gather_rows(mask.flatten().to(image.device), [n * per for n in counts], dist, grad=False)
        loss = negclip_loss_gathered(image, text, gather_rows(image, counts, dist), gather_rows(text, counts, dist),
                                     all_negatives[real], out["logit_scale"], sum(counts[:dist.rank]))
        if PAIR_KEY in batch:
            self._metrics = {"negclip_image_pairs": batch[PAIR_KEY].sum().detach()}
        # each rank's mean weighted by its share of the N rows: the mean over ranks is the mean over all N rows
        return loss * (rows * dist.world_size / sum(counts))

"""ProtoCLIP: prototype-level discrimination between image and text spaces, trained episodically.

Chen et al. 2023, "ProtoCLIP: Prototypical Contrastive Language Image Pretraining" (IEEE TNNLS; arXiv
2206.10996, first as "Prototypical Contrastive Language Image Pretraining", 2022). Each episode:

1. extract the projected features z^I, z^T (heads in eval mode, no gradient) of the episode's samples;
2. k-means them (faiss) into K prototypes per modality: centroids C^I, C^T and assignments y^I, y^T;
3. train on the episode's samples with, beside InfoNCE, the prototype loss. Image features learn the TEXT
   assignment of their caption, text features the IMAGE assignment of their image:

       L_I = CE(softmax(s z^I_i . P^I), q^T_i),   q^T_i = softmax(C^T_{y^T_i} . C^T / tau)   (tau <= 0: one-hot)
       L_T = CE(softmax(s z^T_i . P^T), q^I_i),   L_proto = (L_I + L_T) / 2

   with s a learnable scale of its own. Prototypical Back Translation (PBT) sets the student's classifier
   P^I_c to the mean of the IMAGE features of the samples in text cluster c (P^T_c likewise from text
   features over image clusters), so grouping is learnt without first aligning the two modalities; without
   PBT, P^I = C^T and P^T = C^I. An optional external text teacher (here any open_clip text tower from a
   local checkpoint) is clustered too; both modalities learn its assignments, always back-translated
   (its space differs from ours), with one-hot targets as in the authors' code by default.

As in the authors' code, both towers get a projection head (Linear-BatchNorm-ReLU-Linear) into the
prototype space; here it reads the L2-normalised CLIP features, and its BatchNorm statistics in training
are those of the global batch across ranks (SyncBatchNorm is CUDA-only), so data parallelism is exact.
The loss itself is a mean of per-sample terms against prototypes fixed for the episode: each rank's mean
over its own rows, averaged by DDP, is the global batch's loss and gradient, with no feature gather.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.distributed import DistContext

MAX_LOGIT_SCALE = math.log(100)
"""The prototype scale is clamped like CLIP's temperature (the authors clamp logit_scale_proto at ln 100)."""


@dataclass(frozen=True)
class ProtoCLIPConfig:
    """ProtoCLIP (Chen et al. 2023): episodic k-means prototypes and the prototype-level loss with PBT."""

    num_prototypes: int = 32
    """k-means prototypes K per modality and episode (paper: 20,000 per 200k-sample episode on CC2.5M)."""
    episode_size: int = 2048
    """samples per episode over all ranks, clustered then trained on (paper: 200,000; 2048 = 64 per prototype)."""
    temperature: float = 0.01
    """tau of the soft targets softmax(c_y . C^T / tau) over the target prototypes (paper: 0.01); <= 0 is one-hot."""
    pbt: bool = True
    """Prototypical Back Translation: a cluster's classifier is the mean of the student modality's features in it."""
    student_temperature: float = 0.07
    """initial learnable temperature of the student's prototype scores (as CLIP's, clamped at 1/100)."""
    projection_dim: int = 64
    """width of the prototype space the heads project into (paper: 128); 0 clusters the CLIP features directly."""
    projection_hidden_dim: int = 256
    """hidden width of each projection head (paper: 2048 over RN50's 1024-d features)."""
    projection_layers: int = 1
    """hidden Linear-BatchNorm-ReLU layers per head (paper: 1); 0 gives a linear head."""
    kmeans_iters: int = 20
    """k-means iterations per fit (paper: 20)."""
    kmeans_redo: int = 3
    """k-means restarts per fit, the lowest objective kept (paper: 3)."""
    kmeans_init: Literal["random", "kmeans++", "afkmc2"] = "kmeans++"
    """k-means seeding, a key of KMEANS_INITS (paper: faiss's "random"; k-means++ escapes more local optima)."""
    teacher_model: str | None = None
    """external text teacher: open_clip model name or JSON config path whose text tower encodes captions; None: off."""
    teacher_checkpoint: str | None = None
    """the teacher's local checkpoint (open_clip format, e.g. an earlier run's final.pt); needed with teacher_model."""
    teacher_weight: float = 1.0
    """weight of the teacher term beside the image/text prototype term (paper: w_proto_external = 1)."""
    teacher_temperature: float = 0.0
    """tau of the teacher's soft targets; <= 0 is one-hot, as the authors' code trains on its teacher."""
    seed: int = 0
    """base k-means seed; episode e clusters with episode_seed(cfg, e)."""


@dataclass(frozen=True, eq=False)
class Prototypes:
    """One episode's prototypes; row n of each label array is the sample at episode position n."""

    image_centroids: np.ndarray
    """(K, D) k-means centroids of the episode's image features."""
    text_centroids: np.ndarray
    """(K, D) k-means centroids of the episode's text features."""
    image_labels: np.ndarray
    """(N,) int64 image-space cluster of each sample."""
    text_labels: np.ndarray
    """(N,) int64 text-space cluster of each sample."""
    image_from_text: np.ndarray
    """(K, D) PBT: mean image feature over each text cluster (zeros where a cluster is empty)."""
    text_from_image: np.ndarray
    """(K, D) PBT: mean text feature over each image cluster."""
    teacher_centroids: np.ndarray | None = None
    """(K, Dt) k-means centroids of the external teacher's text features, or None."""
    teacher_labels: np.ndarray | None = None
    """(N,) int64 teacher-space cluster of each sample, or None."""
    image_from_teacher: np.ndarray | None = None
    """(K, D) mean image feature over each teacher cluster, or None."""
    text_from_teacher: np.ndarray | None = None
    """(K, D) mean text feature over each teacher cluster, or None."""

    @property
    def num_samples(self) -> int:
        return int(self.image_labels.shape[0])

    @property
    def has_teacher(self) -> bool:
        return self.teacher_labels is not None


def episode_seed(cfg: ProtoCLIPConfig, episode: int) -> int:
    """A k-means seed for episode `episode`, distinct per (cfg.seed, episode)."""
    return int(np.random.SeedSequence([cfg.seed, episode]).generate_state(1)[0] & 0x7FFFFFFF)


KMEANS_INITS = {
    "random": "ClusteringInitMethod_RANDOM",
    "kmeans++": "ClusteringInitMethod_KMEANS_PLUS_PLUS",
    "afkmc2": "ClusteringInitMethod_AFK_MC2",
}
"""faiss centroid seeding by config name: uniform sample, k-means++ (O(NKD)), or its fast AFK-MC^2 approximation."""


def kmeans(features: np.ndarray, k: int, seed: int, iters: int = 20, redo: int = 1, init: str = "kmeans++"
           ) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means of (N, D) rows: (centroids (K, D) float32, labels (N,) int64 of each row's nearest centroid)."""
    import faiss

    x = np.ascontiguousarray(np.nan_to_num(np.asarray(features, dtype=np.float32), nan=0.0))
    if x.ndim != 2 or x.shape[0] < k:
        raise ValueError(f"k-means needs at least K={k} rows of (N, D) features, got shape {x.shape}")
    if init not in KMEANS_INITS or (init != "random" and not hasattr(faiss, KMEANS_INITS[init])):
        raise ValueError(f"k-means init {init!r} unknown to this faiss {faiss.__version__}; choose from "
                         f"{sorted(KMEANS_INITS)} (older faiss builds only have 'random')")
    # Older faiss builds lack init_method; their only (default) seeding is "random".
    seeding = {} if init == "random" else {"init_method": getattr(faiss, KMEANS_INITS[init])}
    # min_points_per_centroid=1: small episodes are intended, so silence faiss's "provide more points" warning.
    km = faiss.Kmeans(x.shape[1], k, niter=iters, nredo=redo, seed=seed, verbose=False, min_points_per_centroid=1,
                      **seeding)
    km.train(x)
    _, labels = km.index.search(x, 1)  # (N, 1)
    return np.ascontiguousarray(km.centroids, dtype=np.float32), labels[:, 0].astype(np.int64)


def back_translate(labels: np.ndarray, features: np.ndarray, k: int) -> np.ndarray:
    """PBT: row c is the mean of `features` (N, D) over the samples labelled c; zeros for an empty cluster."""
    sums = np.zeros((k, features.shape[1]), np.float64)
    np.add.at(sums, labels, features.astype(np.float64))
    counts = np.bincount(labels, minlength=k)[:, None]  # (K, 1)
    return (sums / np.maximum(counts, 1)).astype(np.float32)


def fit_prototypes(image_features: np.ndarray, text_features: np.ndarray, cfg: ProtoCLIPConfig, seed: int,
                   teacher_features: np.ndarray | None = None) -> Prototypes:
    """An episode's prototypes from its (N, D) image and text features (row n = episode position n)."""
    if image_features.shape != text_features.shape:
        raise ValueError(f"image {image_features.shape} and text {text_features.shape} features differ in shape")
    k = cfg.num_prototypes
    image = np.nan_to_num(np.asarray(image_features, dtype=np.float32), nan=0.0)
    text = np.nan_to_num(np.asarray(text_features, dtype=np.float32), nan=0.0)
    image_centroids, image_labels = kmeans(image, k, seed, cfg.kmeans_iters, cfg.kmeans_redo, cfg.kmeans_init)
    text_centroids, text_labels = kmeans(text, k, seed + 1, cfg.kmeans_iters, cfg.kmeans_redo, cfg.kmeans_init)
    teacher: dict[str, np.ndarray] = {}
    if teacher_features is not None:
        if teacher_features.shape[0] != image.shape[0]:
            raise ValueError(f"{teacher_features.shape[0]} teacher rows for {image.shape[0]} samples")
        centroids, labels = kmeans(teacher_features, k, seed + 2, cfg.kmeans_iters, cfg.kmeans_redo,
                                   cfg.kmeans_init)
        # The teacher's space differs from ours, so its prototypes are always back-translated.
        teacher = {"teacher_centroids": centroids, "teacher_labels": labels,
                   "image_from_teacher": back_translate(labels, image, k),
                   "text_from_teacher": back_translate(labels, text, k)}
    return Prototypes(image_centroids, text_centroids, image_labels, text_labels,
                      back_translate(text_labels, image, k), back_translate(image_labels, text, k), **teacher)


def share_prototypes(p: Prototypes | None, dist: DistContext, device: torch.device | None = None) -> Prototypes:
    """Rank 0's prototypes on every rank, so k-means runs once (`device`: this rank's GPU under NCCL)."""
    if dist.world_size > 1:
        import torch.distributed as torch_dist

        box = [p]
        torch_dist.broadcast_object_list(box, src=0, device=device)
        p = box[0]
    if p is None:
        raise ValueError("share_prototypes: rank 0 has no prototypes to share")
    return p


def prototype_targets(teacher_prototypes: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, K) targets: softmax(C_y . C^T / tau) over the target prototypes C (K, D); one-hot when tau <= 0."""
    k = teacher_prototypes.shape[0]
    if temperature <= 0:
        return F.one_hot(labels, k).to(torch.float32)
    with torch.autocast(teacher_prototypes.device.type, enabled=False):  # tau = 0.01 amplifies bf16 error
        c = teacher_prototypes.float()
        return torch.softmax(c[labels] @ c.T / temperature, dim=1)


def prototype_loss(student_features: torch.Tensor, student_prototypes: torch.Tensor, logit_scale: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the cross-entropy between softmax(s z_i . P^T) (B, K) and the targets (B, K)."""
    logits = logit_scale * student_features @ student_prototypes.to(student_features.dtype).T  # (B, K)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def projection_head(embed_dim: int, cfg: ProtoCLIPConfig) -> nn.Module:
    """The authors' head: projection_layers x (Linear, BatchNorm1d, ReLU), then Linear to projection_dim."""
    if cfg.projection_dim <= 0:
        return nn.Identity()
    layers: list[nn.Module] = []
    width = embed_dim
    for _ in range(cfg.projection_layers):
        layers += [nn.Linear(width, cfg.projection_hidden_dim), nn.BatchNorm1d(cfg.projection_hidden_dim), nn.ReLU()]
        width = cfg.projection_hidden_dim
    layers.append(nn.Linear(width, cfg.projection_dim))
    return nn.Sequential(*layers)


def global_batch_norm(x: torch.Tensor, bn: nn.BatchNorm1d, world_size: int) -> torch.Tensor:
    """BatchNorm1d whose training statistics are the global batch's across ranks, gradients included."""
    if not bn.training or world_size == 1:
        return bn(x)
    import torch.distributed.nn.functional as dist_fn

    xf = x.float()  # (B, H)
    count = torch.full((1,), float(x.shape[0]), device=x.device)
    moments = dist_fn.all_reduce(torch.cat([xf.sum(0), (xf * xf).sum(0), count]))  # (2H + 1,) summed over ranks
    h, n = x.shape[1], moments[-1]
    mean, var = moments[:h] / n, moments[h:2 * h] / n - (moments[:h] / n) ** 2  # biased, as BN normalises
    with torch.no_grad():
        momentum = bn.momentum if bn.momentum is not None else 0.1
        bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), momentum)
        bn.running_var.lerp_((var.detach() * n / (n - 1)).to(bn.running_var.dtype), momentum)  # unbiased, as BN
        bn.num_batches_tracked += 1
    return ((xf - mean) * torch.rsqrt(var + bn.eps) * bn.weight + bn.bias).to(x.dtype)


def project(head: nn.Module, features: torch.Tensor, world_size: int) -> torch.Tensor:
    """(B, E) CLIP features -> (B, P) L2-normalised prototype-space features."""
    x = features
    for layer in (head if isinstance(head, nn.Sequential) else [head]):
        x = global_batch_norm(x, layer, world_size) if isinstance(layer, nn.BatchNorm1d) else layer(x)
    return F.normalize(x, dim=-1)


_ARRAYS = tuple(f.name for f in fields(Prototypes))


class ProtoCLIPObjective(nn.Module):
    """ProtoCLIP's prototype loss (plus the teacher's when configured) for the episode set by set_prototypes.

    Holds the two projection heads and the prototype scale (trained with the model). The current episode's
    prototypes travel in the state dict (extra state), so a resumed run continues the same episode.
    """

    def __init__(self, cfg: ProtoCLIPConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        if self.cfg.num_prototypes < 2:
            raise ValueError(f"protoclip.num_prototypes must be at least 2, got {self.cfg.num_prototypes}")
        self.image_head = projection_head(embed_dim, self.cfg)
        self.text_head = projection_head(embed_dim, self.cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / self.cfg.student_temperature)))
        self._prototypes: Prototypes | None = None
        self._on_device: dict[str, torch.Tensor] = {}

    @property
    def prototypes(self) -> Prototypes | None:
        """The current episode's prototypes (None before the first set_prototypes)."""
        return self._prototypes

    def set_prototypes(self, p: Prototypes) -> None:
        """Start an episode: the loss now reads these prototypes at batch["episode_index"]."""
        if p.image_centroids.shape[0] != self.cfg.num_prototypes:
            raise ValueError(f"{p.image_centroids.shape[0]} prototypes, config says {self.cfg.num_prototypes}")
        self._prototypes = p
        self._on_device = {}

    @torch.no_grad()
    def episode_features(self, image_features: torch.Tensor, text_features: torch.Tensor
                         ) -> tuple[np.ndarray, np.ndarray]:
        """A batch's (B, P) prototype-space features to cluster (heads in eval mode, as the authors extract)."""
        was_training = self.training
        self.eval()
        try:
            image = project(self.image_head, image_features, 1)
            text = project(self.text_head, text_features, 1)
        finally:
            self.train(was_training)
        return image.float().cpu().numpy(), text.float().cpu().numpy()

    def _tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        if self._prototypes is None:
            raise RuntimeError("ProtoCLIPObjective has no prototypes: call set_prototypes(fit_prototypes(...)) "
                               "with the episode's features before the first training step of each episode")
        if not self._on_device or next(iter(self._on_device.values())).device != device:
            self._on_device = {name: torch.as_tensor(value).to(device) for name in _ARRAYS
                               if (value := getattr(self._prototypes, name)) is not None}
        return self._on_device

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        device = out["image_features"].device
        p = self._tensors(device)
        index = batch["episode_index"].to(device=device, dtype=torch.long)  # (B,) positions in the episode
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= p["image_labels"].shape[0]):
            raise IndexError(f"episode_index outside the episode's {p['image_labels'].shape[0]} samples")
        image = project(self.image_head, out["image_features"], dist.world_size)  # (B, P)
        text = project(self.text_head, out["text_features"], dist.world_size)  # (B, P)
        scale = self.logit_scale.clamp(0, MAX_LOGIT_SCALE).exp()
        cfg = self.cfg
        # Images learn their caption's text cluster; texts learn their image's image cluster.
        image_targets = prototype_targets(p["text_centroids"], p["text_labels"][index], cfg.temperature)  # (B, K)
        text_targets = prototype_targets(p["image_centroids"], p["image_labels"][index], cfg.temperature)
        image_classifier = p["image_from_text"] if cfg.pbt else p["text_centroids"]  # (K, P)
        text_classifier = p["text_from_image"] if cfg.pbt else p["image_centroids"]
        loss = (prototype_loss(image, image_classifier, scale, image_targets)
                + prototype_loss(text, text_classifier, scale, text_targets)) / 2
        if "teacher_labels" in p:
            targets = prototype_targets(p["teacher_centroids"], p["teacher_labels"][index], cfg.teacher_temperature)
            loss = loss + cfg.teacher_weight * (prototype_loss(image, p["image_from_teacher"], scale, targets)
                                                + prototype_loss(text, p["text_from_teacher"], scale, targets)) / 2
        return loss

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        """The current prototypes as tensors (weights_only-loadable), so a checkpoint resumes the episode."""
        if self._prototypes is None:
            return {}
        return {name: torch.from_numpy(np.ascontiguousarray(value)) for name in _ARRAYS
                if (value := getattr(self._prototypes, name)) is not None}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.set_prototypes(Prototypes(**{name: value.cpu().numpy() for name, value in state.items()}))


@functools.lru_cache(maxsize=2)
def _teacher(model: str, checkpoint: str, device: str) -> tuple[nn.Module, object]:
    """The teacher's open_clip model (eval mode) and tokenizer, loaded once per process."""
    from training.models import create_model

    net, _, tokenizer = create_model(model, checkpoint=checkpoint, device=device)
    return net.eval(), tokenizer


def teacher_text_features(cfg: ProtoCLIPConfig, texts: list[str], batch_size: int = 256,
                          device: str = "cpu") -> np.ndarray | None:
    """(N, Dt) L2-normalised text features of an external open_clip teacher; None when none is configured."""
    if cfg.teacher_model is None:
        return None
    if cfg.teacher_checkpoint is None:
        raise ValueError("protoclip.teacher_model needs protoclip.teacher_checkpoint: an untrained teacher "
                         "teaches nothing, and no weights are downloaded")
    net, tokenizer = _teacher(cfg.teacher_model, cfg.teacher_checkpoint, str(device))
    if not texts:
        raise ValueError("teacher_text_features needs at least one text")
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(list(texts[start:start + batch_size])).to(device)
            chunks.append(net.encode_text(tokens, normalize=True).float().cpu().numpy())
    return np.concatenate(chunks)

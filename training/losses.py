"""Training objectives: the registry of weighted terms the training loop sums, over features gathered across ranks.

CLIP's symmetric InfoNCE (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision") is computed as open_clip does across ranks: each rank scores its own rows against the
features of the global batch, gathered with gradients flowing back through the gather, so DDP's
gradient average equals the gradient of the single-process loss over the global batch. The other terms
(SigLIP, DCL, NegCLIP, ALIP, DreamLIP, MLCD; papers cited in `training.objectives`, whose plain loss
functions they call) follow the same rule; ProtoCLIP's prototype loss lives in training.protoclip.

An objective is a module `forward(out, batch, dist) -> scalar`, where `out` holds the model's outputs
("image_features", "text_features", ... all L2-normalised, and "logit_scale", already exponentiated; see
`TrainModule.encode` in training.loop) and `batch` is the loader's batch dict (every caption field and label).
Objectives with state (a classifier, running means, a temperature) keep it as parameters, buffers or extra
state; the loop optimises and checkpoints them. Optional hooks, with defaults in `Objective`: `reads` (the
`out` keys it needs, so the model computes only those), `attach(model)` (adapt to the model before training),
`end_step()` (commit per-step state once per optimiser step, not per micro-batch), `metrics` (detached
scalars for the metrics line), and `sharded` (rank-local parameters, e.g. MLCD's Partial-FC classifier).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from training.config import TrainConfig
from training.distributed import (
    DistContext,
    RowShard,
    ScaleGrad,
    distributed_log1p_sum_exp,
    gather_detached,
    gather_features,
    init_rows,
    local_rows,
    shard_range,
)
from training.objectives import (
    alip_gates,
    clip_loss_per_sample,
    dcl_loss_gathered,
    dreamlip_grouping_gathered,
    dreamlip_multi_positive_gathered,
    dreamlip_regions,
    fp32,
    mlcd_logits,
    negclip_loss_gathered,
    siglip_loss_gathered,
)
from training.protoclip import ProtoCLIPObjective


def clip_loss_gathered(image_features: torch.Tensor, text_features: torch.Tensor, all_image: torch.Tensor,
                       all_text: torch.Tensor, logit_scale: torch.Tensor, offset: int) -> torch.Tensor:
    """InfoNCE of the local rows (B, D) against global columns (N, D); row i's positive is column offset + i."""
    labels = torch.arange(image_features.shape[0], device=image_features.device) + offset
    # Softmax in at least fp32: under bf16 autocast the logits arrive in bf16.
    logits_per_image = fp32(logit_scale * image_features @ all_text.T)  # (B, N)
    logits_per_text = fp32(logit_scale * text_features @ all_image.T)  # (B, N)
    return (nn.functional.cross_entropy(logits_per_image, labels)
            + nn.functional.cross_entropy(logits_per_text, labels)) / 2


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over one batch of L2-normalised features (B, D); logit_scale is exp(t)."""
    return clip_loss_gathered(image_features, text_features, image_features, text_features, logit_scale, 0)


@torch.no_grad()
def raw_caption_clip_loss(out: dict[str, torch.Tensor], dist: DistContext) -> torch.Tensor:
    """The plain, unweighted CLIP loss of the images and their raw captions over the global batch, without a
    gradient: logged beside every objective's terms, so a run shows learning on one scale even when gates,
    weights or other losses change the objective's own (issue 8)."""
    image, text = out["image_features"].detach(), out["text_features"].detach()
    all_image, offset = local_rows(image, dist)
    return clip_loss_gathered(image, text, all_image, gather_features(text, dist), out["logit_scale"].detach(),
                              offset)


CONTRASTIVE_READS = frozenset({"image_features", "text_features", "logit_scale"})
"""What a plain image-text contrastive term reads from `out` (also assumed of objectives that do not say)."""


class Objective(nn.Module):
    """Defaults of the optional objective hooks (see the module docstring)."""

    reads: frozenset[str] = CONTRASTIVE_READS

    def attach(self, model: nn.Module) -> None:
        """Adapt to the model before training (nothing by default)."""

    def end_step(self) -> None:
        """Commit per-step state after an optimiser step (nothing by default)."""

    @property
    def metrics(self) -> dict[str, torch.Tensor]:
        """Detached scalars of the last forward for the metrics line (none by default)."""
        return getattr(self, "_metrics", {})

    def sharded(self) -> dict[str, RowShard]:
        """Rank-local parameters by name (none by default)."""
        return {}


class ClipObjective(Objective):
    """CLIP InfoNCE over the global batch (features gathered across ranks)."""

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        image, text = out["image_features"], out["text_features"]
        return clip_loss_gathered(image, text, gather_features(image, dist), gather_features(text, dist),
                                  out["logit_scale"], dist.rank * image.shape[0])


SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)
SIGLIP_INIT_LOGIT_BIAS = -10.0
"""SigLIP's initialisation, t' = log 10 and b = -10 (Zhai et al. 2023, sec. 3.2): with b = -10 the many
negatives start near their target, so early steps are not spent pushing them down."""


class SigLIPObjective(Objective):
    """SigLIP's sigmoid loss. A SigLIP model (open_clip's `logit_bias`) uses its own scale and bias; for a CLIP
    model the objective learns its own temperature and bias, initialised as in the SigLIP paper."""

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(SIGLIP_INIT_LOGIT_SCALE))
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_LOGIT_BIAS))
        self.reads = frozenset({"image_features", "text_features"})

    def attach(self, model: nn.Module) -> None:
        if getattr(model, "logit_bias", None) is not None:
            self.register_parameter("logit_scale", None)
            self.register_parameter("logit_bias", None)
            self.reads = frozenset({"image_features", "text_features", "logit_scale", "logit_bias"})

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        scale = out["logit_scale"] if self.logit_scale is None else self.logit_scale.exp()
        bias = out["logit_bias"] if self.logit_bias is None else self.logit_bias
        image = out["image_features"]
        return siglip_loss_gathered(image, gather_features(out["text_features"], dist), scale, bias,
                                    dist.rank * image.shape[0])


class DCLObjective(Objective):
    """Decoupled contrastive loss over the global batch."""

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        image, text = out["image_features"], out["text_features"]
        return dcl_loss_gathered(image, text, gather_features(image, dist), gather_features(text, dist),
                                 out["logit_scale"], dist.rank * image.shape[0])


class NegCLIPObjective(Objective):
    """CLIP with every rank's word-order-shuffled and attribute-swapped captions as extra image->text negatives."""

    reads = CONTRASTIVE_READS | {"negative_features"}

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        image, text, negatives = out["image_features"], out["text_features"], out["negative_features"]  # (B, M, D)
        all_negatives = gather_features(negatives.flatten(0, 1), dist)  # (N*M, D)
        real = gather_detached(batch["negative_mask"].flatten(), dist)  # (N*M,)
        return negclip_loss_gathered(image, text, gather_features(image, dist), gather_features(text, dist),
                                     all_negatives[real], out["logit_scale"], dist.rank * image.shape[0])


class ALIPObjective(Objective):
    """ALIP: gated CLIP losses on the raw text and on the synthetic caption, summed.

    The gates come from similarities of the gathered features (no gradient); the running means are committed
    once per optimiser step (`end_step`), so accumulated micro-batches all see the same gates."""

    reads = CONTRASTIVE_READS | {"synthetic_features"}

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.momentum = cfg.alip.momentum
        self.register_buffer("mu", torch.full((3,), cfg.alip.init_mean))  # raw, cap, tc (ALIP_MEAN_KEYS)
        self._pending: torch.Tensor | None = None

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        image, text, caption = out["image_features"], out["text_features"], out["synthetic_features"]
        all_image, offset = local_rows(image, dist)
        all_text, all_caption = gather_features(text, dist), gather_features(caption, dist)
        with torch.no_grad():
            sample_w, raw_w, cap_w, self._pending = alip_gates(
                (all_image * all_text).sum(1), (all_image * all_caption).sum(1), (all_text * all_caption).sum(1),
                self.mu, self.momentum)
        mine, scale = slice(offset, offset + image.shape[0]), out["logit_scale"]
        raw = clip_loss_per_sample(image, text, all_image, all_text, scale, offset)  # (B,)
        cap = clip_loss_per_sample(image, caption, all_image, all_caption, scale, offset)  # (B,)
        raw_loss = (sample_w[mine] * raw_w[mine] * raw).mean()
        cap_loss = (sample_w[mine] * cap_w[mine] * cap).mean()
        # The gated losses move with the gates as the means settle; the ungated ones show the fit itself.
        self._metrics = {"alip_loss_raw": raw_loss.detach(), "alip_loss_caption": cap_loss.detach(),
                         "alip_ungated_raw": raw.detach().mean(), "alip_ungated_caption": cap.detach().mean(),
                         "alip_gate_sample": sample_w.mean(), "alip_gate_raw": raw_w.mean(),
                         "alip_gate_caption": cap_w.mean(), "alip_mu_raw": self._pending[0],
                         "alip_mu_caption": self._pending[1], "alip_mu_text_caption": self._pending[2]}
        return raw_loss + cap_loss

    @torch.no_grad()
    def end_step(self) -> None:
        if self._pending is not None:
            self.mu.copy_(self._pending)
            self._pending = None


class DreamLIPObjective(Objective):
    """DreamLIP as its authors' `ClipLoss.forward` (zyf0619sjtu/DreamLIP, open_clip/loss.py) sums it, with the
    raw caption at text position 0 and the K sub-captions after it (T = K + 1 texts per image):

    - the CLIP loss on the raw caption, divided by T as theirs is (`/ (2 * number_text)` of the two directions);
    - the multi-positive circle loss of each image against all N*T texts of the global batch, its own T texts
      positive, divided by 10;
    - the grouping loss of patch tokens against the image's T texts, over the N*T region/text pairs of the global
      batch, with a learned temperature of its own.

    Deliberate differences, each because the released code cannot run as written: the patch tokens go through a
    learned linear map into the joint space (theirs are ln_post's width-sized tokens, which only fits when the
    width equals the embedding size; ours starts as the tower's own output projection); each image's texts are
    grouped over that image's own patches (their `.view(bs, number_text, c)` of a text-major bank pairs texts
    with other images' patches); the grouping temperature is a learned scale started at 1/0.07 (theirs is
    `logit_scale_local = None`, which raises). As `alip`, `dreamlip` contains the raw caption's CLIP loss, so
    it replaces `clip` (`objective_weights` refuses both)."""

    def __init__(self, cfg: TrainConfig, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.settings = cfg.dreamlip
        self.reads = frozenset({"image_features", "text_features", "subcaption_features", "logit_scale"})
        if self.settings.grouping_weight > 0:
            self.group_logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.dreamlip.grouping_temperature)))
            self.reads |= {"patch_tokens"}

    def attach(self, model: nn.Module) -> None:
        """The token projection, sized by the image tower and started as its own output projection (so pooled
        patches begin in the joint space, as dense CLIP methods use it)."""
        if self.settings.grouping_weight <= 0:
            return
        visual = model.visual
        if not hasattr(visual, "forward_intermediates") or getattr(visual, "proj", None) is None:
            raise ValueError("DreamLIP's grouping loss needs an open_clip ViT image tower (patch tokens and a "
                             "projection); set dreamlip.grouping_weight=0 for other towers")
        self.token_proj = nn.Linear(visual.proj.shape[0], self.embed_dim, bias=False)
        with torch.no_grad():
            self.token_proj.weight.copy_(visual.proj.T)

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        cfg = self.settings
        image, raw, subcaptions = out["image_features"], out["text_features"], out["subcaption_features"]
        texts = torch.cat([raw[:, None, :], subcaptions], dim=1)  # (B, T, D): raw caption first, as theirs
        t = texts.shape[1]
        all_image, offset = local_rows(image, dist)
        clip = clip_loss_gathered(image, raw, all_image, gather_features(raw, dist), out["logit_scale"], offset)
        clip = cfg.clip_weight * clip / t
        all_texts = gather_features(texts.flatten(0, 1), dist)  # (N*T, D), image-major
        multi = dreamlip_multi_positive_gathered(image, all_texts, t, offset, cfg.gamma, cfg.margin,
                                                 cfg.multi_positive_divisor)
        self._metrics = {"dreamlip_loss_clip": clip.detach(), "dreamlip_loss_multi_positive": multi.detach()}
        loss = clip + multi
        if cfg.grouping_weight > 0:
            regions = dreamlip_regions(self.token_proj(out["patch_tokens"]), texts, cfg.grouping_threshold,
                                       cfg.grouping_norm).flatten(0, 1)  # (B*T, D)
            flat = texts.flatten(0, 1)
            group = dreamlip_grouping_gathered(regions, flat, gather_features(regions, dist),
                                               gather_features(flat, dist), self.group_logit_scale.exp(), offset * t)
            self._metrics["dreamlip_loss_grouping"] = group.detach()
            loss = loss + cfg.grouping_weight * group
        return loss


class MLCDObjective(Objective):
    """MLCD's multi-label cluster classifier on the image embedding, Partial-FC style across ranks.

    Each rank holds rows [start, stop) of the (num_centers, D) classifier, scores the gathered embeddings of the
    global batch against its sampled rows, and the per-row sums of the loss are all-reduced, so the loss (and,
    with the 1 / world_size gradient scale on the rank-local rows, every gradient) equals the single-process one.
    """

    reads = frozenset({"image_features"})

    def __init__(self, cfg: TrainConfig, embed_dim: int) -> None:
        super().__init__()
        if cfg.mlcd.num_centers is None:
            raise ValueError('objective "mlcd" needs mlcd.num_centers (the cluster stage\'s num_centers); it is None')
        dist = DistContext.current()
        self.shard = shard_range(cfg.mlcd.num_centers, dist.rank, dist.world_size)
        self.weight = nn.Parameter(init_rows(self.shard, embed_dim, cfg.seed))
        self.settings, self.seed, self.steps_done = cfg.mlcd, cfg.seed, 0
        self._register_load_state_dict_pre_hook(self._slice_full_weight)

    def sharded(self) -> dict[str, RowShard]:
        return {"weight": self.shard}

    def get_extra_state(self) -> dict[str, int]:
        return {"steps_done": self.steps_done}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.steps_done = int(state["steps_done"])

    def _slice_full_weight(self, state: dict, prefix: str, *args) -> None:  # noqa: ANN002 - torch's hook signature
        """A checkpoint holds the full classifier; keep this rank's rows."""
        key = prefix + "weight"
        if key in state and state[key].shape[0] == self.shard.total:
            state[key] = state[key][self.shard.start:self.shard.stop]

    def sampler(self, dist: DistContext) -> torch.Generator:
        """Negative sampling seeded by (seed, step, rank): accumulated micro-batches of a step draw the same."""
        seed = np.random.SeedSequence([self.seed, self.steps_done, dist.rank]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        labels = gather_detached(batch["cluster_label_ids"], dist)  # (N, k), -1 pads
        if labels.numel() and int(labels.max()) >= self.shard.total:
            raise ValueError(f"cluster label {int(labels.max())} >= mlcd.num_centers={self.shard.total}")
        mine = (labels >= self.shard.start) & (labels < self.shard.stop)
        local_labels = torch.where(mine, labels - self.shard.start, torch.full_like(labels, -1))
        weight = ScaleGrad.apply(self.weight, 1.0 / dist.world_size) if dist.world_size > 1 else self.weight
        cfg = self.settings
        s, positive = mlcd_logits(gather_features(out["image_features"], dist), weight, local_labels, cfg.scale,
                                  cfg.margin, cfg.negative_ratio, self.sampler(dist))
        neg = distributed_log1p_sum_exp(s, ~positive, dist)
        pos = distributed_log1p_sum_exp(-s, positive, dist)
        return (neg + pos).mean()

    def end_step(self) -> None:
        self.steps_done += 1


LOSSES: dict[str, Callable[[TrainConfig, int], nn.Module]] = {
    "clip": lambda cfg, embed_dim: ClipObjective(),
    "siglip": lambda cfg, embed_dim: SigLIPObjective(),
    "dcl": lambda cfg, embed_dim: DCLObjective(),
    "negclip": lambda cfg, embed_dim: NegCLIPObjective(),
    "alip": lambda cfg, embed_dim: ALIPObjective(cfg),
    "dreamlip": DreamLIPObjective,
    "mlcd": MLCDObjective,
    "protoclip": lambda cfg, embed_dim: ProtoCLIPObjective(cfg.protoclip, embed_dim),
}
"""Objective factories by config name: `factory(train_config, embed_dim) -> module`."""


RAW_CAPTION_CLIP = ("clip", "negclip", "alip", "dreamlip")
"""Objectives that each contain the CLIP loss on the raw caption: configuring two would count it twice."""


def objective_weights(cfg: TrainConfig) -> dict[str, float]:
    """Each configured objective's weight (1.0 when `objective_weights` is empty)."""
    weights = cfg.objective_weights or (1.0,) * len(cfg.objectives)
    if len(weights) != len(cfg.objectives):
        raise ValueError(f"{len(cfg.objectives)} objectives but {len(weights)} objective_weights")
    unknown = [name for name in cfg.objectives if name not in LOSSES]
    if unknown or not cfg.objectives:
        raise ValueError(f"unknown or no objectives {unknown or '()'}; choose from {sorted(LOSSES)}")
    both = [name for name in RAW_CAPTION_CLIP if name in cfg.objectives]
    if len(both) > 1:
        raise ValueError(f"objectives {' and '.join(both)} each contain the CLIP loss on the raw caption, so "
                         f"together they count it {len(both)} times; keep one of them (negclip, alip and "
                         "dreamlip each replace 'clip')")
    return dict(zip(cfg.objectives, map(float, weights), strict=True))


class WeightedObjectives(nn.Module):
    """The training loss: sum of weight x term over the configured objectives."""

    def __init__(self, cfg: TrainConfig, embed_dim: int) -> None:
        super().__init__()
        self.weights = objective_weights(cfg)
        self.terms = nn.ModuleDict({name: LOSSES[name](cfg, embed_dim) for name in self.weights})

    def attach(self, model: nn.Module) -> None:
        for term in self.terms.values():
            if hasattr(term, "attach"):
                term.attach(model)

    @property
    def reads(self) -> frozenset[str]:
        """Every `out` key some term reads."""
        return frozenset().union(*(getattr(term, "reads", CONTRASTIVE_READS) for term in self.terms.values()))

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = {name: term(out, batch, dist) for name, term in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in terms.items())
        self._monitor = {"clip_raw_unweighted": raw_caption_clip_loss(out, dist)} if "text_features" in out else {}
        return total, terms

    def metrics(self) -> dict[str, torch.Tensor]:
        """Every term's detached statistics of the last forward (ALIP's gates and means, DreamLIP's parts), and the
        plain CLIP loss on the raw caption (`raw_caption_clip_loss`), whatever the objectives."""
        own = {k: v for term in self.terms.values() for k, v in getattr(term, "metrics", {}).items()}
        return {**own, **getattr(self, "_monitor", {})}

    def end_step(self) -> None:
        for term in self.terms.values():
            if hasattr(term, "end_step"):
                term.end_step()

    def sharded(self) -> dict[str, RowShard]:
        """Rank-local parameters by their name in this module's state dict."""
        return {f"terms.{name}.{key}": shard for name, term in self.terms.items()
                for key, shard in (term.sharded() if hasattr(term, "sharded") else {}).items()}

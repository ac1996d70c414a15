"""The training objectives: one module per objective (its loss maths, its module where it holds state, its
config), and here the registry of weighted terms the training loop sums.

`LOSSES` names each objective's factory; `WeightedObjectives` is the loss the loop optimises, sum of weight x
term over the configured objectives, with the plain CLIP loss on the raw caption logged beside them. A batch grown
by NegCLIP's hard negative image pairs (training.objectives.negclip) reaches only the terms that say
`reads_pairs`; every other term, and the logged CLIP loss, sees the batch's own rows (`own_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from torch import nn

from training.distributed import DistContext, RowShard
from training.objectives.alip import ALIPObjective, weighted_clip_loss
from training.objectives.clip import ClipObjective, raw_caption_clip_loss
from training.objectives.common import CONTRASTIVE_READS
from training.objectives.dcl import DCLObjective, dcl_loss
from training.objectives.dreamlip import DreamLIPObjective, dreamlip_multi_positive_gathered
from training.objectives.mlcd import MLCDObjective, mlcd_loss
from training.objectives.negclip import NegCLIPObjective, negclip_loss, own_rows
from training.objectives.protoclip import ProtoCLIPObjective
from training.objectives.siglip import SigLIPObjective, siglip_loss


class ObjectiveSettings(Protocol):
    """What the registry reads of a run's training config (training.config.TrainConfig has it all)."""

    objectives: Mapping[str, float]
    seed: int
    alip: object
    dreamlip: object
    negclip: object
    mlcd: object
    protoclip: object


LOSSES: dict[str, Callable[[ObjectiveSettings, int], nn.Module]] = {
    "clip": lambda cfg, embed_dim: ClipObjective(),
    "siglip": lambda cfg, embed_dim: SigLIPObjective(),
    "dcl": lambda cfg, embed_dim: DCLObjective(),
    "negclip": lambda cfg, embed_dim: NegCLIPObjective(),
    "alip": lambda cfg, embed_dim: ALIPObjective(cfg.alip),
    "dreamlip": lambda cfg, embed_dim: DreamLIPObjective(cfg.dreamlip, embed_dim),
    "mlcd": lambda cfg, embed_dim: MLCDObjective(cfg.mlcd, embed_dim, cfg.seed),
    "protoclip": lambda cfg, embed_dim: ProtoCLIPObjective(cfg.protoclip, embed_dim),
}
"""Objective factories by config name: `factory(train_config, embed_dim) -> module`; each objective takes its own
config block (`train.alip`, `train.dreamlip`, ...)."""


LOSS_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "siglip": siglip_loss,
    "dcl": dcl_loss,
    "negclip": negclip_loss,
    "alip": weighted_clip_loss,
    "dreamlip": dreamlip_multi_positive_gathered,
    "mlcd": mlcd_loss,
}
"""Plain loss functions by objective name (signatures differ; the objective modules adapt `out`/`batch`)."""


RAW_CAPTION_CLIP = ("clip", "negclip", "alip", "dreamlip")
"""Objectives that each contain the CLIP loss on the raw caption: configuring two would count it twice."""


def objective_weights(cfg: ObjectiveSettings) -> dict[str, float]:
    """Each configured objective's weight, in the configured order, checked against the registry."""
    unknown = [name for name in cfg.objectives if name not in LOSSES]
    if unknown or not cfg.objectives:
        raise ValueError(f"unknown or no objectives {unknown or '()'}; choose from {sorted(LOSSES)}")
    both = [name for name in RAW_CAPTION_CLIP if name in cfg.objectives]
    if len(both) > 1:
        raise ValueError(f"objectives {' and '.join(both)} each contain the CLIP loss on the raw caption, so "
                         f"together they count it {len(both)} times; keep one of them (negclip, alip and "
                         "dreamlip each replace 'clip')")
    return {name: float(weight) for name, weight in cfg.objectives.items()}


class WeightedObjectives(nn.Module):
    """The training loss: sum of weight x term over the configured objectives."""

    def __init__(self, cfg: ObjectiveSettings, embed_dim: int) -> None:
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
        own_out, own_batch = own_rows(out, batch)  # without NegCLIP's neighbour pairs, B rows on every rank
        terms = {name: term(out, batch, dist) if getattr(term, "reads_pairs", False) else term(own_out, own_batch, dist)
                 for name, term in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in terms.items())
        self._monitor = {"clip_raw_unweighted": raw_caption_clip_loss(own_out, dist)} if "text_features" in out else {}
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

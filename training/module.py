"""The model and its objectives as one module (`TrainModule`), so DDP sees one forward and every parameter.

The model runs only the passes the configured objectives read (`TrainModule.encode`): every caption of a step
(raw text, ALIP's synthetic caption, DreamLIP's sub-captions, NegCLIP's negatives) goes through the text tower
in one batched forward. A `FeatureCache` lets the forward splice one micro-batch's features into the features
of a whole accumulated batch (training.step.accumulate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.data import TEXT_INPUTS
from training.distributed import DistContext
from training.models import encode_text_trimmed, trims_text
from training.objectives import WeightedObjectives

SHARED_OUTPUTS = ("logit_scale", "logit_bias")
"""`out` entries that are parameters, not per-sample features (never cached or spliced)."""


@dataclass
class FeatureCache:
    """open_clip's accumulation cache: every micro-batch's no-grad features, the micro-batches' labels and masks
    merged, and which micro-batch is being re-encoded with gradients."""

    features: list[dict[str, torch.Tensor]]
    batch: dict
    index: int = 0

    def splice(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The whole accumulated batch's features with micro-batch `index`'s rows replaced by `out`'s."""
        j = self.index
        return {k: v if k in SHARED_OUTPUTS else
                torch.cat([f[k] for f in self.features[:j]] + [v] + [f[k] for f in self.features[j + 1:]])
                for k, v in out.items()}



class TrainModule(nn.Module):
    """The model and its objectives as one module, so DDP sees one forward and every parameter."""

    def __init__(self, model: nn.Module, objectives: WeightedObjectives, dist: DistContext) -> None:
        super().__init__()
        self.model = model
        self.objectives = objectives
        self.dist = dist
        objectives.attach(model)
        self.reads = objectives.reads

    def encode_image(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if "patch_tokens" not in self.reads:
            return {"image_features": self.model.encode_image(image, normalize=True)}  # (B, D)
        # DreamLIP's grouping loss also needs the patch tokens: the last block's, after ln_post, as open_clip's
        # output_tokens gives them; the pooled features are exactly encode_image's.
        o = self.model.visual.forward_intermediates(image, indices=1, output_fmt="NLC", normalize_intermediates=True)
        return {"image_features": F.normalize(o["image_features"], dim=-1),  # (B, D)
                "patch_tokens": o["image_intermediates"][-1]}  # (B, P, width)

    def encode_texts(self, batch: dict) -> dict[str, torch.Tensor]:
        """Every caption the objectives read; per-image groups as (B, K, D).

        A causal open_clip text tower (`trims_text`) encodes each kind of caption in its own forward, cut to
        that kind's longest caption (`encode_text_trimmed`, exact): ALIP's synthetic captions are a third of
        the alt-texts' length. Any other text tower gets every caption in ONE forward, as before."""
        keys = [k for k, name in TEXT_INPUTS.items() if k in batch and name in self.reads]
        if not keys:
            return {}
        tokens = [batch[k] for k in keys]
        if trims_text(self.model):
            parts = [encode_text_trimmed(self.model, t, normalize=True) for t in tokens]
        else:
            features = self.model.encode_text(tokens[0] if len(tokens) == 1 else torch.cat(tokens), normalize=True)
            parts = features.split([t.shape[0] for t in tokens])
        rows, out = batch["image"].shape[0], {}
        for key, part in zip(keys, parts, strict=True):
            out[TEXT_INPUTS[key]] = part if part.shape[0] == rows and key in ("text", "synthetic_text") \
                else part.reshape(rows, -1, part.shape[-1])
        return out

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        """`out`: the features of this batch the objectives read, and the temperature (and bias). When no
        objective reads the raw caption (MLCD alone), it is encoded without a gradient for the logged CLIP loss."""
        out = {**self.encode_image(batch["image"]), **self.encode_texts(batch),
               "logit_scale": self.model.logit_scale.exp()}
        if "text_features" not in out and "text" in batch:
            with torch.no_grad():  # encode_text_trimmed falls back to encode_text for towers it cannot cut
                out["text_features"] = encode_text_trimmed(self.model, batch["text"], normalize=True)
        if getattr(self.model, "logit_bias", None) is not None:
            out["logit_bias"] = self.model.logit_bias
        return out

    def forward(self, batch: dict, cache: FeatureCache | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.encode(batch)
        if cache is not None:
            out, batch = cache.splice(out), cache.batch
        return self.objectives(out, batch, self.dist)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters each accumulated micro-batch's loss depends on in full (temperatures, biases, objectives')."""
        own = [p for p in (self.model.logit_scale, getattr(self.model, "logit_bias", None)) if p is not None]
        return own + list(self.objectives.parameters())

    def sharded_parameters(self) -> list[nn.Parameter]:
        """Rank-local parameters (kept out of DDP; their gradient norm is summed over ranks)."""
        return [self.objectives.get_parameter(name) for name in self.objectives.sharded()]

    def may_leave_parameters_unused(self) -> bool:
        """True when no objective reads the text tower, the temperature or the model's bias (DDP must know)."""
        text = any(name in self.reads for name in TEXT_INPUTS.values())
        bias = getattr(self.model, "logit_bias", None) is not None and "logit_bias" not in self.reads
        return not text or "logit_scale" not in self.reads or bias

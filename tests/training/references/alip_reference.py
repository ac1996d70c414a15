"""Independent reference transcription of ALIP's training-step loss and gates.

Source (read directly, not from the paper):
    repository  deepglint/ALIP
    commit      c5079153c50231b19593b9f8e4bb1e37dd2e9508 (the repo's only commit, 2023-08-22)
    files       train.py            -> main(): lines 106 and 114-156 (gates, running means, loss sum)
                src/open_alip/loss.py -> Adaptive_loss.forward (lines 84-120), gather_features (17-61)
                src/open_alip/model.py -> ALIP.forward (533-548), logit_scale init (474, 482)

What the authors' step computes (single process; the maths is re-written here, not copied):

1. Features (model.py, ALIP.forward): image, raw-text (tokens [:, :77]) and caption
   (tokens [:, 77:]) embeddings are each ``F.normalize(..., dim=-1)``; the model returns
   ``self.logit_scale.exp()`` (parameter initialised to log(1/0.07)).  So ``logit_scale`` below
   is the exponentiated scale.  After each optimizer step train.py clamps the *parameter*:
   ``logit_scale.clamp_(0, math.log(100))`` (train.py ~line 168) -- that is outside this
   function; no clamp is applied to the value passed in here.

2. Running means (train.py line 106): ``momentum_sim_raw, momentum_sim_caption, momentum_sim = 1, 1, 1``
   -- three scalars, initial value 1 (a Python int, becomes a tensor after the first step).
   They live across the whole run (never reset per epoch).  Here they are the dict
       means = {"text_caption": m_tc, "image_raw": m_ir, "image_caption": m_ic}
   mapping to the authors' momentum_sim, momentum_sim_raw, momentum_sim_caption.
   ``means=None`` means the authors' initial state (all 1.0).

3. Everything for gates/means is inside ``torch.no_grad()`` (train.py line 114) -> detached.
   Per-pair cosine similarities over the (gathered) batch (row-wise dot products):
       s_tc[i] = <raw_i, cap_i>    (cur_sim)
       s_ir[i] = <raw_i, img_i>    (cur_sim_raw)
       s_ic[i] = <cap_i, img_i>    (cur_sim_caption)
   ORDER: each running mean is updated FIRST, from the batch mean of its similarity, and the
   gate is then computed against the UPDATED mean:
       m <- 0.01 * mean_i(s[i]) + 0.99 * m          (momentum 0.99, new-value weight 0.01)

4. Language consistency gate (sample weight), train.py lines 131-137:
       w_raw_sample[i] = exp(s_tc[i] - m_tc) ** 2             (== exp(2 (s_tc - m_tc)))
       weight_sample[i] = w_raw_sample[i] if w_raw_sample[i] < 1 else 1   (i.e. min(., 1))

5. Description consistency gate (pair weights), train.py lines 139-150:
       w_ir[i] = exp(s_ir[i] - m_ir) ** 2   ;  w_ic[i] = exp(s_ic[i] - m_ic) ** 2
       weight_raw[i]     = w_ir[i] if w_raw_sample[i] < 1 else 1
       weight_caption[i] = w_ic[i] if w_raw_sample[i] < 1 else 1
   NOTE: the condition is on the *language* gate's un-clamped value (w_raw_sample < 1, i.e.
   s_tc < m_tc, strict), NOT on the pair weight itself; and the pair weights are NOT
   clamped to <= 1 (they can exceed 1 when s_ir > m_ir).

6. Adaptive contrastive loss (loss.py, Adaptive_loss.forward), called once per text branch
   with inputs ``.float()``-cast (train.py lines 154-155):
       L_img2txt = logit_scale * img @ txt.T ;  L_txt2img = logit_scale * txt @ img.T
       per_row[i] = (CE(L_img2txt, arange)[i] + CE(L_txt2img, arange)[i]) / 2
                    (``F.cross_entropy(..., reduce=False)`` == reduction='none')
       loss_branch = mean_i( per_row[i] * weight_sample[i] * weight_pair[i] )
   Both directions get the SAME per-row weight (row i = pair i); it is the average of the two
   directions that is weighted; reduction is a plain mean over the N rows (not divided by
   the weight sum).
       loss_laion   = branch(img, raw, weight_pair=weight_raw)
       loss_caption = branch(img, cap, weight_pair=weight_caption)
       loss = loss_laion + loss_caption        (plain sum, no coefficients; train.py line 156)

Distributed mode (what matters for matching values):
  * train.py gathers raw/caption/image embeddings from all ranks (no grad, ``dist.all_gather``)
    before computing similarities, so the three batch means and all weights are over the
    GLOBAL batch and the weight vectors have length N_global = world_size * B.  The running
    means therefore stay identical on every rank.
  * Adaptive_loss with the shipped settings (local_loss=False, gather_with_grad=False) gathers
    features again (local slice kept with grad) and builds the full N_global x N_global logits
    on every rank, so each rank's loss value equals the single-process loss on the
    concatenated global batch -> calling this function on the concatenated features gives the
    same loss value and means.  (Gradients only flow through the local slice; DDP averages.)
  * With local_loss=True the per-row loss has length B but the weights length N_global, so the
    authors' code would fail to broadcast for world_size > 1 -- effectively unsupported.

Ambiguities / caveats:
  * Precision: the model runs under ``torch.cuda.amp.autocast``; the gate block runs outside
    autocast on whatever dtype the normalised embeddings have (likely fp32 since F.normalize's
    norm is promoted), while the loss explicitly uses ``.float()``.  Here the gates are
    computed in the input dtype and the loss in float32.
  * ``--local-loss`` / ``--gather-with-grad`` are argparse options with no ``type``, so any
    passed string is truthy; the shipped script passes neither (both False).
  * The running means are reported only as Python/tensor scalars; they are not checkpointed
    by the authors (resume would restart them at 1).
  * ``torch.where(x < 1, x, 1)`` propagates NaN as 1 (NaN < 1 is False); the same here.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F

# The authors' names for the three running means: momentum_sim, momentum_sim_raw, momentum_sim_caption.
MEAN_KEYS = ("text_caption", "image_raw", "image_caption")
ALIP_INITIAL_MEAN = 1.0
ALIP_MOMENTUM = 0.99  # weight on the previous running mean; the batch mean gets 1 - 0.99 = 0.01

Scalar = Union[float, torch.Tensor]


def alip_initial_means() -> Dict[str, float]:
    """The authors' starting state (train.py line 106: all three set to 1)."""
    return {k: ALIP_INITIAL_MEAN for k in MEAN_KEYS}


def _ema(previous: Scalar, batch_mean: torch.Tensor) -> torch.Tensor:
    # train.py: momentum = cur_mean * 0.01 + momentum * 0.99
    return batch_mean * 0.01 + previous * 0.99


def _rowwise_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=1)


def _branch_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: Scalar,
    pair_weight: torch.Tensor,
    sample_weight: torch.Tensor,
) -> torch.Tensor:
    """Adaptive_loss.forward, single process: weighted mean of the per-row symmetric CE."""
    img = image.float()
    txt = text.float()
    targets = torch.arange(img.shape[0], device=img.device)
    img_to_txt = logit_scale * (img @ txt.t())
    txt_to_img = logit_scale * (txt @ img.t())
    per_row = 0.5 * (
        F.cross_entropy(img_to_txt, targets, reduction="none")
        + F.cross_entropy(txt_to_img, targets, reduction="none")
    )
    return (per_row * sample_weight * pair_weight).mean()


def alip_reference_gates(
    image: torch.Tensor,
    raw_text: torch.Tensor,
    caption: torch.Tensor,
    means: Optional[Dict[str, Scalar]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Gates and running-mean update exactly as train.py (no grad; means updated before use).

    Returns (weight_sample, weight_raw, weight_caption, new_means, diagnostics).
    """
    if means is None:
        means = alip_initial_means()
    with torch.no_grad():
        img, raw, cap = image.detach(), raw_text.detach(), caption.detach()

        sim_tc = _rowwise_dot(raw, cap)   # language consistency (raw text vs caption)
        sim_ir = _rowwise_dot(raw, img)   # raw text vs image
        sim_ic = _rowwise_dot(cap, img)   # caption vs image

        batch_tc, batch_ir, batch_ic = sim_tc.mean(), sim_ir.mean(), sim_ic.mean()
        # Update first, then gate against the updated means.
        m_tc = _ema(means["text_caption"], batch_tc)
        m_ir = _ema(means["image_raw"], batch_ir)
        m_ic = _ema(means["image_caption"], batch_ic)

        one = torch.ones_like(sim_tc)
        sample_raw = torch.exp(sim_tc - m_tc) ** 2
        below = sample_raw < 1                      # the single condition used by all three gates
        weight_sample = torch.where(below, sample_raw, one)

        pair_raw = torch.exp(sim_ir - m_ir) ** 2
        pair_cap = torch.exp(sim_ic - m_ic) ** 2
        weight_raw = torch.where(below, pair_raw, one)       # not clamped: may exceed 1
        weight_caption = torch.where(below, pair_cap, one)   # not clamped: may exceed 1

    new_means = {"text_caption": m_tc, "image_raw": m_ir, "image_caption": m_ic}
    diagnostics = {
        "sim_text_caption": sim_tc,
        "sim_image_raw": sim_ir,
        "sim_image_caption": sim_ic,
        "batch_mean_text_caption": batch_tc,
        "batch_mean_image_raw": batch_ir,
        "batch_mean_image_caption": batch_ic,
        "weight_sample_unclamped": sample_raw,
        "weight_sample": weight_sample,
        "weight_raw": weight_raw,
        "weight_caption": weight_caption,
        "weight_sample_mean": weight_sample.mean(),
        "weight_raw_mean": weight_raw.mean(),
        "weight_caption_mean": weight_caption.mean(),
    }
    return weight_sample, weight_raw, weight_caption, new_means, diagnostics


def alip_reference_step(
    image: torch.Tensor,
    raw_text: torch.Tensor,
    caption: torch.Tensor,
    logit_scale: Scalar,
    means: Optional[Dict[str, Scalar]] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """One ALIP training-step loss, single process (or the concatenated global batch).

    image, raw_text, caption: L2-normalised (B, D) features, row i is one sample.
    logit_scale: the exponentiated temperature scale (as the model returns it).
    means: {"text_caption", "image_raw", "image_caption"} running means (authors'
        momentum_sim, momentum_sim_raw, momentum_sim_caption); None -> initial 1.0 each.

    Returns (loss, new_means, diagnostics); loss = loss_laion + loss_caption and carries
    gradients w.r.t. the features / logit_scale (the weights are detached).
    """
    weight_sample, weight_raw, weight_caption, new_means, diag = alip_reference_gates(
        image, raw_text, caption, means
    )
    loss_laion = _branch_loss(image, raw_text, logit_scale, weight_raw, weight_sample)
    loss_caption = _branch_loss(image, caption, logit_scale, weight_caption, weight_sample)
    loss = loss_laion + loss_caption
    diag["loss_laion"] = loss_laion
    diag["loss_caption"] = loss_caption
    return loss, new_means, diag

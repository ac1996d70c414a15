"""Independent reference transcription of DreamLIP's training losses (and its sub-caption sampling).

Source (read directly from the authors' code, not from the paper):
    repository  zyf0619sjtu/DreamLIP
    commit      d2aeea85a216b86cce43e53e279f4f4643a48d27 (HEAD when read); every code file below was
                last changed in 84e073a8d135ed11c223d7aceef66995f5f705a1 ("release pretrained weights",
                2024-07-16) -- the only commit that touches them.
    files       open_clip/loss.py      ClipLoss.__init__ (line 102 ff.), ClipLoss.forward (295-408),
                                       ClipLoss.pairwise_circleloss (269-293),
                                       ClipLoss.pairwise_contrastive_loss (257-267),
                                       ClipLoss.get_ground_truth_multicap (190-200)
                open_clip/factory.py   create_loss (328-375): CLI args -> ClipLoss kwargs
                open_clip/model.py     CLIP.__init__ (logit_scale, logit_scale_local, 286-287),
                                       CLIP.encode_image / encode_text / forward (310-389)
                open_clip/transformer.py  VisionTransformer.forward (503-549), _global_pool
                training/train.py      train_one_epoch: ``total_loss = sum(losses.values())`` (line 120),
                                       logit-scale clamps (lines 199-202)
                training/params.py     defaults of --num_text, --merged_num, --sgl_delta, --sgl_norm,
                                       --clip_lossweight, --sgl_lossweight, --margin, --gamma
                training/data.py       CsvDataset / TxtDataset / JsonDataset: split_caption, draw_numbers,
                                       __getitem__
The maths below is re-written in my own code; nothing is copied verbatim.

Layout of the authors' inputs to the loss (model.py CLIP.forward, data.py __getitem__):
  * each sample's text tensor is ``tokenize([raw_caption] + K sampled sub-captions)`` -> (K+1, 77), so
    the loss receives text_features of shape (B, T, D) with T = K + 1 ("number_text" in loss.py); index
    0 is the raw/original caption, 1..K are the sub-captions.  Default K = --num_text = 6, so T = 7.
  * image_features (B, D), text_features (B, T, D): both L2-normalised by the model (normalize=True).
  * logit_scale = exp(parameter), parameter initialised to log(1/0.07); train.py clamps the parameter to
    [0, ln 100] after every step.
  * patch tokens ("local_image_features"): VisionTransformer returns ``tokens = ln_post(x)[:, 1:]``
    (pool_type 'tok': CLS dropped), WITHOUT any projection -- only the CLS token goes through ``proj``;
    a separate ``proj2`` is commented out both in __init__ and at ``return pooled, tokens #@ self.proj2``.
    encode_image L2-normalises the tokens (normalize=True), and the loss normalises them again.
    See AMBIGUITIES (2).

What the authors' step computes (single process, world_size == 1; with world_size > 1 the same global
quantities are computed on every rank over the all-gathered batch, so B below is the global batch):

(A) CLIP loss on the raw caption (key 'CLIP_loss', always on in the long-caption path):
        L_clip = clip_lossweight * [CE(s * I @ R^T, arange) + CE(s * R @ I^T, arange)] / (2 * T)
    I = image features (B, D), R = raw-caption features (B, D), s = logit_scale, CE mean over rows.
    NOTE the divisor is 2*T (= 14 by default), not 2.

(A') optional '(De)CLIP_loss' (--use_declip_loss, default off): for every sub-caption k = 1..K the same
    symmetric CLIP loss between I and sub-caption k, each divided by (2*T), summed, times
    clip_lossweight.

(B) Multi-positive circle loss image -> all texts (key 'I2mT_loss', --use_multipos_loss):
    the text bank is t-major: bank[t*B + b] = text_features[b, t] for t = 0..T-1 (raw caption
    INCLUDED), shape (T*B, D).  S = I @ bank^T, (B, T*B), raw cosines (no logit scale).
    Positive mask P[i, t*B + b] = 1 iff b == i (so each image has T positives: its raw caption and its K
    sub-captions); every other column of the batch is a negative.
    Circle loss (pairwise_circleloss), row-wise, with margin m and scale gamma:
        s_p = S * P,  s_n = S * (1 - P)
        a_p = max(0, 1 + m - s_p)   (detached),  a_n = max(0, s_n + m)   (detached)
        logit_p = -gamma * a_p * (s_p - (1 - m)) - 99999999 * (1 - P)
        logit_n =  gamma * a_n * (s_n - m)       - 99999999 * P
        loss_i  = softplus( logsumexp_j logit_p[i, j] + logsumexp_j logit_n[i, j] )
        L_mp    = mean_i loss_i / 10.0
    (the "/ 10.0" is hard-coded at the call site; there is no separate weight argument).

(C) Sub-caption-specific grouping loss (key 'finegrained_loss', --use_finegrained_loss):
        X = normalize(patch tokens) (B, P, D);  Tg = normalize(texts) (B, T, D)  (raw caption included)
        sim[b, t, p] = <Tg[b, t], X[b, p]>
        w = (sim - min_p sim) / (max_p sim - min_p sim + 1e-10)     ('minmax'; else softmax over p)
        thr = 1/P if sgl_delta < 0 else sgl_delta;  w[w < thr] = 0;  w = w / sum_p w   (no epsilon)
        region[b, t] = normalize( sum_p w[b, t, p] X[b, p] )
        flatten both to (B*T, D) (row k = b*T + t) and take the symmetric InfoNCE over ALL B*T pairs:
        L_sgl = sgl_lossweight * 0.5 * [CE(s_l * Tg_f @ Rg_f^T, arange) + CE(s_l * Rg_f @ Tg_f^T, arange)]
    (targets are passed as an identity matrix of floats, i.e. soft-label CE, which equals index CE with
    mean reduction.)  s_l = logit_scale_local -- see AMBIGUITIES (3).

(D) Total (train.py train_one_epoch): ``total_loss = sum(losses.values())`` over the dict returned by
    ClipLoss.forward, i.e.  L = L_clip [+ L_declip] [+ L_mp] [+ L_sgl]  -- no further weights than the
    clip_lossweight / sgl_lossweight already folded in and the fixed 1/10 on L_mp.

Hyper-parameter defaults (value, where it comes from):
    gamma = 32           training/params.py --gamma (type=int, default 32); ClipLoss.__init__ default 32;
                         pairwise_circleloss's own default 64 is never used (the call passes self.gamma).
    margin = 0.25        training/params.py --margin; ClipLoss default 0.25; circleloss default 0.25.
    1/10 on I2mT_loss    hard-coded in ClipLoss.forward.
    sgl_delta = 0.0      training/params.py --sgl_delta default 0.0 (passed by factory.create_loss);
                         ClipLoss.__init__'s own default 0.1 is therefore overridden.  With 0.0 the
                         threshold never zeroes anything (min-max values are >= 0).
    sgl_norm = 'minmax'  training/params.py --sgl_norm; ClipLoss default 'minmax'.
    clip_lossweight = 1.0, sgl_lossweight = 1.0   training/params.py and ClipLoss defaults.
    num_text K = 6       training/params.py --num_text default 6  (T = K + 1 = 7 texts per image).
    merged_num = 1       training/params.py --merged_num default 1.
    logit_scale init 1/0.07, clamp of log-scale to [0, ln 100] after each step: model.py / train.py.
    Flags --use_longcap / --use_multipos_loss / --use_finegrained_loss / --use_declip_loss are
    store_true (default False) in params.py and the repository ships no training script that sets
    them, so which combination produced the paper's numbers is not in the code.

AMBIGUITIES / defects in the released code (important for anyone testing against this file):
 (1) Reshape quirk in the grouping loss.  The text bank is stacked t-major (T, B, D) and flattened to
     (T*B, D); the grouping code then does ``.view(bs, number_text, c)`` on it, which is NOT the inverse
     of that flattening: row (i, j) of the (B, T, D) view is bank[i*T + j] = text (b=(i*T+j) % B,
     t=(i*T+j) // B), and it is grouped over the patches of image i.  So for T > 1 and B > 1, most
     "positive" pairs pool patches of one image with a text of another image.  This is almost surely a
     bug; the intended (per-image) semantics is sim[b, t, :] = text (b, t) vs patches of image b.
     ``dreamlip_grouping_reference(..., authors_reshape_quirk=False)`` (default) gives the intended
     semantics; ``authors_reshape_quirk=True`` reproduces the released code's tensor layout exactly.
     (In the final contrast the (B*T) flattening is the inverse of that view, so in quirk mode the text
     side is just the t-major bank and region k is built from image k // T.)
 (2) Patch tokens are not in the joint space in the released code: they are ln_post outputs of width
     768 (ViT-B/16) while text features are 512-d; the loss's ``.view(B, number_img, -1, c)`` with
     c = 512 silently re-chunks the 196x768 token memory into 294 pseudo-"patches" of 512 values.
     There is no projection.  A commented-out ``proj2`` suggests a separate learned (768 -> 512)
     projection was intended.  This reference takes patch tokens already in the joint space, (B, P, D),
     and L2-normalises them (as encode_image and the loss both do).
 (3) logit_scale_local: CLIP.__init__ sets ``self.logit_scale_local = None`` (the learned parameter
     ``nn.Parameter(ones * log(1/0.07))`` is commented out), so forward passes None and
     ``pairwise_contrastive_loss`` computes ``None * features`` -> TypeError: the released code cannot
     run --use_finegrained_loss as shipped.  The evident intent (commented line + the clamp in
     train.py) is a learned temperature, init exp(log(1/0.07)) = 14.2857, log clamped to [0, ln 100]
     (so at most 100).  pairwise_contrastive_loss's own default would be 1.0.  This reference makes the
     scale a required argument.
 (4) The raw caption (text index 0) is among the positives of the multi-positive loss and among the
     "sub-captions" of the grouping loss; the CLIP loss uses it alone and is divided by 2*T.
 (5) get_ground_truth_multicap caches the mask per device without checking its size (cache_labels=True
     in create_loss): fine with drop_last=True, wrong if B ever changed.
 (6) With world_size > 1 and gather_with_grad=False, gathered features of other ranks carry no gradient
     (standard open_clip behaviour); values are unchanged.  Only single-process maths is modelled here.
 (7) Under autocast the -99999999 masking constant is fp32 (the mask is a long tensor, promoted); in
     fp32 the masked logsumexp terms underflow to exactly 0 contribution.  Reproduced here in fp32.

Sub-caption sampling (training/data.py, CsvDataset/TxtDataset/JsonDataset.__getitem__ with use_longcap):
  * sentences: the six MLLM captions (short+long of InstructBLIP, LLaVA-1.5, ShareGPT4V; order
    shortIB, longIB, shortSV, longSV, shortLLA, longLLA in CsvDataset; IB, LLA, SV (short, long each) in
    Txt/JsonDataset) are each split with ``re.split(r'\\n|</s>|[.]', text)``, pieces stripped, empties
    dropped, and the lists concatenated (duplicates kept).  The raw caption is NOT split and not in pool.
  * draw_numbers(n, k): population = range(n) with n = len(sentences) - 1 (so the LAST sentence of the
    pool is never drawn -- off-by-one); if n >= k: ``random.sample`` (without replacement), else
    ``random.choices`` (with replacement; n == 0 raises IndexError).  Uses Python's global ``random``.
  * merged_num == 1: sub-captions = the k drawn sentences; merged_num = m > 1: n = len - m - 1 start
    indices, each sub-caption = '. '.join(sentences[s:s+m]).
  * returned captions = [raw_caption] + K sub-captions, K = num_text (6), tokenised together.
  See ``dreamlip_split_caption`` / ``dreamlip_sample_captions`` below.
"""

from __future__ import annotations

import random
import re
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "DREAMLIP_DEFAULTS",
    "dreamlip_split_caption",
    "dreamlip_sample_captions",
    "dreamlip_clip_loss_reference",
    "dreamlip_declip_loss_reference",
    "dreamlip_pairwise_circle_loss",
    "dreamlip_multi_positive_reference",
    "dreamlip_grouping_reference",
    "dreamlip_total_reference",
]

DREAMLIP_DEFAULTS = {
    "gamma": 32.0,          # params.py --gamma
    "margin": 0.25,         # params.py --margin
    "multipos_divisor": 10.0,  # hard-coded '/ 10.0' in ClipLoss.forward
    "sgl_delta": 0.0,       # params.py --sgl_delta (ClipLoss's own default 0.1 is overridden)
    "sgl_norm": "minmax",   # params.py --sgl_norm
    "clip_lossweight": 1.0,  # params.py --clip_lossweight
    "sgl_lossweight": 1.0,  # params.py --sgl_lossweight
    "num_text": 6,          # params.py --num_text (sub-captions per image; T = num_text + 1)
    "merged_num": 1,        # params.py --merged_num
    "init_logit_scale": 1.0 / 0.07,  # model.py init_logit_scale = log(1/0.07), exponentiated
    "max_logit_scale": 100.0,        # train.py clamps log-scale to [0, ln 100]
    "minmax_eps": 1e-10,    # epsilon in the min-max normalisation
    "mask_value": -99999999.0,  # masking constant in pairwise_circleloss
}

_SPLIT_RE = re.compile(r"\n|</s>|[.]")


# --------------------------------------------------------------------------------------------------
# data.py: sub-caption sampling
# --------------------------------------------------------------------------------------------------
def dreamlip_split_caption(text: str) -> List[str]:
    """data.py ``split_caption``: split on newline, '</s>' or '.', strip, drop empty pieces."""
    return [piece.strip() for piece in _SPLIT_RE.split(text) if piece.strip()]


def _draw_numbers(n: int, k: int, rng) -> List[int]:
    """data.py ``draw_numbers``: k indices from range(n); without replacement if n >= k else with."""
    population = list(range(n))
    if n >= k:
        return rng.sample(population, k)
    return rng.choices(population, k=k)


def dreamlip_sample_captions(
    raw_caption: str,
    long_captions: Sequence[str],
    *,
    num_text: int = 6,
    merged_num: int = 1,
    rng=random,
) -> List[str]:
    """[raw_caption] + ``num_text`` sub-captions, as data.py's __getitem__ (use_longcap) builds them.

    ``long_captions`` are the MLLM captions in the dataset's order (each is split into sentences and the
    sentence lists are concatenated). Note the authors' off-by-one: the pool's last sentence is never
    drawn (population is range(len - 1), or range(len - merged_num - 1) for merged_num > 1).
    """
    sentences: List[str] = []
    for caption in long_captions:
        sentences += dreamlip_split_caption(caption)
    captions = [str(raw_caption)]
    if merged_num == 1:
        captions += [sentences[i] for i in _draw_numbers(len(sentences) - 1, num_text, rng)]
    else:
        for start in _draw_numbers(len(sentences) - merged_num - 1, num_text, rng):
            captions.append(". ".join(sentences[start:start + merged_num]))
    return captions


# --------------------------------------------------------------------------------------------------
# loss.py: helpers
# --------------------------------------------------------------------------------------------------
def _texts_b_t(raw_caption_features: Optional[torch.Tensor], subcaption_features: torch.Tensor) -> torch.Tensor:
    """(B, T, D) with the raw caption at t = 0 (the authors' layout), or only the sub-captions."""
    if subcaption_features.dim() != 3:
        raise ValueError("subcaption_features must be (B, K, D)")
    if raw_caption_features is None:
        return subcaption_features
    return torch.cat([raw_caption_features.unsqueeze(1), subcaption_features], dim=1)


def _t_major_bank(texts_btd: torch.Tensor) -> torch.Tensor:
    """Authors' text bank: row t*B + b holds text (b, t); shape (T*B, D)."""
    b, t, d = texts_btd.shape
    return texts_btd.transpose(0, 1).reshape(t * b, d)


def _symmetric_ce(a: torch.Tensor, b: torch.Tensor, scale) -> torch.Tensor:
    """CE(scale * a b^T) + CE(scale * b a^T), diagonal targets, mean over rows (sum of both terms)."""
    target = torch.arange(a.shape[0], device=a.device)
    logits_ab = scale * (a @ b.t())
    logits_ba = scale * (b @ a.t())
    return F.cross_entropy(logits_ab, target) + F.cross_entropy(logits_ba, target)


# --------------------------------------------------------------------------------------------------
# (A) CLIP loss on the raw caption, (A') optional DeCLIP-style sub-caption CLIP terms
# --------------------------------------------------------------------------------------------------
def dreamlip_clip_loss_reference(
    image_features: torch.Tensor,
    raw_caption_features: torch.Tensor,
    logit_scale,
    *,
    number_text: int,
    clip_lossweight: float = 1.0,
) -> torch.Tensor:
    """ClipLoss.forward 'CLIP_loss': clip_lossweight * (CE_i2t + CE_t2i) / (2 * number_text).

    ``number_text`` = T = K + 1 (raw caption + K sub-captions), 7 with the default --num_text 6.
    Features are used as given (the model already L2-normalised them); ``logit_scale`` exponentiated.
    """
    return clip_lossweight * _symmetric_ce(image_features, raw_caption_features, logit_scale) / (2 * number_text)


def dreamlip_declip_loss_reference(
    image_features: torch.Tensor,
    subcaption_features: torch.Tensor,
    logit_scale,
    *,
    number_text: int,
    clip_lossweight: float = 1.0,
) -> torch.Tensor:
    """ClipLoss.forward '(De)CLIP_loss' (--use_declip_loss, single image view): for each sub-caption k
    the symmetric CLIP loss between images and sub-caption k, each / (2 * number_text), summed."""
    total = image_features.new_zeros(())
    for k in range(subcaption_features.shape[1]):
        total = total + _symmetric_ce(image_features, subcaption_features[:, k], logit_scale) / (2 * number_text)
    return clip_lossweight * total


# --------------------------------------------------------------------------------------------------
# (B) multi-positive circle loss
# --------------------------------------------------------------------------------------------------
def dreamlip_pairwise_circle_loss(
    sim: torch.Tensor,
    is_pos: torch.Tensor,
    *,
    margin: float = 0.25,
    gamma: float = 32.0,
) -> torch.Tensor:
    """ClipLoss.pairwise_circleloss: row-wise circle loss over a similarity matrix and a 0/1 mask.

    a_p = relu(1 + m - s_p).detach(), a_n = relu(s_n + m).detach(), targets O_p = 1 - m, O_n = m;
    loss = mean_rows softplus(LSE(-gamma a_p (s_p - O_p)) + LSE(gamma a_n (s_n - O_n))), the LSEs being
    restricted to the positive / negative entries by adding -99999999 elsewhere (as the authors do).
    """
    pos = is_pos.to(sim.dtype)
    neg = 1.0 - pos
    s_p = sim * pos
    s_n = sim * neg
    a_p = (1.0 + margin - s_p.detach()).clamp_min(0.0)
    a_n = (s_n.detach() + margin).clamp_min(0.0)
    big = DREAMLIP_DEFAULTS["mask_value"]
    logit_p = -gamma * a_p * (s_p - (1.0 - margin)) + big * (1.0 - pos)
    logit_n = gamma * a_n * (s_n - margin) + big * (1.0 - neg)
    per_row = F.softplus(torch.logsumexp(logit_p, dim=1) + torch.logsumexp(logit_n, dim=1))
    return per_row.mean()


def dreamlip_multi_positive_reference(
    image_features: torch.Tensor,
    subcaption_features: torch.Tensor,
    raw_caption_features: Optional[torch.Tensor] = None,
    *,
    gamma: float = 32.0,
    margin: float = 0.25,
    divisor: float = 10.0,
) -> torch.Tensor:
    """ClipLoss.forward 'I2mT_loss': circle loss of each image against every text of the batch.

    image_features (B, D), subcaption_features (B, K, D), raw_caption_features (B, D).  Pass the raw
    caption to get the authors' behaviour (their positives are the raw caption AND the K sub-captions of
    the same image; T = K + 1); with None only the K sub-captions are used.  Similarities are raw dot
    products (no logit scale, no re-normalisation).  Result = circle loss (mean over images) / divisor.
    """
    texts = _texts_b_t(raw_caption_features, subcaption_features)
    bsz, n_t, _ = texts.shape
    bank = _t_major_bank(texts)                      # (T*B, D), row t*B + b
    sim = image_features @ bank.t()                  # (B, T*B)
    owner = torch.arange(bsz, device=sim.device).repeat(n_t)   # column t*B + b belongs to image b
    is_pos = (owner.unsqueeze(0) == torch.arange(bsz, device=sim.device).unsqueeze(1)).to(sim.dtype)
    return dreamlip_pairwise_circle_loss(sim, is_pos, margin=margin, gamma=gamma) / divisor


# --------------------------------------------------------------------------------------------------
# (C) sub-caption-specific grouping loss
# --------------------------------------------------------------------------------------------------
def dreamlip_grouping_reference(
    patch_tokens: torch.Tensor,
    subcaption_features: torch.Tensor,
    raw_caption_features: Optional[torch.Tensor],
    logit_scale_local,
    *,
    sgl_delta: float = 0.0,
    sgl_norm: str = "minmax",
    sgl_lossweight: float = 1.0,
    authors_reshape_quirk: bool = False,
) -> torch.Tensor:
    """ClipLoss.forward 'finegrained_loss'.

    patch_tokens (B, P, D) already in the joint space (the released code has no projection -- see module
    docstring (2)); subcaption_features (B, K, D); raw_caption_features (B, D) or None (the authors
    include the raw caption as text t = 0 -- pass it for their behaviour); logit_scale_local: the
    (exponentiated) temperature of the region/text contrast -- required, since the released code passes
    None here (module docstring (3)); intended value is a learned scale initialised at 1/0.07.

    authors_reshape_quirk=False: text (b, t) is grouped over the patches of image b (intended meaning).
    authors_reshape_quirk=True: reproduce the released code's ``.view(B, T, D)`` of the t-major bank
    (module docstring (1)).
    """
    texts = _texts_b_t(raw_caption_features, subcaption_features)
    bsz, n_t, dim = texts.shape
    if authors_reshape_quirk:
        texts = _t_major_bank(texts).reshape(bsz, n_t, dim)
    patches = F.normalize(patch_tokens, p=2, dim=-1)
    texts = F.normalize(texts, p=2, dim=-1)

    sim = torch.einsum("btd,bpd->btp", texts, patches)          # (B, T, P)
    if sgl_norm == "minmax":
        lo = sim.min(dim=-1, keepdim=True).values
        hi = sim.max(dim=-1, keepdim=True).values
        weights = (sim - lo) / (hi - lo + DREAMLIP_DEFAULTS["minmax_eps"])
    else:
        weights = sim.softmax(dim=-1)
    threshold = 1.0 / patches.shape[1] if sgl_delta < 0 else sgl_delta
    weights = torch.where(weights < threshold, torch.zeros_like(weights), weights)
    weights = weights / weights.sum(dim=-1, keepdim=True)

    regions = F.normalize(torch.einsum("btp,bpd->btd", weights, patches), p=2, dim=-1)

    text_flat = texts.reshape(bsz * n_t, dim)        # row b*T + t
    region_flat = regions.reshape(bsz * n_t, dim)
    return sgl_lossweight * 0.5 * _symmetric_ce(text_flat, region_flat, logit_scale_local)


# --------------------------------------------------------------------------------------------------
# (D) total
# --------------------------------------------------------------------------------------------------
def dreamlip_total_reference(
    image_features: torch.Tensor,
    raw_caption_features: torch.Tensor,
    subcaption_features: torch.Tensor,
    logit_scale,
    patch_tokens: Optional[torch.Tensor] = None,
    logit_scale_local=None,
    *,
    use_multipos_loss: bool = True,
    use_finegrained_loss: bool = True,
    use_declip_loss: bool = False,
    gamma: float = 32.0,
    margin: float = 0.25,
    sgl_delta: float = 0.0,
    sgl_norm: str = "minmax",
    clip_lossweight: float = 1.0,
    sgl_lossweight: float = 1.0,
    authors_reshape_quirk: bool = False,
) -> Dict[str, torch.Tensor]:
    """The dict ClipLoss.forward returns in the long-caption path, plus 'loss' = sum of its values
    (train.py: ``total_loss = sum(losses.values())``).  Keys as the authors name them: 'CLIP_loss',
    '(De)CLIP_loss', 'I2mT_loss', 'finegrained_loss'.  The use_* flags mirror the CLI flags (all default
    False in params.py; here multipos + grouping default on, DeCLIP off, as the DreamLIP method)."""
    number_text = subcaption_features.shape[1] + 1
    out: Dict[str, torch.Tensor] = {
        "CLIP_loss": dreamlip_clip_loss_reference(
            image_features, raw_caption_features, logit_scale,
            number_text=number_text, clip_lossweight=clip_lossweight),
    }
    if use_declip_loss:
        out["(De)CLIP_loss"] = dreamlip_declip_loss_reference(
            image_features, subcaption_features, logit_scale,
            number_text=number_text, clip_lossweight=clip_lossweight)
    if use_multipos_loss:
        out["I2mT_loss"] = dreamlip_multi_positive_reference(
            image_features, subcaption_features, raw_caption_features, gamma=gamma, margin=margin)
    if use_finegrained_loss:
        if patch_tokens is None or logit_scale_local is None:
            raise ValueError("the grouping loss needs patch_tokens and logit_scale_local")
        out["finegrained_loss"] = dreamlip_grouping_reference(
            patch_tokens, subcaption_features, raw_caption_features, logit_scale_local,
            sgl_delta=sgl_delta, sgl_norm=sgl_norm, sgl_lossweight=sgl_lossweight,
            authors_reshape_quirk=authors_reshape_quirk)
    out["loss"] = sum(out.values())
    return out

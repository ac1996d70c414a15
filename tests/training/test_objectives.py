"""Each objective's loss function: against an independent transcription of its authors' code
(tests/training/references/) where the authors released code, else against the paper's formula as loops."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from tests.training.references import alip_reference, aro_reference, dreamlip_reference
from training.objectives import LOSS_FUNCTIONS
from training.objectives.alip import alip_gates, weighted_clip_loss
from training.objectives.dcl import dcl_loss
from training.objectives.dreamlip import (
    dreamlip_grouping_loss,
    dreamlip_multi_positive_gathered,
    sample_subcaption_ids,
    split_sentences,
)
from training.objectives.mlcd import mlcd_loss
from training.objectives.negclip import negclip_loss
from training.objectives.siglip import siglip_loss


def unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def log_sigmoid(v: float) -> float:
    return -math.log1p(math.exp(-v))


def lse(values: list[float]) -> float:
    return math.log(sum(math.exp(v) for v in values))


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b)


# --- SigLIP -------------------------------------------------------------------------------------------


def siglip_by_pairs(img, txt, t: float, b: float) -> float:
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += log_sigmoid(z * (t * dot(img[i], txt[j]) + b))
    return -total / n


def test_siglip_matches_paper_formula():
    img, txt = unit(6, 5, seed=0), unit(6, 5, seed=1)
    got = siglip_loss(img, txt, torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64))
    assert_close(got, torch.tensor(siglip_by_pairs(img, txt, 10.0, -10.0), dtype=torch.float64))


def test_siglip_gradients_reach_features_scale_and_bias():
    img, txt = unit(4, 3, seed=2).requires_grad_(), unit(4, 3, seed=3).requires_grad_()
    scale, bias = torch.tensor(5.0, requires_grad=True), torch.tensor(-2.0, requires_grad=True)
    siglip_loss(img.float(), txt.float(), scale, bias).backward()
    for tensor in (img, txt, scale, bias):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_siglip_rewards_aligned_pairs():
    txt = unit(5, 8, seed=4)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64)
    assert siglip_loss(txt, txt, scale, bias) < siglip_loss(unit(5, 8, seed=5), txt, scale, bias)


# --- DCL ----------------------------------------------------------------------------------------------


def dcl_by_rows(img, txt, t: float) -> float:
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        for a, b in ((img, txt), (txt, img)):
            positive = t * dot(a[i], b[i])
            total += -positive + lse([t * dot(a[i], b[j]) for j in range(n) if j != i])
    return total / (2 * n)


def test_dcl_matches_paper_formula():
    img, txt = unit(7, 4, seed=6), unit(7, 4, seed=7)
    got = dcl_loss(img, txt, torch.tensor(20.0, dtype=torch.float64))
    assert_close(got, torch.tensor(dcl_by_rows(img, txt, 20.0), dtype=torch.float64))


def test_dcl_differs_from_infonce_by_the_positive_term():
    img, txt = unit(5, 4, seed=8), unit(5, 4, seed=9)
    t = torch.tensor(3.0, dtype=torch.float64)
    logits = t * img @ txt.T
    labels = torch.arange(5)
    infonce = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    # InfoNCE's denominator includes the positive, so it is strictly larger than DCL's.
    assert dcl_loss(img, txt, t) < infonce


# --- NegCLIP ------------------------------------------------------------------------------------------


def test_negclip_loss_equals_the_authors_loss():
    """negclip_loss against vinid/neg_clip's `ClipLoss.forward` on one GPU (references/aro_reference.py,
    `negclip_loss_reference`): the negative captions join the image->text softmax only. Our loss has no hard
    negative *images* yet (they need the embed stage's neighbours), so the reference runs without them."""
    img, txt, neg = unit(4, 6, seed=10), unit(4, 6, seed=11), unit(4, 6, seed=12)
    got = negclip_loss(img, txt, neg, torch.tensor(8.0, dtype=torch.float64))
    assert got.item() == pytest.approx(aro_reference.negclip_loss_reference(img, txt, neg, 8.0), rel=1e-9)
    assert got > negclip_loss(img, txt, neg[:0], torch.tensor(8.0, dtype=torch.float64))


def test_negclip_gradient_reaches_hard_negatives():
    neg = unit(2, 6, seed=13).float().requires_grad_()
    negclip_loss(unit(3, 6, seed=14).float(), unit(3, 6, seed=15).float(), neg, torch.tensor(5.0)).backward()
    assert neg.grad is not None and neg.grad.abs().sum() > 0


# --- ALIP ---------------------------------------------------------------------------------------------


def test_alip_gates_equal_the_authors_gates():
    """alip_gates against deepglint/ALIP train.py `main()` as transcribed in references/alip_reference.py:
    means updated first; pair weights only where the language gate is below 1, else 1 (both paths)."""
    g = torch.Generator().manual_seed(0)
    img, raw, cap = (F.normalize(torch.randn(16, 8, generator=g), dim=-1) for _ in range(3))
    cap = F.normalize(cap + raw * torch.linspace(0, 3, 16)[:, None], dim=-1)  # some captions agree, some don't
    means = {"text_caption": 0.3, "image_raw": 0.1, "image_caption": -0.2}
    want_sample, want_raw, want_cap, want_means, diag = alip_reference.alip_reference_gates(img, raw, cap, means)
    mu = torch.tensor([means["image_raw"], means["image_caption"], means["text_caption"]])
    sample_w, raw_w, cap_w, new_mu = alip_gates((img * raw).sum(1), (img * cap).sum(1), (raw * cap).sum(1), mu)
    torch.testing.assert_close(sample_w, want_sample)
    torch.testing.assert_close(raw_w, want_raw)
    torch.testing.assert_close(cap_w, want_cap)
    torch.testing.assert_close(new_mu, torch.stack([want_means["image_raw"], want_means["image_caption"],
                                                    want_means["text_caption"]]).float())
    below = diag["weight_sample_unclamped"] < 1
    assert below.any() and (~below).any()
    assert (raw_w[~below] == 1).all() and (raw_w[below] != 1).all() and (raw_w > 1).any()  # unclamped where gated


def test_alip_gates_carry_no_gradient():
    s = torch.tensor([0.3, 0.6], requires_grad=True)
    weights = alip_gates(s * 1, s * 2, s * 0.5, torch.full((3,), 0.4))[:3]
    assert all(not w.requires_grad for w in weights)


def test_weighted_clip_loss_matches_weighted_rows_and_backpropagates():
    img, txt = unit(4, 5, seed=16), unit(4, 5, seed=17)
    sample_w, pair_w = torch.tensor([1.0, 0.5, 0.2, 0.0]), torch.tensor([1.3, 0.7, 1.0, 2.0])
    t = 6.0
    expected = 0.0
    for i in range(4):
        row = -t * dot(img[i], txt[i]) + lse([t * dot(img[i], y) for y in txt])
        col = -t * dot(txt[i], img[i]) + lse([t * dot(txt[i], x) for x in img])
        expected += float(sample_w[i] * pair_w[i]) * (row + col) / 2
    img_g = img.clone().requires_grad_()
    got = weighted_clip_loss(img_g, txt, torch.tensor(t, dtype=torch.float64), sample_w, pair_w)
    assert_close(got, torch.tensor(expected / 4, dtype=torch.float64))
    got.backward()
    assert img_g.grad.abs().sum() > 0


# --- DreamLIP -----------------------------------------------------------------------------------------
# Against references/dreamlip_reference.py, a transcription of zyf0619sjtu/DreamLIP's open_clip/loss.py
# (`ClipLoss.forward`, `pairwise_circleloss`) and training/data.py (`split_caption`, `draw_numbers`).


def test_multi_positive_term_equals_the_authors_circle_loss():
    """Raw caption and K sub-captions of an image are its positives; gamma 32, margin 0.25, / 10."""
    img, raw, subs = unit(4, 6, seed=18), unit(4, 6, seed=40), unit(4, 3, 6, seed=19)
    texts = torch.cat([raw[:, None], subs], dim=1).flatten(0, 1)  # image-major (B*T, D)
    got = dreamlip_multi_positive_gathered(img, texts, 4, 0)
    want = dreamlip_reference.dreamlip_multi_positive_reference(img, subs, raw)
    assert_close(got, want)
    assert_close(dreamlip_multi_positive_gathered(img, texts, 4, 0, gamma=64.0, margin=0.1, divisor=1.0),
                 dreamlip_reference.dreamlip_multi_positive_reference(img, subs, raw, gamma=64.0, margin=0.1,
                                                                      divisor=1.0))


def test_grouping_term_equals_the_authors_fine_grained_loss():
    """Min-max normalised patch weights, thresholded and renormalised; InfoNCE over all B*T pairs. The
    reference's default (authors_reshape_quirk=False) groups each image's texts over its own patches: the
    released `.view` pairs texts with other images' patches, which we take for a bug (see DreamLIPObjective)."""
    patches, raw, subs = unit(3, 9, 6, seed=34), unit(3, 6, seed=41), unit(3, 2, 6, seed=35)
    texts = torch.cat([raw[:, None], subs], dim=1)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    for threshold, norm in ((0.0, "minmax"), (0.3, "minmax"), (-1.0, "softmax")):
        got = dreamlip_grouping_loss(patches, texts, scale, threshold, norm)
        want = dreamlip_reference.dreamlip_grouping_reference(patches, subs, raw, scale, sgl_delta=threshold,
                                                              sgl_norm=norm)
        assert_close(got, want, msg=f"{threshold} {norm}")


def test_split_sentences_and_sampling_follow_the_authors_loader():
    caption = "A dog sits. It is brown\nIs it happy</s> Yes."
    assert split_sentences(caption) == dreamlip_reference.dreamlip_split_caption(caption) == \
        ["A dog sits", "It is brown", "Is it happy", "Yes"]
    assert split_sentences("") == [] and split_sentences("   ") == []
    rng = np.random.default_rng(3)
    ids = sample_subcaption_ids(10, 6, rng)
    assert len(ids) == 6 and len(set(ids)) == 6 and all(0 <= k < 10 for k in ids)  # without replacement
    assert sorted(sample_subcaption_ids(6, 6, rng)) == list(range(6))
    assert len(sample_subcaption_ids(2, 6, rng)) == 6 and sample_subcaption_ids(0, 6, rng) == []


# --- MLCD ---------------------------------------------------------------------------------------------


def mlcd_by_rows(x, centers, labels, scale: float, margin: float) -> float:
    total = 0.0
    for i in range(x.shape[0]):
        pos = {int(c) for c in labels[i] if c >= 0}
        cos = [dot(F.normalize(x[i], dim=0), F.normalize(c, dim=0)) for c in centers]
        neg_sum = sum(math.exp(scale * cos[j]) for j in range(len(cos)) if j not in pos)
        pos_sum = sum(math.exp(-scale * (cos[j] - margin)) for j in pos)
        total += math.log1p(neg_sum) + math.log1p(pos_sum)
    return total / x.shape[0]


def test_mlcd_matches_formula_with_all_negatives():
    g = torch.Generator().manual_seed(22)
    x, centers = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(9, 5, generator=g,
                                                                                   dtype=torch.float64)
    labels = torch.tensor([[0, 3], [1, -1], [8, 2], [5, 4]])
    got = mlcd_loss(x, centers, labels, scale=4.0, margin=0.2, negative_ratio=1.0)
    assert_close(got, torch.tensor(mlcd_by_rows(x, centers, labels, 4.0, 0.2), dtype=torch.float64))


def test_mlcd_negative_sampling_keeps_positives_and_drops_others():
    g = torch.Generator().manual_seed(23)
    x, centers = torch.randn(2, 4, generator=g, dtype=torch.float64), torch.randn(50, 4, generator=g,
                                                                                   dtype=torch.float64)
    labels = torch.tensor([[0, 1], [2, 3]])
    full = mlcd_loss(x, centers, labels, 3.0, 0.1, 1.0)
    # Ratio 0: only the batch's own positives are scored, so sample 0's negatives are centers 2 and 3.
    none = mlcd_loss(x, centers, labels, 3.0, 0.1, 0.0)
    assert_close(none, torch.tensor(mlcd_by_rows(x, centers[:4], labels, 3.0, 0.1), dtype=torch.float64))
    half = mlcd_loss(x, centers, labels, 3.0, 0.1, 0.5, torch.Generator().manual_seed(0))
    assert none < half < full  # fewer negatives, smaller negative term
    again = mlcd_loss(x, centers, labels, 3.0, 0.1, 0.5, torch.Generator().manual_seed(0))
    assert_close(half, again)


def test_mlcd_gradient_reaches_embeddings_and_centers():
    x = unit(3, 4, seed=24).float().requires_grad_()
    centers = unit(10, 4, seed=25).float().requires_grad_()
    mlcd_loss(x, centers, torch.tensor([[1], [2], [9]]), 8.0, 0.3, 0.5, torch.Generator().manual_seed(1)).backward()
    assert x.grad.abs().sum() > 0 and centers.grad.abs().sum() > 0 and torch.isfinite(centers.grad).all()


def test_registry_names_the_plain_functions():
    assert LOSS_FUNCTIONS == {"siglip": siglip_loss, "dcl": dcl_loss, "negclip": negclip_loss,
                              "alip": weighted_clip_loss, "dreamlip": dreamlip_multi_positive_gathered,
                              "mlcd": mlcd_loss}


# --- gathered forms: two simulated ranks average to the single-process loss ---------------------------


def test_gathered_forms_averaged_over_ranks_equal_the_global_loss():
    from training.objectives.alip import weighted_clip_loss_gathered
    from training.objectives.dcl import dcl_loss_gathered
    from training.objectives.negclip import negclip_loss_gathered
    from training.objectives.siglip import siglip_loss_gathered

    img, txt, neg = unit(8, 5, seed=30), unit(8, 5, seed=31), unit(3, 5, seed=32)
    groups = unit(8, 3, 5, seed=33)
    t, b = torch.tensor(6.0, dtype=torch.float64), torch.tensor(-4.0, dtype=torch.float64)
    sw, pw = torch.rand(8, dtype=torch.float64), torch.rand(8, dtype=torch.float64)
    flat = groups.reshape(24, 5)
    cases = {
        "siglip": (siglip_loss(img, txt, t, b),
                   lambda r, s: siglip_loss_gathered(img[s], txt, t, b, 4 * r)),
        "dcl": (dcl_loss(img, txt, t), lambda r, s: dcl_loss_gathered(img[s], txt[s], img, txt, t, 4 * r)),
        "negclip": (negclip_loss(img, txt, neg, t),
                    lambda r, s: negclip_loss_gathered(img[s], txt[s], img, txt, neg, t, 4 * r)),
        "alip": (weighted_clip_loss(img, txt, t, sw, pw),
                 lambda r, s: weighted_clip_loss_gathered(img[s], txt[s], img, txt, t, 4 * r, sw[s], pw[s])),
        "dreamlip": (dreamlip_multi_positive_gathered(img, flat, 3, 0),
                     lambda r, s: dreamlip_multi_positive_gathered(img[s], flat, 3, 4 * r)),
    }
    for name, (whole, by_rank) in cases.items():
        halves = [by_rank(r, slice(4 * r, 4 * r + 4)) for r in range(2)]
        assert_close(sum(halves) / 2, whole, msg=name)


# --- MLCD sampling ---------------------------------------------------------------------------------


def test_mlcd_reads_only_the_sampled_centers_and_survives_samples_without_labels():
    from training.objectives.mlcd import mlcd_logits

    centers = torch.randn(1000, 4, dtype=torch.float64, requires_grad=True)
    x = unit(3, 4, seed=36).requires_grad_()
    labels = torch.tensor([[5, 7], [-1, -1], [999, -1]])
    s, positive = mlcd_logits(x, centers, labels, 4.0, 0.1, 0.01, torch.Generator().manual_seed(0))
    assert s.shape == (3, 3 + 10) and positive.sum().item() == 3  # the 3 positives + 1% of the other 997
    loss = mlcd_loss(x, centers, labels, 4.0, 0.1, 0.01, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(centers.grad).all()
    assert (centers.grad.abs().sum(1) > 0).sum().item() == 13  # only the scored rows get a gradient

"""Each objective against its paper's formula written out as Python loops over pairs."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from training.objectives import (
    ALIP_MEAN_KEYS,
    LOSS_FUNCTIONS,
    alip_gates,
    dcl_loss,
    mlcd_loss,
    multi_positive_loss,
    negclip_loss,
    sample_subcaption_ids,
    sample_subcaptions,
    shuffle_words,
    siglip_loss,
    split_sentences,
    swap_attributes,
    weighted_clip_loss,
)


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


def negclip_by_rows(img, txt, neg, t: float) -> float:
    n, all_text = img.shape[0], torch.cat([txt, neg])
    total = 0.0
    for i in range(n):
        total += -t * dot(img[i], txt[i]) + lse([t * dot(img[i], y) for y in all_text])
        total += -t * dot(txt[i], img[i]) + lse([t * dot(txt[i], x) for x in img])
    return total / (2 * n)


def test_negclip_matches_formula_and_hard_negatives_raise_the_loss():
    img, txt, neg = unit(4, 6, seed=10), unit(4, 6, seed=11), unit(3, 6, seed=12)
    t = torch.tensor(8.0, dtype=torch.float64)
    got = negclip_loss(img, txt, neg, t)
    assert_close(got, torch.tensor(negclip_by_rows(img, txt, neg, 8.0), dtype=torch.float64))
    assert got > negclip_loss(img, txt, neg[:0], t)  # extra negatives only add to the denominator


def test_negclip_gradient_reaches_hard_negatives():
    neg = unit(2, 6, seed=13).float().requires_grad_()
    negclip_loss(unit(3, 6, seed=14).float(), unit(3, 6, seed=15).float(), neg, torch.tensor(5.0)).backward()
    assert neg.grad is not None and neg.grad.abs().sum() > 0


def test_shuffle_words_keeps_words_changes_order():
    rng = np.random.default_rng(0)
    for caption in ["a dog on a red sofa", "cat dog", "horse rides astronaut"]:
        for _ in range(20):
            shuffled = shuffle_words(caption, rng)
            assert shuffled != caption and sorted(shuffled.split()) == sorted(caption.split())
    assert shuffle_words("dog", rng) is None and shuffle_words("dog dog", rng) is None


def test_swap_attributes_swaps_two_distinct_attributes():
    rng = np.random.default_rng(1)
    colours = {"red", "blue", "green"}
    assert swap_attributes("a red car next to a blue house.", colours, rng) == "a blue car next to a red house."
    assert swap_attributes("a red car, a blue.", colours, rng) == "a blue car, a red."  # punctuation stays
    assert swap_attributes("a red car next to a red house", colours, rng) is None
    assert swap_attributes("a car next to a house", colours, rng) is None
    three = {swap_attributes("red blue green", colours, rng) for _ in range(50)}
    assert three == {"blue red green", "green blue red", "red green blue"}


# --- ALIP ---------------------------------------------------------------------------------------------


def test_alip_gates_follow_paper_and_update_means():
    s_raw, s_cap, s_tc = (torch.tensor(v) for v in ([0.2, 0.4, 0.9], [0.3, 0.5, 0.1], [0.1, 0.95, 1.2]))
    sample_w, raw_w, cap_w, mu_t = alip_gates(s_raw, s_cap, s_tc, torch.ones(3))
    mu = dict(zip(ALIP_MEAN_KEYS, mu_t.tolist(), strict=True))
    expected_mu = {"raw": 0.99 + 0.01 * 0.5, "cap": 0.99 + 0.01 * 0.3, "tc": 0.99 + 0.01 * 0.75}
    assert mu == pytest.approx(expected_mu)
    for i in range(3):
        assert float(sample_w[i]) == pytest.approx(min(math.exp(2 * (float(s_tc[i]) - mu["tc"])), 1.0), rel=1e-6)
        assert float(raw_w[i]) == pytest.approx(math.exp(2 * (float(s_raw[i]) - mu["raw"])), rel=1e-6)
        assert float(cap_w[i]) == pytest.approx(math.exp(2 * (float(s_cap[i]) - mu["cap"])), rel=1e-6)
    assert (sample_w > 0).all() and (sample_w <= 1).all() and float(sample_w[2]) == 1.0
    _, _, _, mu2 = alip_gates(s_raw, s_cap, s_tc, mu_t)
    assert float(mu2[0]) == pytest.approx(0.99 * mu["raw"] + 0.01 * 0.5)
    _, _, _, mu3 = alip_gates(s_raw, s_cap, s_tc, mu_t, momentum=0.5)
    assert float(mu3[1]) == pytest.approx(0.5 * mu["cap"] + 0.5 * 0.3)


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


def multi_positive_by_rows(img, groups, t: float) -> float:
    b, k, _ = groups.shape
    texts = [(owner, groups[owner, s]) for owner in range(b) for s in range(k)]
    i2t = sum(-math.log(sum(math.exp(t * dot(img[i], y)) for o, y in texts if o == i)
                        / sum(math.exp(t * dot(img[i], y)) for _, y in texts)) for i in range(b)) / b
    t2i = sum(-t * dot(y, img[o]) + lse([t * dot(y, x) for x in img]) for o, y in texts) / len(texts)
    return (i2t + t2i) / 2


def test_multi_positive_loss_matches_formula():
    img, groups = unit(3, 6, seed=18), unit(3, 4, 6, seed=19)
    got = multi_positive_loss(img, groups, torch.tensor(7.0, dtype=torch.float64))
    assert_close(got, torch.tensor(multi_positive_by_rows(img, groups, 7.0), dtype=torch.float64))


def test_multi_positive_with_one_text_is_clip():
    img, txt = unit(5, 4, seed=20), unit(5, 4, seed=21)
    t = torch.tensor(4.0, dtype=torch.float64)
    labels = torch.arange(5)
    clip = (F.cross_entropy(t * img @ txt.T, labels) + F.cross_entropy(t * txt @ img.T, labels)) / 2
    assert_close(multi_positive_loss(img, txt[:, None, :], t), clip)


def test_split_sentences_and_sampling():
    caption = "A dog sits. It is brown!  Is it happy? Yes"
    assert split_sentences(caption) == ["A dog sits.", "It is brown!", "Is it happy?", "Yes"]
    assert split_sentences("") == [] and split_sentences("   ") == []
    rng = np.random.default_rng(2)
    sentences = split_sentences(caption)
    picked = sample_subcaptions(sentences, 3, rng)
    assert len(picked) == 3 and len(set(picked)) == 3 and set(picked) <= set(sentences)
    assert sorted(sample_subcaptions(sentences, 4, rng)) == sorted(sentences)  # exactly enough: each once
    many = sample_subcaptions(["only one.", "two."], 6, rng)
    assert len(many) == 6 and set(many) <= {"only one.", "two."}
    assert sample_subcaptions([], 6, rng) == []


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
                              "alip": weighted_clip_loss, "dreamlip": multi_positive_loss, "mlcd": mlcd_loss}


# --- gathered forms: two simulated ranks average to the single-process loss ---------------------------


def test_gathered_forms_averaged_over_ranks_equal_the_global_loss():
    from training.objectives import (
        dcl_loss_gathered,
        multi_positive_loss_gathered,
        negclip_loss_gathered,
        siglip_loss_gathered,
        weighted_clip_loss_gathered,
    )

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
        "dreamlip": (multi_positive_loss(img, groups, t),
                     lambda r, s: multi_positive_loss_gathered(img[s], groups[s], img, flat, t, 4 * r)),
    }
    for name, (whole, by_rank) in cases.items():
        halves = [by_rank(r, slice(4 * r, 4 * r + 4)) for r in range(2)]
        assert_close(sum(halves) / 2, whole, msg=name)


# --- DreamLIP grouping, MLCD sampling -----------------------------------------------------------------


def test_grouping_loss_is_zero_when_every_subcaption_is_the_same_sentence():
    from training.objectives import grouping_loss

    patches, subs = unit(2, 6, 4, seed=34), unit(2, 3, 4, seed=35)
    same = torch.zeros(2, 3, dtype=torch.long)
    assert grouping_loss(patches, subs, same, torch.tensor(10.0)).item() == pytest.approx(0.0, abs=1e-12)
    distinct = torch.arange(3).repeat(2, 1)
    assert grouping_loss(patches, subs, distinct, torch.tensor(10.0)).item() > 0


def test_subcaption_ids_sample_without_replacement_when_possible():
    rng = np.random.default_rng(3)
    ids = sample_subcaption_ids(10, 6, rng)
    assert len(ids) == 6 and len(set(ids)) == 6 and all(0 <= k < 10 for k in ids)
    assert sorted(sample_subcaption_ids(6, 6, rng)) == list(range(6))
    assert len(sample_subcaption_ids(2, 6, rng)) == 6 and sample_subcaption_ids(0, 6, rng) == []


def test_mlcd_reads_only_the_sampled_centers_and_survives_samples_without_labels():
    from training.objectives import mlcd_logits

    centers = torch.randn(1000, 4, dtype=torch.float64, requires_grad=True)
    x = unit(3, 4, seed=36).requires_grad_()
    labels = torch.tensor([[5, 7], [-1, -1], [999, -1]])
    s, positive = mlcd_logits(x, centers, labels, 4.0, 0.1, 0.01, torch.Generator().manual_seed(0))
    assert s.shape == (3, 3 + 10) and positive.sum().item() == 3  # the 3 positives + 1% of the other 997
    loss = mlcd_loss(x, centers, labels, 4.0, 0.1, 0.01, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(centers.grad).all()
    assert (centers.grad.abs().sum(1) > 0).sum().item() == 13  # only the scored rows get a gradient

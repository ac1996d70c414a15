"""Training-free few-shot GDA (eval/fewshot.py) against a transcription of mrflogs/ICLR24 and hand-computed cases.

references/gda_reference.py transcribes main_few_shots.py ``run()`` (commit c83409b): class means, the shrunk
precision ``D * pinv((N - 1) * cov + trace(cov) * I)``, ``W = mu P``, ``b = log(1/C) - mu P mu / 2``, the ensemble
``100 * x T + alpha * (x W + b)`` and the alpha search over (1e-4 .. 100) with their strict ``>`` and 0.1 fallback.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.fewshot import (
    ALPHAS,
    class_means,
    ensemble_logits,
    fewshot_gda,
    gda_classifier,
    sample_shots,
    search_alpha,
)
from eval.metrics import normalize
from tests.eval.references import gda_reference as ref

SHOTS = (1, 2, 4, 8, 16)


def gaussian_clusters(seed: int, num_classes: int = 5, dim: int = 16, per_class: tuple[int, ...] = (40, 20, 50),
                      noise: float = 0.3) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Unit class means and (features, labels) splits drawn around them with one shared, anisotropic covariance."""
    rng = np.random.default_rng(seed)
    means = normalize(rng.normal(size=(num_classes, dim))).astype(np.float64)  # (C, D)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)  # shared covariance noise^2 * mixing^T mixing
    splits = []
    for n in per_class:
        labels = np.repeat(np.arange(num_classes), n)
        splits.append((means[labels] + noise * rng.normal(size=(len(labels), dim)) @ mixing, labels))
    return means, splits


def unit64(x: np.ndarray) -> np.ndarray:
    """The rows eval.fewshot works on (float32 unit rows, then float64), handed to the reference as they are: its
    own float64 renormalisation of a float32 unit row moves it by ~1e-8, which the parity checks would see."""
    return normalize(x).astype(np.float64)


def t64(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def reference_classifier(features: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, ...]:
    """The reference's (W (C, D), b (C,)), in float64, from the same unit rows."""
    weights, bias = ref.estimate(t64(unit64(features)), t64(labels), num_classes)
    return weights.numpy().T, bias.numpy()


# --- does it adapt ---------------------------------------------------------------------------------------------


def test_sixteen_shots_beat_a_wrong_zeroshot_classifier_and_accuracy_grows_with_shots():
    means, [(tx, ty), (vx, vy), (sx, sy)] = gaussian_clusters(seed=0)
    wrong_text = np.roll(means, 1, axis=0)  # class c's text embedding is class c-1's mean: zero-shot is ~always wrong
    out = fewshot_gda(tx, ty, vx, vy, sx, sy, wrong_text, shots=SHOTS, draws=5, seed=0)
    acc = [out[f"fewshot_gda_{k}shot_acc1_mean"] for k in SHOTS]
    assert out["fewshot_zeroshot_acc1"] < 0.1
    assert acc[-1] > out["fewshot_zeroshot_acc1"] + 0.8
    assert all(later >= earlier - 0.01 for earlier, later in zip(acc, acc[1:])), acc
    assert acc[-1] > acc[1] > acc[0]
    assert out[f"fewshot_gda_{SHOTS[-1]}shot_alpha_mean"] >= 10.0  # it has to outvote 100x cosine logits


def test_a_good_zeroshot_classifier_is_kept_at_one_shot():
    means, [(tx, ty), (vx, vy), (sx, sy)] = gaussian_clusters(seed=1)
    out = fewshot_gda(tx, ty, vx, vy, sx, sy, means, shots=(1, 16), draws=2)
    # 1 shot: the pooled scatter is zero, P = 0 and the GDA logits are constant, so the ensemble is zero-shot
    assert out["fewshot_gda_1shot_acc1_mean"] == out["fewshot_zeroshot_acc1"]
    assert out["fewshot_gda_1shot_alpha_mean"] == ALPHAS[0]  # every alpha ties; the first above 0 wins
    assert out["fewshot_gda_16shot_acc1_mean"] >= out["fewshot_zeroshot_acc1"] - 0.02


def test_keys_are_documented_and_json_floats():
    means, [(tx, ty), (vx, vy), (sx, sy)] = gaussian_clusters(seed=2, per_class=(5, 3, 3))
    out = fewshot_gda(tx, ty, vx, vy, sx, sy, means, shots=(1, 4), draws=2)
    per_shot = {f"fewshot_gda_{k}shot_{m}" for k in (1, 4)
                for m in ("acc1_mean", "acc1_std", "alpha_mean", "val_acc1_mean")}
    assert set(out) == per_shot | {"fewshot_zeroshot_acc1", "fewshot_draws"}
    assert out["fewshot_draws"] == 2
    assert all(type(v) is float and np.isfinite(v) for k, v in out.items() if k != "fewshot_draws")


def test_seeded_draws_repeat_and_differ_across_seeds():
    means, [(tx, ty), (vx, vy), (sx, sy)] = gaussian_clusters(seed=3, noise=0.5)
    run = lambda seed: fewshot_gda(tx, ty, vx, vy, sx, sy, np.roll(means, 1, 0), shots=(2,), seed=seed)  # noqa: E731
    assert run(0) == run(0)
    assert run(0) != run(1)


# --- parity with mrflogs/ICLR24 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shots", [2, 4, 16])
def test_classifier_equals_the_reference_transcription(shots):
    _, [(tx, ty), _, _] = gaussian_clusters(seed=4)
    rows = sample_shots(ty, 5, shots, np.random.default_rng(shots))
    weights, bias = gda_classifier(tx[rows], ty[rows], 5)
    ref_weights, ref_bias = reference_classifier(tx[rows], ty[rows], 5)
    assert weights.shape == (5, 16) and bias.shape == (5,)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(bias, ref_bias, rtol=1e-9, atol=1e-9)


def test_their_normalisation_is_metrics_normalize_to_float32_precision():
    _, [(tx, _), _, _] = gaussian_clusters(seed=5)
    np.testing.assert_allclose(unit64(tx), ref.normalise(t64(tx)).numpy(), rtol=0, atol=2e-7)


def test_classifier_is_close_to_the_reference_in_their_float32():
    _, [(tx, ty), _, _] = gaussian_clusters(seed=5)
    weights, bias = gda_classifier(tx, ty, 5)
    ref_weights, ref_bias = ref.estimate(ref.normalise(torch.from_numpy(tx).float()), t64(ty), 5)
    np.testing.assert_allclose(weights, ref_weights.numpy().T, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(bias, ref_bias.numpy(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("shots", [1, 2, 8])
def test_alpha_logits_and_accuracy_equal_the_reference_on_the_same_draw(shots):
    means, [(tx, ty), (vx, vy), (sx, sy)] = gaussian_clusters(seed=6, noise=0.5)
    text = np.roll(means, 1, axis=0)
    out = fewshot_gda(tx, ty, vx, vy, sx, sy, text, shots=(shots,), draws=1, seed=7)
    rows = sample_shots(ty, 5, shots, np.random.default_rng([7, shots, 0]))  # fewshot_gda's draw 0
    ref_w, ref_b = ref.estimate(t64(unit64(tx[rows])), t64(ty[rows]), 5)
    val, test, clip_weights = t64(unit64(vx)), t64(unit64(sx)), t64(unit64(text).T)
    alpha, val_acc, test_acc = ref.search_and_test(val, t64(vy), test, t64(sy), clip_weights, ref_w, ref_b,
                                                   dtype=torch.float64)
    assert out[f"fewshot_gda_{shots}shot_alpha_mean"] == alpha
    assert out[f"fewshot_gda_{shots}shot_val_acc1_mean"] == pytest.approx(val_acc / 100)
    assert out[f"fewshot_gda_{shots}shot_acc1_mean"] == pytest.approx(test_acc / 100)
    weights, bias = gda_classifier(tx[rows], ty[rows], 5)
    np.testing.assert_allclose(ensemble_logits(unit64(sx), unit64(text), weights, bias, alpha),
                               ref.logits(test, clip_weights, ref_w, ref_b, alpha, torch.float64).numpy(),
                               rtol=1e-9, atol=1e-7)


def test_augmented_views_are_fitted_as_their_augment_epoch_loop_does():
    """With views, the classifier is the reference's on the V views of the drawn rows (their run() lines 45-53
    stack augment_epoch passes over the k-shot loader), and 1 shot is no longer the zero-shot classifier."""
    means, [(tx, ty), (vx, vy), (sx, sy)] = gaussian_clusters(seed=8, noise=0.5)
    rng = np.random.default_rng(0)
    bank = unit64(tx[None] + 0.2 * rng.normal(size=(4, *tx.shape)))  # (V=4, N, D): fixed views per row
    asked = []

    def views(rows):
        asked.append(rows.copy())
        return bank[:, rows]

    text = np.roll(means, 1, axis=0)
    out = fewshot_gda(tx, ty, vx, vy, sx, sy, text, shots=(1,), draws=1, seed=3, train_views=views)
    rows = sample_shots(ty, 5, 1, np.random.default_rng([3, 1, 0]))
    np.testing.assert_array_equal(asked[0], rows)
    stacked = bank[:, rows].reshape(-1, bank.shape[-1])  # augment pass 0 over the loader, then pass 1, ...
    ref_w, ref_b = ref.estimate(t64(stacked), t64(np.tile(ty[rows], 4)), 5)
    assert np.abs(ref_w.numpy()).max() > 0  # views spread the single shot: the precision is no longer zero
    alpha, val_acc, test_acc = ref.search_and_test(t64(unit64(vx)), t64(vy), t64(unit64(sx)), t64(sy),
                                                   t64(unit64(text).T), ref_w, ref_b, dtype=torch.float64)
    assert out["fewshot_gda_1shot_alpha_mean"] == alpha
    assert out["fewshot_gda_1shot_acc1_mean"] == pytest.approx(test_acc / 100)
    assert out["fewshot_gda_1shot_acc1_mean"] > out["fewshot_zeroshot_acc1"] + 0.2


# --- hand-computed ----------------------------------------------------------------------------------------------


def test_tiny_two_class_case_by_hand():
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]])  # unit rows already
    y = np.array([0, 0, 1, 1])
    mus = np.array([[0.8, 0.4], [-0.3, 0.9]])
    np.testing.assert_allclose(class_means(x, y, 2), mus, atol=1e-12)
    # centred rows +-(0.2, -0.4) and +-(0.3, 0.1): scatter [[.26, -.1], [-.1, .34]], trace 0.6, N - 1 = 3,
    # shrunk = scatter + 0.2 I = [[.46, -.1], [-.1, .54]], det 0.2384, P = 2 * inv = [[1.08, .2], [.2, .92]] / .2384
    det = 0.2384
    weights_want = np.array([[0.944, 0.528], [-0.144, 0.768]]) / det  # rows P mu_c
    bias_want = np.log(0.5) - np.array([0.9664, 0.7344]) / (2 * det)  # mu_c^T P mu_c / 2
    weights, bias = gda_classifier(x, y, 2)
    np.testing.assert_allclose(weights, weights_want, rtol=1e-6)
    np.testing.assert_allclose(bias, bias_want, rtol=1e-6)


def test_search_alpha_takes_the_first_strict_best_and_falls_back_to_their_default():
    assert ALPHAS == tuple(ref.ALPHA_GRID)
    text = np.array([[0.0, 1.0], [1.0, 0.0]])  # swapped: zero-shot gets every row wrong
    val = np.array([[1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 1])
    gda_w, gda_b = np.eye(2), np.zeros(2)  # GDA right by a margin of alpha; zero-shot wrong by 100
    assert search_alpha(val, labels, text, 0.5 * gda_w, gda_b) == (0.1, 0.0)  # 0.5 * 100 < 100; their default
    assert search_alpha(val, labels, text, 2 * gda_w, gda_b) == (100.0, 1.0)  # only 2 * 100 > 100
    # constant GDA logits: every alpha scores zero-shot's accuracy, the first one wins
    assert search_alpha(val, labels, text[::-1], np.zeros((2, 2)), np.zeros(2)) == (ALPHAS[0], 1.0)


def test_sample_shots_draws_k_distinct_rows_per_class_and_all_of_a_short_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 6)
    rows = sample_shots(labels, 3, 4, np.random.default_rng(0))
    assert np.bincount(labels[rows], minlength=3).tolist() == [4, 3, 4]
    assert len(set(rows.tolist())) == len(rows)
    assert set(np.flatnonzero(labels == 1)) <= set(rows.tolist())
    assert np.array_equal(rows, sample_shots(labels, 3, 4, np.random.default_rng(0)))


# --- degenerate inputs -------------------------------------------------------------------------------------------


def test_one_shot_gives_a_zero_precision_like_their_pinv():
    _, [(tx, ty), _, _] = gaussian_clusters(seed=8)
    rows = sample_shots(ty, 5, 1, np.random.default_rng(0))
    weights, bias = gda_classifier(tx[rows], ty[rows], 5)
    ref_weights, ref_bias = reference_classifier(tx[rows], ty[rows], 5)
    np.testing.assert_array_equal(weights, np.zeros((5, 16)))
    np.testing.assert_allclose(bias, np.full(5, np.log(1 / 5)))
    np.testing.assert_allclose(weights, ref_weights, atol=1e-12)
    np.testing.assert_allclose(bias, ref_bias, atol=1e-12)


def test_one_class():
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(6, 4)), np.zeros(6, dtype=int)
    weights, bias = gda_classifier(x, y, 1)
    assert np.all(np.isfinite(weights)) and np.all(np.isfinite(bias))
    single_w, single_b = gda_classifier(x[:1], y[:1], 1)  # N = 1: torch.cov would divide 0 by 0
    assert np.array_equal(single_w, np.zeros((1, 4))) and np.array_equal(single_b, np.zeros(1))
    out = fewshot_gda(x, y, x[:2], y[:2], x[2:], y[2:], normalize(x[:1]), shots=(1, 4), draws=2)
    assert out["fewshot_zeroshot_acc1"] == 1.0 and out["fewshot_gda_4shot_acc1_mean"] == 1.0
    assert all(np.isfinite(v) for v in out.values())


def test_all_equal_features_give_a_zero_precision_and_finite_scores():
    row = np.array([0.3, -0.2, 0.9, 0.1])
    x = np.tile(row, (12, 1)) * np.linspace(0.5, 3.0, 12)[:, None]  # equal after normalising, up to rounding
    y = np.repeat(np.arange(3), 4)
    weights, bias = gda_classifier(x, y, 3)
    np.testing.assert_array_equal(weights, np.zeros((3, 4)))
    np.testing.assert_allclose(bias, np.full(3, np.log(1 / 3)))
    text = normalize(np.eye(3, 4))
    out = fewshot_gda(x, y, x, y, x, y, text, shots=(1, 2, 4), draws=2)
    assert all(np.isfinite(v) for v in out.values())
    assert out["fewshot_gda_4shot_acc1_mean"] == out["fewshot_zeroshot_acc1"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("change, message", [
    (dict(test_emb=np.zeros((0, 4)), test_labels=np.zeros(0, dtype=int)), "test_emb"),
    (dict(val_emb=np.zeros((0, 4)), val_labels=np.zeros(0, dtype=int)), "val_emb"),
    (dict(test_labels=np.array([0, 1, 2, 3])), "test_labels must lie in"),
    (dict(train_labels=np.array([0, 0, 0, 1, 1, 1])), "without a training row"),
    (dict(val_emb=np.ones((4, 5))), r"val_emb must be \(N >= 1, 4\)"),
    (dict(train_labels=np.zeros(6)), "integers"),
    (dict(test_emb=np.full((4, 4), np.nan)), "NaN"),
    (dict(shots=(0,)), "shots >= 1"),
])
def test_inputs_that_make_no_sense_are_value_errors(change, message):
    rng = np.random.default_rng(10)
    args = dict(train_emb=rng.normal(size=(6, 4)), train_labels=np.array([0, 0, 1, 1, 2, 2]),
                val_emb=rng.normal(size=(4, 4)), val_labels=np.array([0, 1, 2, 0]),
                test_emb=rng.normal(size=(4, 4)), test_labels=np.array([0, 1, 2, 1]),
                zeroshot_weights=normalize(rng.normal(size=(3, 4))))
    args.update(change)
    with pytest.raises(ValueError, match=message):
        fewshot_gda(**args)

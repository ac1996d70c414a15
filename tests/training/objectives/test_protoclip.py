"""ProtoCLIP: the prototype loss against its formula written as loops, PBT against hand means, faiss k-means
determinism and recovery, the open_clip text teacher, checkpointed prototypes, and two ranks against one."""

import json
import math
from dataclasses import fields

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from training.distributed import DistContext
from training.objectives.protoclip import (
    ProtoCLIPConfig,
    ProtoCLIPObjective,
    Prototypes,
    back_translate,
    episode_seed,
    fit_prototypes,
    kmeans,
    share_prototypes,
    teacher_text_features,
)


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def blobs(per_cluster: int, centers: np.ndarray, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows scattered around each center, and each row's true center."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(centers)), per_cluster)
    rows = centers[truth] + spread * rng.normal(size=(len(truth), centers.shape[1]))
    return rows.astype(np.float32), truth


# --- the loss against loops over samples and prototypes -----------------------------------------------


def sample_loss(z, classifier, target_protos, y: int, scale: float, tau: float) -> float:
    """-sum_c q_c log softmax(s z . P_c), q = softmax(C_y . C_c / tau) over c (one-hot when tau <= 0)."""
    k = len(classifier)
    logits = [scale * sum(float(a) * float(b) for a, b in zip(z, classifier[c], strict=True)) for c in range(k)]
    log_norm = math.log(sum(math.exp(v) for v in logits))
    if tau <= 0:
        q = [1.0 if c == y else 0.0 for c in range(k)]
    else:
        sims = [sum(float(a) * float(b) for a, b in zip(target_protos[y], target_protos[c], strict=True)) / tau
                for c in range(k)]
        top = max(sims)
        weights = [math.exp(s - top) for s in sims]
        q = [w / sum(weights) for w in weights]
    return -sum(q[c] * (logits[c] - log_norm) for c in range(k))


def loss_by_loops(img, txt, p: Prototypes, index, scale: float, cfg: ProtoCLIPConfig) -> float:
    img_cls = p.image_from_text if cfg.pbt else p.text_centroids
    txt_cls = p.text_from_image if cfg.pbt else p.image_centroids
    total = 0.0
    for i, n in enumerate(index):
        term = (sample_loss(img[i], img_cls, p.text_centroids, p.text_labels[n], scale, cfg.temperature)
                + sample_loss(txt[i], txt_cls, p.image_centroids, p.image_labels[n], scale, cfg.temperature)) / 2
        if p.has_teacher:
            term += cfg.teacher_weight * (
                sample_loss(img[i], p.image_from_teacher, p.teacher_centroids, p.teacher_labels[n], scale,
                            cfg.teacher_temperature)
                + sample_loss(txt[i], p.text_from_teacher, p.teacher_centroids, p.teacher_labels[n], scale,
                              cfg.teacher_temperature)) / 2
        total += term
    return total / len(index)


def episode(n: int = 48, d: int = 6, teacher_dim: int | None = None, **settings):
    """(objective without heads, its config, the episode's features, prototypes) for a random episode."""
    cfg = ProtoCLIPConfig(num_prototypes=4, projection_dim=0, **settings)
    img, txt = unit_rows(n, d, 0), unit_rows(n, d, 1)
    teacher = unit_rows(n, teacher_dim, 2) if teacher_dim else None
    p = fit_prototypes(img, txt, cfg, seed=7, teacher_features=teacher)
    objective = ProtoCLIPObjective(cfg, d)
    objective.set_prototypes(p)
    return objective, cfg, img, txt, p


@pytest.mark.parametrize("pbt", [True, False])
@pytest.mark.parametrize("temperature", [0.5, 0.0])
def test_loss_matches_loops_over_samples_and_prototypes(pbt, temperature):
    objective, cfg, img, txt, p = episode(pbt=pbt, temperature=temperature)
    index = np.array([3, 17, 0, 40, 17, 25])
    out = {"image_features": torch.from_numpy(img[index]), "text_features": torch.from_numpy(txt[index])}
    got = objective(out, {"episode_index": torch.from_numpy(index)}, DistContext())
    expected = loss_by_loops(img[index], txt[index], p, index, 1 / 0.07, cfg)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_teacher_term_matches_loops():
    objective, cfg, img, txt, p = episode(teacher_dim=5, temperature=0.3, teacher_weight=0.7, teacher_temperature=0.0)
    assert p.has_teacher and p.teacher_centroids.shape == (4, 5) and p.image_from_teacher.shape == (4, 6)
    index = np.arange(0, 48, 5)
    out = {"image_features": torch.from_numpy(img[index]), "text_features": torch.from_numpy(txt[index])}
    got = objective(out, {"episode_index": torch.from_numpy(index)}, DistContext())
    expected = loss_by_loops(img[index], txt[index], p, index, 1 / 0.07, cfg)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    without = ProtoCLIPObjective(ProtoCLIPConfig(num_prototypes=4, projection_dim=0, temperature=0.3), 6)
    without.set_prototypes(fit_prototypes(img, txt, cfg, seed=7))
    assert got.item() > without(out, {"episode_index": torch.from_numpy(index)}, DistContext()).item()


def test_forward_before_set_prototypes_raises():
    objective = ProtoCLIPObjective(ProtoCLIPConfig(num_prototypes=4), 8)
    out = {"image_features": torch.from_numpy(unit_rows(4, 8, 0)),
           "text_features": torch.from_numpy(unit_rows(4, 8, 1))}
    with pytest.raises(RuntimeError, match="set_prototypes"):
        objective(out, {"episode_index": torch.arange(4)}, DistContext())


def test_episode_index_outside_the_episode_raises():
    objective, _, img, txt, _ = episode()
    out = {"image_features": torch.from_numpy(img[:2]), "text_features": torch.from_numpy(txt[:2])}
    with pytest.raises(IndexError, match="episode"):
        objective(out, {"episode_index": torch.tensor([0, 48])}, DistContext())


def test_gradients_reach_features_heads_and_scale():
    objective = ProtoCLIPObjective(ProtoCLIPConfig(num_prototypes=4, projection_dim=8, projection_hidden_dim=16), 6)
    img, txt = unit_rows(32, 6, 0), unit_rows(32, 6, 1)
    objective.set_prototypes(fit_prototypes(*objective.episode_features(torch.from_numpy(img), torch.from_numpy(txt)),
                                            objective.cfg, seed=1))
    feats = torch.from_numpy(img[:8]).requires_grad_(), torch.from_numpy(txt[:8]).requires_grad_()
    objective({"image_features": feats[0], "text_features": feats[1]},
              {"episode_index": torch.arange(8)}, DistContext()).backward()
    grads = [feats[0].grad, feats[1].grad] + [q.grad for q in objective.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


# --- Prototypical Back Translation ---------------------------------------------------------------------


def test_back_translation_is_the_mean_of_the_student_features_per_teacher_cluster():
    labels = np.array([2, 0, 2, 2, 0])
    feats = np.array([[1, 0], [0, 4], [3, 2], [2, 1], [2, 0]], np.float32)
    got = back_translate(labels, feats, k=4)
    hand = np.array([[1, 2], [0, 0], [2, 1], [0, 0]], np.float32)  # cluster 0: rows 1, 4; 2: rows 0, 2, 3; 1, 3 empty
    np.testing.assert_allclose(got, hand)


def test_fit_prototypes_translates_each_modality_through_the_other():
    cfg = ProtoCLIPConfig(num_prototypes=3, kmeans_redo=1)
    img, txt = unit_rows(30, 4, 3), unit_rows(30, 4, 4)
    p = fit_prototypes(img, txt, cfg, seed=0)
    for c in range(3):
        in_text_cluster = [n for n in range(30) if p.text_labels[n] == c]
        in_image_cluster = [n for n in range(30) if p.image_labels[n] == c]
        np.testing.assert_allclose(p.image_from_text[c], img[in_text_cluster].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(p.text_from_image[c], txt[in_image_cluster].mean(0), rtol=1e-5, atol=1e-6)
    assert not p.has_teacher and p.teacher_centroids is None


# --- k-means ---------------------------------------------------------------------------------------------


def test_fit_prototypes_is_deterministic_for_a_seed():
    cfg = ProtoCLIPConfig(num_prototypes=8)
    img, txt = unit_rows(400, 16, 5), unit_rows(400, 16, 6)
    a, b = fit_prototypes(img, txt, cfg, seed=3), fit_prototypes(img, txt, cfg, seed=3)
    for name in [f.name for f in fields(Prototypes)][:6]:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    other = fit_prototypes(img, txt, cfg, seed=4)
    assert not np.array_equal(a.image_centroids, other.image_centroids)


def same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    """Each true group lies in one cluster and no two groups share one."""
    found = [set(labels[truth == t].tolist()) for t in np.unique(truth)]
    return all(len(f) == 1 for f in found) and len(set.union(*found)) == len(found)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_prototypes_recovers_well_separated_clusters_in_each_space(seed):
    centers = 10 * np.eye(6, dtype=np.float32)[:5]  # 5 centers in 6-d, 14 apart
    img, img_truth = blobs(40, centers, spread=0.3, seed=seed)
    txt_truth = (img_truth * 2 + np.arange(200) % 2) % 5  # text groups cut across image groups
    txt = (centers[txt_truth] + 0.3 * np.random.default_rng(seed + 10).normal(size=img.shape)).astype(np.float32)
    order = np.random.default_rng(seed).permutation(200)
    cfg = ProtoCLIPConfig(num_prototypes=5, kmeans_redo=1)
    p = fit_prototypes(img[order], txt[order], cfg, seed=seed)
    assert same_partition(p.image_labels, img_truth[order]) and same_partition(p.text_labels, txt_truth[order])
    for t in range(5):
        np.testing.assert_allclose(p.image_centroids[p.image_labels[img_truth[order] == t][0]], centers[t], atol=0.2)


def test_random_seeding_is_what_the_paper_used_and_still_available():
    rows, truth = blobs(40, 10 * np.eye(6, dtype=np.float32)[:5], spread=0.3, seed=0)
    found = [same_partition(kmeans(rows, 5, seed=s, iters=20, redo=5, init="random")[1], truth) for s in range(3)]
    assert all(found)
    with pytest.raises(ValueError, match="unknown"):
        kmeans(rows, 5, seed=0, init="forgy")


def test_kmeans_rejects_fewer_rows_than_prototypes():
    with pytest.raises(ValueError, match="at least K=8"):
        kmeans(unit_rows(5, 3, 0), 8, seed=0)


def test_episode_seeds_differ_by_episode_and_base_seed():
    seeds = {episode_seed(ProtoCLIPConfig(seed=s), e) for s in range(3) for e in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 2**31 for s in seeds)


# --- projection heads and episode features ------------------------------------------------------------


def test_episode_features_are_unit_rows_from_eval_mode_heads():
    objective = ProtoCLIPObjective(ProtoCLIPConfig(num_prototypes=4, projection_dim=8, projection_hidden_dim=16), 6)
    objective.train()
    img, txt = objective.episode_features(torch.from_numpy(unit_rows(10, 6, 0)), torch.from_numpy(unit_rows(10, 6, 1)))
    assert img.shape == txt.shape == (10, 8) and img.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, rtol=1e-5)
    assert objective.training  # mode restored
    bn = objective.image_head[1]
    assert int(bn.num_batches_tracked) == 0  # eval mode: running statistics untouched


# --- checkpoints ----------------------------------------------------------------------------------------


def test_prototypes_survive_a_weights_only_checkpoint(tmp_path):
    objective, _, img, txt, p = episode(teacher_dim=3)
    torch.save(objective.state_dict(), tmp_path / "objective.pt")
    fresh = ProtoCLIPObjective(ProtoCLIPConfig(num_prototypes=4, projection_dim=0), 6)
    fresh.load_state_dict(torch.load(tmp_path / "objective.pt", weights_only=True))
    for name in [f.name for f in fields(Prototypes)]:
        np.testing.assert_array_equal(getattr(fresh.prototypes, name), getattr(p, name))
    out = {"image_features": torch.from_numpy(img[:6]), "text_features": torch.from_numpy(txt[:6])}
    batch = {"episode_index": torch.arange(6)}
    assert_close(fresh(out, batch, DistContext()), objective(out, batch, DistContext()))


# --- the external open_clip text teacher ----------------------------------------------------------------

TEACHER_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "layers": 1, "width": 32, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> ProtoCLIPConfig:
    """A tiny random-weights open_clip model written as a JSON config and a state-dict checkpoint."""
    import open_clip

    from training.models import resolve_model_name

    folder = tmp_path_factory.mktemp("teacher")
    config = folder / "protoclip-test-teacher.json"
    config.write_text(json.dumps(TEACHER_CONFIG))
    torch.manual_seed(0)
    model = open_clip.create_model(resolve_model_name(str(config)))
    torch.save(model.state_dict(), folder / "teacher.pt")
    return ProtoCLIPConfig(num_prototypes=2, teacher_model=str(config), teacher_checkpoint=str(folder / "teacher.pt"))


def test_teacher_features_are_the_teacher_models_normalised_text_features(teacher):
    import open_clip

    texts = ["a red square", "a blue circle", "", "two green triangles left of a star"]
    got = teacher_text_features(teacher, texts, batch_size=3)
    assert got.shape == (4, 16) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, rtol=1e-5)
    model = open_clip.create_model("protoclip-test-teacher", pretrained=teacher.teacher_checkpoint).eval()
    with torch.no_grad():
        direct = F.normalize(model.encode_text(open_clip.get_tokenizer("protoclip-test-teacher")(texts)), dim=-1)
    np.testing.assert_allclose(got, direct.numpy(), rtol=1e-4, atol=1e-5)


def test_teacher_features_drive_the_teacher_prototypes(teacher):
    texts = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("square", "circle", "star", "heart")]
    feats = teacher_text_features(teacher, texts)
    p = fit_prototypes(unit_rows(12, 5, 0), unit_rows(12, 5, 1), teacher, seed=0, teacher_features=feats)
    centroids, labels = kmeans(feats, 2, seed=2, iters=teacher.kmeans_iters, redo=teacher.kmeans_redo)
    np.testing.assert_array_equal(p.teacher_labels, labels)
    np.testing.assert_array_equal(p.teacher_centroids, centroids)


def test_no_teacher_configured_gives_none_and_a_teacher_without_weights_is_refused(teacher):
    assert teacher_text_features(ProtoCLIPConfig(), ["a caption"]) is None
    with pytest.raises(ValueError, match="teacher_checkpoint"):
        teacher_text_features(ProtoCLIPConfig(teacher_model=teacher.teacher_model), ["a caption"])


# --- two ranks against one process ----------------------------------------------------------------------


def test_share_prototypes_on_one_rank_is_the_identity_and_needs_prototypes():
    _, _, _, _, p = episode()
    assert share_prototypes(p, DistContext()) is p
    with pytest.raises(ValueError, match="no prototypes"):
        share_prototypes(None, DistContext())


RANK_SCRIPT = r"""
import json, os, sys
import numpy as np, torch, torch.distributed as dist
from training.distributed import DistContext
from training.objectives.protoclip import ProtoCLIPConfig, ProtoCLIPObjective, Prototypes, share_prototypes
rank, init, out, state = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
setup = torch.load(state, weights_only=True)
cfg = ProtoCLIPConfig(**json.loads(setup["cfg"]))
objective = ProtoCLIPObjective(cfg, 6)
objective.load_state_dict(setup["objective"])
mine = Prototypes(**{k: v.numpy() for k, v in setup["prototypes"].items()}) if rank == 0 else None
objective.set_prototypes(share_prototypes(mine, DistContext.current()))
rows = slice(rank * 4, (rank + 1) * 4)
img, txt = setup["img"][rows].clone().requires_grad_(), setup["txt"][rows].clone().requires_grad_()
loss = objective({"image_features": img, "text_features": txt}, {"episode_index": setup["index"][rows]},
                 DistContext.current())
loss.backward()
json.dump({"loss": loss.item(), "grad_img": img.grad.tolist(),
           "grads": {n: q.grad.flatten().tolist() for n, q in objective.named_parameters()},
           "running_mean": objective.image_head[1].running_mean.tolist()}, open(out, "w"))
dist.barrier()  # both ranks done with every collective before teardown
dist.destroy_process_group()
os._exit(0)  # skip interpreter teardown (see conftest.two_gloo_ranks)
"""


def test_two_ranks_share_prototypes_and_match_one_process_with_global_batch_norm(tmp_path, two_gloo_ranks):
    cfg = ProtoCLIPConfig(num_prototypes=3, projection_dim=4, projection_hidden_dim=5, temperature=0.2)
    torch.manual_seed(0)
    objective = ProtoCLIPObjective(cfg, 6)
    img, txt = torch.from_numpy(unit_rows(24, 6, 0)), torch.from_numpy(unit_rows(24, 6, 1))
    heads = objective.state_dict()  # before set_prototypes: rank 1 gets the prototypes from rank 0 only
    p = fit_prototypes(*objective.episode_features(img, txt), cfg, seed=0)
    objective.set_prototypes(p)
    index = torch.tensor([5, 0, 11, 23, 7, 7, 19, 2])
    state = {"cfg": json.dumps({f.name: getattr(cfg, f.name) for f in fields(cfg)}), "img": img[index],
             "txt": txt[index], "index": index, "objective": heads,
             "prototypes": {f.name: torch.from_numpy(getattr(p, f.name)) for f in fields(p)[:6]}}
    torch.save(state, tmp_path / "state.pt")
    ranks = two_gloo_ranks(RANK_SCRIPT, str(tmp_path / "state.pt"))  # asserts both ranks exit 0

    feats = img[index].clone().requires_grad_(), txt[index].clone().requires_grad_()
    loss = objective({"image_features": feats[0], "text_features": feats[1]}, {"episode_index": index}, DistContext())
    loss.backward()
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(loss.item(), rel=1e-5)
    # DDP averages parameter gradients over ranks; each rank's feature gradient is world_size x its share.
    for name, param in objective.named_parameters():
        mean = (torch.tensor(ranks[0]["grads"][name]) + torch.tensor(ranks[1]["grads"][name])) / 2
        assert_close(mean, param.grad.flatten(), rtol=1e-4, atol=1e-6)
    grad_img = torch.tensor(ranks[0]["grad_img"] + ranks[1]["grad_img"])
    assert_close(grad_img, 2 * feats[0].grad, rtol=1e-4, atol=1e-6)
    for r in ranks:
        assert_close(torch.tensor(r["running_mean"]), objective.image_head[1].running_mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize("pbt", [True, False])
@pytest.mark.parametrize("tau", [0.01, 0.3, -1.0])
def test_prototype_loss_equals_the_authors(teacher, pbt, tau):
    """ProtoCLIPObjective against references/protoclip_reference.py, a transcription of megvii-research/protoclip
    (src/training/loss.py `ProtoLoss.forward`, src/training/clustering.py `Clustering.PBT`, src/training/train.py
    `train_one_epoch`): soft (tau > 0) or one-hot targets, PBT on or off, with and without the external teacher."""
    from tests.training.references.protoclip_reference import pbt_reference, protoclip_prototype_loss_reference
    from training.objectives.protoclip import back_translate

    g = torch.Generator().manual_seed(0)
    n, b, d, k, dt = 40, 12, 6, 5, 7
    ep_img, ep_txt = (F.normalize(torch.randn(n, d, generator=g), dim=1) for _ in range(2))
    il, tl, el = (torch.randint(0, k, (n,), generator=g) for _ in range(3))
    ic, tc = torch.randn(k, d, generator=g) * 0.5, torch.randn(k, d, generator=g) * 0.5
    ec = torch.randn(k, dt, generator=g) * 0.5
    i_from_t, t_from_i = pbt_reference(k, tl, ep_img), pbt_reference(k, il, ep_txt)
    i_from_e, t_from_e = pbt_reference(k, el, ep_img), pbt_reference(k, el, ep_txt)
    assert np.allclose(back_translate(tl.numpy(), ep_img.numpy(), k), i_from_t.numpy(), atol=1e-6)
    index = torch.randint(0, n, (b,), generator=g)
    img, txt = (F.normalize(torch.randn(b, d, generator=g), dim=1) for _ in range(2))
    objective = ProtoCLIPObjective(ProtoCLIPConfig(num_prototypes=k, projection_dim=0, temperature=tau, pbt=pbt), d)
    extra = dict(teacher_centroids=ec.numpy(), teacher_labels=el.numpy(), image_from_teacher=i_from_e.numpy(),
                 text_from_teacher=t_from_e.numpy()) if teacher else {}
    objective.set_prototypes(Prototypes(ic.numpy(), tc.numpy(), il.numpy(), tl.numpy(), i_from_t.numpy(),
                                        t_from_i.numpy(), **extra))
    ours = objective({"image_features": img, "text_features": txt}, {"episode_index": index}, DistContext()).item()
    external = dict(external_labels=el[index], external_centroids=ec,
                    img_centroids_translated_from_external_prototypes=i_from_e,
                    text_centroids_translated_from_external_prototypes=t_from_e) if teacher else {}
    proto, proto_external = protoclip_prototype_loss_reference(
        img, txt, il[index], tl[index], ic, tc, objective.logit_scale.exp().item(), tau, pbt, i_from_t, t_from_i,
        **external)
    assert ours == pytest.approx((proto + proto_external).item(), abs=1e-5)  # teacher_weight 1

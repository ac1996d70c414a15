"""CLIP loss across two gloo ranks equals the single-process loss over the global batch, gradients included.

Each rank is a fresh Python process (as under torchrun or Ray Train), joined through a file store."""

import json
import os
import subprocess
import sys

import pytest
import torch

from training.objectives.clip import clip_loss

RANK_SCRIPT = r"""
import json, os, sys
import torch, torch.distributed as dist
import torch.nn.functional as F
from training.distributed import DistContext
from training.objectives.clip import ClipObjective
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
g = torch.Generator().manual_seed(0)
img, txt = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
local_img = img[rank * 4:(rank + 1) * 4].clone().requires_grad_()
local_txt = txt[rank * 4:(rank + 1) * 4].clone().requires_grad_()
ctx = DistContext.current()
feats = {"image_features": F.normalize(local_img, dim=-1), "text_features": F.normalize(local_txt, dim=-1),
         "logit_scale": torch.tensor(9.0)}
loss = ClipObjective()(feats, {}, ctx)
loss.backward()
json.dump({"ctx": [ctx.rank, ctx.world_size], "loss": loss.item(), "grad_img": local_img.grad.tolist(),
           "grad_txt": local_txt.grad.tolist()}, open(out, "w"))
dist.barrier()  # both ranks done with every collective before teardown
dist.destroy_process_group()
os._exit(0)  # skip interpreter teardown (see conftest.two_gloo_ranks)
"""


def test_two_ranks_match_the_single_process_loss_and_gradients(two_gloo_ranks):
    ranks = two_gloo_ranks(RANK_SCRIPT)  # asserts both ranks exit 0
    assert [r["ctx"] for r in ranks] == [[0, 2], [1, 2]]

    g = torch.Generator().manual_seed(0)
    img = torch.randn(8, 5, generator=g).requires_grad_()
    txt = torch.randn(8, 5, generator=g).requires_grad_()
    loss = clip_loss(torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1),
                     torch.tensor(9.0))
    loss.backward()
    # DDP averages rank gradients, so each rank's share is world_size x the single-process gradient.
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(loss.item(), rel=1e-5)
    grad_img = torch.cat([torch.tensor(r["grad_img"]) for r in ranks]) / 2
    grad_txt = torch.cat([torch.tensor(r["grad_txt"]) for r in ranks]) / 2
    assert torch.allclose(grad_img, img.grad, atol=1e-6) and torch.allclose(grad_txt, txt.grad, atol=1e-6)


OBJECTIVES_SCRIPT = r"""
import json, os, sys
from types import SimpleNamespace
import torch, torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from training.checkpoints import gather_sharded_state
from dataclasses import replace
from training.config import TrainConfig
from training.objectives.dreamlip import DreamLIPConfig
from training.objectives.mlcd import MLCDConfig
from training.distributed import DistContext
from training.objectives import WeightedObjectives
rank, world, init, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
if world > 1:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
N, D, K, M, P, W = 8, 6, 3, 2, 5, 10  # global batch, embedding, sub-captions, negatives, patches, width
g = torch.Generator().manual_seed(0)
data = {"img": torch.randn(N, D, generator=g), "txt": torch.randn(N, D, generator=g),
        "cap": torch.randn(N, D, generator=g), "subs": torch.randn(N, K, D, generator=g),
        "negs": torch.randn(N, M, D, generator=g), "tokens": torch.randn(N, P, W, generator=g)}
batch = {"negative_mask": torch.rand(N, M, generator=g) > 0.3,
         "subcaption_ids": torch.randint(0, 2, (N, K), generator=g),
         "cluster_label_ids": torch.randint(-1, 9, (N, 2), generator=g)}
rows = slice(rank * N // world, (rank + 1) * N // world)
leaves = {k: v[rows].clone().requires_grad_() for k, v in data.items()}
out = {"image_features": F.normalize(leaves["img"], dim=-1), "text_features": F.normalize(leaves["txt"], dim=-1),
       "synthetic_features": F.normalize(leaves["cap"], dim=-1),
       "subcaption_features": F.normalize(leaves["subs"], dim=-1),
       "negative_features": F.normalize(leaves["negs"], dim=-1), "patch_tokens": leaves["tokens"],
       "logit_scale": torch.tensor(5.0)}
# alip, dreamlip and negclip each hold the raw caption's CLIP loss, so they cannot share one WeightedObjectives
cfg = TrainConfig(objectives=dict.fromkeys(("siglip", "dcl", "negclip", "mlcd"), 1.0),
                  dreamlip=DreamLIPConfig(num_text=K),
                  mlcd=MLCDConfig(num_centers=9, negative_ratio=1.0, scale=4.0))
objectives = WeightedObjectives(cfg, D)
others = nn.ModuleDict({name: WeightedObjectives(replace(cfg, objectives={name: 1.0}), D)
                        for name in ("alip", "dreamlip")})
visual = nn.Module()
visual.proj = nn.Parameter(torch.randn(W, D, generator=torch.Generator().manual_seed(3)))
visual.forward_intermediates = None
local_batch = {k: v[rows] for k, v in batch.items()}
total, terms = objectives(out, local_batch, DistContext.current())
for name, other in others.items():
    other.attach(SimpleNamespace(visual=visual, logit_bias=None))
    other_total, other_terms = other(out, local_batch, DistContext.current())
    total, terms = total + other_total, {**terms, **other_terms}
total.backward()
optimizer = torch.optim.AdamW([*objectives.parameters(), *others.parameters()], lr=0.1)
optimizer.step()
state, opt_state = gather_sharded_state(objectives, optimizer, objectives.sharded(), DistContext.current())
mlcd = objectives.terms["mlcd"]
slot = opt_state["state"][[i for i, p in enumerate(objectives.parameters()) if p is mlcd.weight][0]]
report = {"terms": {k: v.item() for k, v in terms.items()},
          "grads": {k: v.grad.tolist() for k, v in leaves.items()},
          "params": {n: p.grad.tolist() for n, p in [*objectives.named_parameters(), *others.named_parameters()]
                     if n != "terms.mlcd.weight"},
          "shard_grad": mlcd.weight.grad.tolist()}
if rank == 0:
    report["full_weight"] = state["terms.mlcd.weight"].tolist()
    report["full_exp_avg"] = slot["exp_avg"].tolist()
json.dump(report, open(out_path, "w"))
if world > 1:
    dist.barrier()  # both ranks done with every collective before teardown
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown (see conftest.two_gloo_ranks)
"""


def run_worlds(script: str, tmp_path, worlds: dict[str, int]) -> dict[str, list[dict]]:
    """Run `script` as every rank of each named world at once; each rank's JSON report, by world."""
    path = tmp_path / "objectives.py"
    path.write_text(script)
    procs = {(tag, r): subprocess.Popen([sys.executable, str(path), str(r), str(world),
                                         f"file://{tmp_path / ('store_' + tag)}", str(tmp_path / f"{tag}{r}.json")],
                                        env={**os.environ, "OMP_NUM_THREADS": "1"})
             for tag, world in worlds.items() for r in range(world)}
    try:
        codes = [p.wait(timeout=180) for p in procs.values()]
    finally:
        for p in procs.values():
            p.kill()
    assert codes == [0] * len(procs)
    return {tag: [json.loads((tmp_path / f"{tag}{r}.json").read_text()) for r in range(world)]
            for tag, world in worlds.items()}


def run_in_process(script: str, out_path, monkeypatch) -> dict:
    """The script as the single rank of a one-process world, in this process (no process group)."""
    monkeypatch.setattr(sys, "argv", ["script", "0", "1", "unused", str(out_path)])
    exec(compile(script, "objectives_script", "exec"), {"__name__": "objectives_script"})  # noqa: S102
    return json.loads(out_path.read_text())


def test_every_objective_on_two_ranks_matches_one_rank_with_the_same_global_batch(tmp_path, monkeypatch):
    """SigLIP, DCL, NegCLIP, ALIP, DreamLIP and MLCD (its classifier split into uneven 4 + 5 row shards,
    Partial-FC style) give the single-process losses and gradients, and the checkpoint gathers the whole
    classifier and its optimiser moments."""
    two = run_worlds(OBJECTIVES_SCRIPT, tmp_path, {"two": 2})["two"]
    one = run_in_process(OBJECTIVES_SCRIPT, tmp_path / "one.json", monkeypatch)
    for name, value in one["terms"].items():
        assert sum(r["terms"][name] for r in two) / 2 == pytest.approx(value, rel=1e-5), name
    # DDP averages rank gradients, so each rank's rows carry world_size x the single-process gradient.
    for name, grad in one["grads"].items():
        got = torch.cat([torch.tensor(r["grads"][name]) for r in two]) / 2
        assert torch.allclose(got, torch.tensor(grad), atol=1e-6), name
    for name, grad in one["params"].items():  # replicated objective parameters: DDP's average
        got = sum(torch.tensor(r["params"][name]) for r in two) / 2
        assert torch.allclose(got, torch.tensor(grad), atol=1e-6), name
    assert [len(r["shard_grad"]) for r in two] == [4, 5]
    shard_grads = torch.cat([torch.tensor(r["shard_grad"]) for r in two])
    assert torch.allclose(shard_grads, torch.tensor(one["shard_grad"]), atol=1e-6)
    assert torch.allclose(torch.tensor(two[0]["full_weight"]), torch.tensor(one["full_weight"]), atol=1e-6)
    assert torch.allclose(torch.tensor(two[0]["full_exp_avg"]), torch.tensor(one["full_exp_avg"]), atol=1e-7)


TRAIN_SCRIPT = r"""
import json, os, sys
import pyarrow as pa
import torch, torch.distributed as dist
import training.loop as loop
from training.config import DataConfig, OptimConfig, ProgressConfig, ScheduleConfig, TrainConfig
from training.objectives.mlcd import MLCDConfig
from training.objectives.protoclip import ProtoCLIPConfig
rank, world, init, out_path, setup_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
setup = json.loads(open(setup_path).read())
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
rows = [{**r, "image": bytes.fromhex(r["image"])} for r in json.loads(open(setup["rows"]).read())]
table = pa.Table.from_pylist(rows)
cfg = TrainConfig(model=setup["model"], objectives={"dreamlip": 1.0, "mlcd": 1.0, "protoclip": 1.0},
                  optim=OptimConfig(lr=2e-3), schedule=ScheduleConfig(epochs=3, warmup_steps=2),
                  data=DataConfig(batch_size=8, context_length=16, workers=0),
                  progress=ProgressConfig(log_every=1, checkpoint_every=3),
                  mlcd=MLCDConfig(num_centers=5, negative_ratio=0.5),
                  protoclip=ProtoCLIPConfig(num_prototypes=4, episode_size=32, projection_dim=8,
                                            projection_hidden_dim=16))
if setup["kill_at"]:
    real = loop.after_step
    def after_step(run, progress, lr, clock):
        real(run, progress, lr, clock)
        if progress.step == setup["kill_at"]:
            raise KeyboardInterrupt
    loop.after_step = after_step
try:
    result = loop.train(cfg, table, setup["out"])
    report = {"history": result.history, "steps": result.steps}
except KeyboardInterrupt:
    report = {"killed": True}
if rank == 0:
    latest = json.load(open(setup["out"] + "/checkpoints/latest.json"))["path"]
    state = torch.load(setup["out"] + "/checkpoints/" + latest, weights_only=True)
    report["mlcd_rows"] = state["objectives"]["terms.mlcd.weight"].shape[0]
json.dump(report, open(out_path, "w"))
dist.barrier()  # both ranks done with every collective before teardown
dist.destroy_process_group()
os._exit(0)  # skip interpreter teardown (see conftest.two_gloo_ranks)
"""


@pytest.mark.slow
def test_two_rank_training_with_sharded_and_episodic_objectives_resumes_on_the_same_curve(tmp_path, micro_model):
    """train() on 2 gloo ranks with DreamLIP, Partial-FC MLCD (rows 2 + 3) and ProtoCLIP episodes of 2 steps:
    killed after its step-3 checkpoint (mid-episode) and rerun, it continues the uninterrupted run's curve."""
    from .conftest import colour_rows

    rows = [{**r, "image": r["image"].hex()} for r in colour_rows(64)]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    script = tmp_path / "train_rank.py"
    script.write_text(TRAIN_SCRIPT)

    def run(tag: str, out: str, kill_at: int) -> list[dict]:
        (tmp_path / f"{tag}setup.json").write_text(json.dumps(
            {"rows": str(tmp_path / "rows.json"), "model": micro_model, "out": str(tmp_path / out),
             "kill_at": kill_at}))
        procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", f"file://{tmp_path / ('s' + tag)}",
                                   str(tmp_path / f"{tag}{r}.json"), str(tmp_path / f"{tag}setup.json")],
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}) for r in range(2)]
        try:
            assert [p.wait(timeout=300) for p in procs] == [0, 0]
        finally:
            for p in procs:
                p.kill()
        return [json.loads((tmp_path / f"{tag}{r}.json").read_text()) for r in range(2)]

    whole = run("whole", "whole", 0)
    killed = run("killed", "killed", 3)
    assert killed[0] == {"killed": True, "mlcd_rows": 5}
    resumed = run("resumed", "killed", 0)
    assert resumed[0]["steps"] == whole[0]["steps"] == 12 and whole[0]["mlcd_rows"] == 5
    assert [m["step"] for m in resumed[0]["history"]] == [m["step"] for m in whole[0]["history"]]
    for a, b in zip(whole[0]["history"], resumed[0]["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a, b)
    assert whole[0]["history"][-1]["loss"] < whole[0]["history"][0]["loss"]

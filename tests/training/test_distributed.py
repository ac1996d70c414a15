"""CLIP loss across two gloo ranks equals the single-process loss over the global batch, gradients included.

Each rank is a fresh Python process (as under torchrun or Ray Train), joined through a file store."""

import json
import os
import subprocess
import sys

import pytest
import torch

from training.losses import clip_loss

RANK_SCRIPT = r"""
import json, sys
import torch, torch.distributed as dist
import torch.nn.functional as F
from training.losses import ClipObjective, DistContext
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
dist.destroy_process_group()
"""


def test_two_ranks_match_the_single_process_loss_and_gradients(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    init = f"file://{tmp_path / 'store'}"
    procs = [subprocess.Popen([sys.executable, str(script), str(r), init, str(tmp_path / f"r{r}.json")],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for r in range(2)]
    try:
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0]
    ranks = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
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

"""`curaclip eval` against CLIP_benchmark itself (clip-benchmark 1.6.2, the dev extra), on one randomly
initialised small open_clip model and on files this test writes.

CLIP_benchmark's own code scores the same checkpoint: ``clip_benchmark/metrics/zeroshot_classification.py``
``evaluate`` over a torchvision ``ImageFolder`` (what its builder gives a class-folder dataset), and
``clip_benchmark/metrics/zeroshot_retrieval.py`` ``evaluate`` over (image, captions) pairs with its
``datasets/builder.py`` ``image_captions_collate_fn``. The figures must be identical, or differ by at most one
sample where two scores tie exactly (torch.topk and our stable sort may break a tie differently).

One function is patched, as the issue says: ``zeroshot_classification.accuracy`` calls ``float()`` on a
one-element array, which numpy >= 2.3 refuses; the patch takes ``.item()`` and changes nothing else.
"""

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder

from flows.cli import main
from training.models import resolve_model_name

zsc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
zsr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
builder = pytest.importorskip("clip_benchmark.datasets.builder")

MODEL = "curaclip-vit-tiny"
CLASSES = ["red_fox", "blue_whale", "green_tree", "sun", "sea", "rock"]
TEMPLATES = ["a photo of a {c}.", "a blurry photo of the {c}.", "art of a {c}."]


def _accuracy(output, target, topk=(1,)):
    # CLIP_benchmark's accuracy, with .item() where it calls float() on a one-element array
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).cpu().numpy().item() / n for k in topk]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = open_clip.create_model(resolve_model_name(MODEL))
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    torch.save({"state_dict": model.state_dict()}, path)  # open_clip_train's layout
    return path


def _image(rng: np.random.Generator, tint: np.ndarray) -> Image.Image:
    pixels = np.clip(tint + 60 * rng.standard_normal((40, 48, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp("folder"), np.random.default_rng(1)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        tint = rng.uniform(40, 215, 3)
        for i in range(5 + c % 3):  # uneven classes: mean per-class recall differs from top-1
            _image(rng, tint).save(root / name / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp("csv"), np.random.default_rng(2)
    words = ["red", "blue", "small", "large", "dog", "cat", "tree", "on", "grass", "a", "the"]
    rows = []
    for i in range(24):
        _image(rng, rng.uniform(40, 215, 3)).save(root / f"img{i}.png")
        for _ in range(1 + i % 3):  # one to three captions per image
            rows.append((f"img{i}.png", " ".join(rng.choice(words, size=5))))
    lines = ["filepath,title"] + [f"{path},{text}" for path, text in rows]
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    return root / "pairs.csv", rows


def _clip_benchmark_model(checkpoint):
    model, _, preprocess = open_clip.create_model_and_transforms(resolve_model_name(MODEL), pretrained=str(checkpoint))
    return model.eval(), preprocess, open_clip.get_tokenizer(resolve_model_name(MODEL))


class _Pairs(Dataset):
    """(image, its captions), in first-appearance order of the CSV's images."""

    def __init__(self, root, rows, transform):
        self.images = list(dict.fromkeys(p for p, _ in rows))
        self.texts = {p: [t for q, t in rows if q == p] for p in self.images}
        self.root, self.transform = root, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        path = self.images[i]
        return self.transform(Image.open(self.root / path)), self.texts[path]


def _ours(tmp_path, checkpoint, *dataset_args):
    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps(TEMPLATES))
    out = tmp_path / "out" / "{dataset}_{task}.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--model", MODEL, "--batch-size", "7",
                 "--templates", str(templates), "--output", str(out), "--dataset", *dataset_args]) == 0
    return {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")}


def _close(ours: float, theirs: float, n: int) -> None:
    assert abs(ours - theirs) <= 1 / n + 1e-9, (ours, theirs)


def test_zeroshot_classification_and_retrieval_agree_with_clip_benchmark(tmp_path, checkpoint, folder, captions,
                                                                           monkeypatch):
    monkeypatch.setattr(zsc, "accuracy", _accuracy)
    csv, rows = captions
    ours = _ours(tmp_path, checkpoint, f"folder:{folder}", f"csv:{csv}")
    model, preprocess, tokenizer = _clip_benchmark_model(checkpoint)

    images = ImageFolder(str(folder), transform=preprocess)
    names = [c.replace("_", " ") for c in images.classes]
    theirs = zsc.evaluate(model, DataLoader(images, batch_size=5), tokenizer, names, TEMPLATES, device="cpu",
                          amp=False)
    mine = ours[f"{folder.name}_zeroshot_classification"]
    assert mine["task"] == "zeroshot_classification" and mine["dataset"] == folder.name
    assert set(mine) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        _close(mine["metrics"][key], theirs[key], len(images))

    pairs = _Pairs(csv.parent, rows, preprocess)
    loader = DataLoader(pairs, batch_size=5, collate_fn=builder.image_captions_collate_fn)
    theirs = zsr.evaluate(model, loader, tokenizer, device="cpu", amp=False, recall_k_list=[1, 5, 10])
    mine = ours["pairs_zeroshot_retrieval"]["metrics"]
    for key, value in theirs.items():
        _close(mine[key], value, len(rows) if key.startswith("image_") else len(pairs))
    # a random model on 24 images: far from perfect, so equal figures mean equal rankings
    assert 0 < theirs["text_retrieval_recall@1"] < 1

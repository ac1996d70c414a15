"""training.module: TrainModule runs only the passes the configured objectives read."""

import pytest
import torch

from training.distributed import DistContext
from training.models import create_model
from training.module import TrainModule
from training.objectives import WeightedObjectives
from training.objectives.mlcd import MLCDConfig

from .conftest import tiny_cfg


def count_text_rows(model) -> list[int]:
    """Rows of every text-tower forward (trimmed or not: both run `model.transformer`, the text one)."""
    calls: list[int] = []
    model.transformer.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    return calls


@pytest.mark.parametrize(("objectives", "rows_per_image", "patch_tokens", "kinds"), [
    (("clip",), [1], False, 1), (("alip",), [2], False, 2), (("siglip", "dreamlip"), [7], True, 2),
    (("dreamlip",), [7], True, 2), (("negclip",), [2], False, 2),
    (("mlcd",), [1], False, 1)])  # MLCD alone: the raw caption only for the logged CLIP loss, without a gradient
def test_the_model_runs_only_the_passes_the_objectives_read(micro_model, colour_table, objectives, rows_per_image,
                                                            patch_tokens, kinds, monkeypatch):
    import training.module
    from training.data import batch_fields, table_loader
    from training.models import image_transform

    cfg = tiny_cfg(micro_model, objectives=objectives, mlcd=MLCDConfig(num_centers=4, negative_ratio=1.0))
    model, _, tokenizer = create_model(micro_model)
    module = TrainModule(model, WeightedObjectives(cfg, 32), DistContext())
    batch = next(table_loader(colour_table, 8, tokenizer, True, 0, transform=image_transform(model, True),
                              fields=batch_fields(cfg)))
    calls = count_text_rows(model)
    out = module.encode(batch)
    # a causal text tower: one trimmed forward per kind of caption, every caption of the step encoded once
    assert sum(calls) == 8 * sum(rows_per_image) and len(calls) == kinds
    calls.clear()
    monkeypatch.setattr(training.module, "trims_text", lambda model: False)
    out = module.encode(batch)
    assert calls == [8 * r for r in rows_per_image]  # any other text tower: every caption in ONE forward
    assert ("patch_tokens" in out) == patch_tokens
    if patch_tokens:
        assert out["patch_tokens"].shape == (8, 16, 64) and out["subcaption_features"].shape == (8, 6, 32)
        plain = model.encode_image(batch["image"], normalize=True)
        assert torch.allclose(out["image_features"], plain, atol=1e-6)

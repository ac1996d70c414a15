"""training.throughput: a full optimiser step on random batches shaped for every objective."""

from training.config import TrainConfig
from training.data import batch_fields
from training.models import create_model
from training.objectives.mlcd import MLCDConfig
from training.objectives.protoclip import ProtoCLIPConfig
from training.throughput import measure_throughput, random_batch

from .conftest import train_config


def test_random_batches_carry_every_objectives_inputs(micro_model):
    model, _, _ = create_model(micro_model)
    for objectives in (("alip", "mlcd"), ("dreamlip",), ("negclip",)):
        cfg = TrainConfig(objectives=dict.fromkeys(objectives, 1.0), mlcd=MLCDConfig(num_centers=50))
        batch = random_batch(model, 4, 0, batch_fields(cfg), 50)
        if "alip" in objectives:
            assert batch["synthetic_text"].shape == (4, 16) and batch["cluster_label_ids"].shape == (4, 3)
            assert int(batch["cluster_label_ids"].max()) < 50
        if "dreamlip" in objectives:
            assert batch["subcaption_text"].shape == (24, 16)
        if "negclip" in objectives:
            assert batch["negative_text"].shape == (4, 16) and bool(batch["negative_mask"].all())


def test_throughput_of_a_step_with_every_objective(micro_model):
    cfg = train_config(model=micro_model, batch_size=8, context_length=16, accum_freq=2,
                       objectives=("siglip", "dcl", "dreamlip", "mlcd", "protoclip"),
                       mlcd=MLCDConfig(num_centers=1000),
                       protoclip=ProtoCLIPConfig(num_prototypes=4, projection_dim=8, projection_hidden_dim=16))
    result = measure_throughput(cfg, steps=1, warmup=1)
    assert result["samples_per_second"] > 0 and result["accum_freq"] == 2 and len(result["objectives"]) == 5

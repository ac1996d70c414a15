import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from training.config import TrainConfig
from training.distributed import resolve_device
from training.embedding import EmbedConfig, embed_autocast, encode_images, encode_texts
from training.jobs import BootstrapJob, EmbedPart, PartEmbedder
from training.models import create_model

from .conftest import colour_rows, train_config


def test_part_embedder_appends_float16_image_and_text_embeddings(micro_model, tmp_path):
    rows = colour_rows(6)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    out = tmp_path / "out" / "part-00000.parquet"
    torch.manual_seed(0)  # the random initialisation of the embedder's model
    summary = PartEmbedder(EmbedConfig(model=micro_model, batch_size=4), None)(
        EmbedPart(str(tmp_path / "in.parquet"), str(out)))
    assert summary == {"rows_in": 6, "rows_out": 6, "dim": 32, "device": "cpu"}
    table = pq.read_table(out)
    assert table.column("uid").to_pylist() == [r["uid"] for r in rows]
    torch.manual_seed(0)  # the same initialisation, for the float32 reference
    model, preprocess, tokenizer = create_model(micro_model)
    expected = {"image_emb": encode_images(model, preprocess, [r["image"] for r in rows], 4),
                "text_emb": encode_texts(model, tokenizer, [r["text"] for r in rows], 4)}
    for column, reference in expected.items():
        assert table.schema.field(column).type == pa.list_(pa.float16())
        emb = np.array(table.column(column).to_pylist(), np.float32)  # (6, 32)
        assert emb.shape == (6, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=2e-3)
        assert np.abs(emb - reference).max() < 1e-3  # float16 storage of the fp32 embeddings


def test_embed_autocast_is_off_on_the_cpu_by_default_and_bf16_when_asked():
    cpu = torch.device("cpu")
    assert not torch.is_autocast_enabled("cpu")
    with embed_autocast("auto", cpu):
        assert not torch.is_autocast_enabled("cpu")
    with embed_autocast("bf16", cpu):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert resolve_device("cpu") == cpu  # the embedder's device


def test_bootstrap_job_trains_and_keeps_only_the_final_weights(micro_model, tmp_path):
    pq.write_table(pa.Table.from_pylist(colour_rows(32)), tmp_path / "part-00000.parquet")
    cfg = EmbedConfig(model=micro_model, bootstrap_epochs=1)
    train_cfg = train_config(batch_size=16, workers=0, warmup_steps=1, seed=0)
    job = BootstrapJob((str(tmp_path / "part-00000.parquet"),), cfg, train_cfg, str(tmp_path / "boot"))
    checkpoint = job.run()["checkpoint"]
    assert checkpoint == str(tmp_path / "boot" / "final.pt")
    assert not (tmp_path / "boot" / "checkpoints").exists()
    trained, _, _ = create_model(micro_model, checkpoint)
    torch.manual_seed(0)  # the initialisation training started from
    initial, _, _ = create_model(micro_model)
    assert not torch.equal(trained.visual.conv1.weight, initial.visual.conv1.weight)


def test_bootstrap_config_ignores_objective_and_distribution_settings():
    import dataclasses

    from training.config import DistConfig, ProgressConfig
    from training.embedding import EmbedConfig
    from training.jobs import bootstrap_config
    from training.objectives.mlcd import MLCDConfig

    embed = EmbedConfig(bootstrap_epochs=2)
    base = TrainConfig()
    varied = dataclasses.replace(base, objectives={"alip": 1.0, "mlcd": 0.5}, mlcd=MLCDConfig(num_centers=7),
                                 data=dataclasses.replace(base.data, text_sampler="laclip"),
                                 distribution=DistConfig(ranks=2, accum_freq=2), progress=ProgressConfig(log_every=1))
    assert bootstrap_config(embed, varied) == bootstrap_config(embed, base)
    kept = train_config(lr=5e-4, warmup_steps=9, batch_size=64, seed=3)
    boot = bootstrap_config(embed, kept)
    assert (boot.optim, boot.data, boot.seed) == (kept.optim, kept.data, 3)
    assert (boot.schedule.epochs, boot.schedule.warmup_steps, boot.model) == (2, 9, embed.model)
    assert boot.objectives == {"clip": 1.0} and boot.distribution == DistConfig()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU embedding path is not exercised")
def test_part_embedder_runs_on_the_gpu_in_bf16_when_one_is_visible(micro_model, tmp_path):
    rows = colour_rows(6)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    torch.manual_seed(0)
    summary = PartEmbedder(EmbedConfig(model=micro_model, batch_size=4), None)(
        EmbedPart(str(tmp_path / "in.parquet"), str(out)))
    assert summary["device"].startswith("cuda")
    torch.manual_seed(0)
    model, preprocess, _ = create_model(micro_model)
    reference = encode_images(model, preprocess, [r["image"] for r in rows], 4)  # fp32 on the CPU
    emb = np.array(pq.read_table(out).column("image_emb").to_pylist(), np.float32)
    assert np.abs(emb - reference).max() < 5e-2  # bf16 towers: close, not equal

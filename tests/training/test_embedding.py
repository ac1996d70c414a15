import numpy as np
import pytest
from PIL import Image

from training.embedding import encode_images, encode_texts
from training.models import create_model

from .conftest import colour_rows


@pytest.fixture
def micro(micro_model):
    return create_model(micro_model)


def test_encode_images_gives_unit_rows_from_bytes_or_pil(micro):
    model, preprocess, _ = micro
    rows = colour_rows(5)
    model.train()
    emb = encode_images(model, preprocess, [r["image"] for r in rows], batch_size=2)
    assert emb.shape == (5, 32) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not model.training  # eval mode: deterministic embeddings
    pil = [Image.open(__import__("io").BytesIO(r["image"])) for r in rows]
    assert np.allclose(encode_images(model, preprocess, pil, batch_size=5), emb, atol=1e-5)
    assert encode_images(model, preprocess, [], batch_size=4).shape == (0, 32)


def test_encode_texts_gives_unit_rows_independent_of_batching(micro):
    model, _, tokenizer = micro
    texts = ["a red square", "a blue square", "two green circles"]
    emb = encode_texts(model, tokenizer, texts, batch_size=2)
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.allclose(encode_texts(model, tokenizer, texts, batch_size=3), emb, atol=1e-5)
    assert not np.allclose(emb[0], emb[1])

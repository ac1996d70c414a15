"""The caption stages' workers with `backend: transformers`: the one key that switches them to a local model
directory (tiny models built in conftest.py), through the same prompts, cleaning and answer cache as `openai`."""

import io

import pyarrow as pa
from PIL import Image

from curation.captions import LongcapConfig, RewriteConfig, SamplingConfig, TransformersConfig
from curation.captions.runner import Captioner, Rewriter

TEXTS = ["a red star on grass", "a small dog with a ball", "two cups on a wooden table"]


def _png(grey: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (grey, 0, 255 - grey)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_rewrite_on_a_local_causal_lm_uses_the_cache_on_rerun(lm_dir, tmp_path):
    local = TransformersConfig(model_dir=lm_dir, batch_size=4, device="cpu", decoding="greedy")
    cfg = RewriteConfig(backend="transformers", transformers=local, k=2, progress=False,
                        sampling=SamplingConfig(max_new_tokens=12))
    table = pa.table({"uid": ["a", "b", "c"], "text": TEXTS})
    worker = Rewriter(cfg, str(tmp_path))
    out, tally = worker.rewrite_table(table, seed=1)
    assert worker.describe()["model_dir"] == lm_dir and worker.describe()["simulated"] is False
    assert tally.requests == tally.sent == 6 and tally.prompt_tokens > 0 and tally.completion_tokens > 0
    rewrites = out.column("rewrites").to_pylist()
    kept = sum(len(r) for r in rewrites)
    assert kept + tally.failed + sum(tally.rejected.values()) == 6  # every answer kept, failed or rejected
    assert all("\n" not in r and len(r.split()) >= 2 for row in rewrites for r in row)
    again, tally = Rewriter(cfg, str(tmp_path)).rewrite_table(table, seed=1)
    assert again.equals(out) and tally.sent == 0 and tally.cached == 6


def test_longcap_on_a_local_vision_encoder_decoder(ved_dir, tmp_path):
    local = TransformersConfig(model_dir=ved_dir, batch_size=2, device="cpu", decoding="greedy")
    cfg = LongcapConfig(backend="transformers", transformers=local, progress=False,
                        sampling=SamplingConfig(max_new_tokens=10), short_max_new_tokens=5)
    table = pa.table({"uid": ["a", "b", "c"], "text": ["alt a", "alt b", "alt c"],
                      "image": [_png(0), _png(200), b"junk"]})
    out, tally = Captioner(cfg, str(tmp_path)).longcap_table(table, [None] * 3, seed=2)
    rows = out.to_pylist()
    assert tally.requests == 6 and tally.failures["malformed"] == 2  # the junk image, long and short
    assert rows[2]["long_caption"] == rows[2]["synthetic_caption"] == "alt c"  # keeps its original caption
    for row in rows[:2]:
        assert row["long_captions"] == [row["long_caption"]]
        assert row["long_caption"] != "alt a" or tally.failures["empty"]  # a generated text, or counted empty


def test_a_prompt_longer_than_the_context_is_cut_on_the_left(lm_dir):
    from curation.captions.local import TransformersGenerator
    from curation.captions.requests import Request

    generator = TransformersGenerator(TransformersConfig(model_dir=lm_dir, device="cpu", decoding="greedy"),
                                      SamplingConfig(max_new_tokens=8), "text")
    long_prompt = " ".join(["a red star on grass =>"] * 400)
    got = []
    generator.generate([Request(long_prompt)], lambda i, outcome: got.append(outcome))
    assert generator.context_length() == 256
    assert got[0].reason in (None, "empty") and 0 < got[0].prompt_tokens <= 256 - 8

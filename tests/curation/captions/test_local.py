"""The `transformers` backend on tiny local models (see conftest): batching, decoding, limits, stop strings, bad
images, and what it reports."""

from __future__ import annotations

import dataclasses
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from curation.captions.config import SamplingConfig, TransformersConfig
from curation.captions.local import TransformersGenerator, load_kwargs, resolve_device, resolve_dtype
from curation.captions.requests import Outcome, Request

GREEDY = SamplingConfig(max_new_tokens=20)
PROMPTS = ("a red cube on a blue floor =>", "a green torus on a black floor => a torus",
           "a white cone on a blue floor => a cone coloured", "a purple sphere on a blue floor =>",
           "an orange pyramid on a black floor => a pyramid coloured orange")
"""Five prompts of different lengths, so a batch of them is left-padded."""


def image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    """A random 40x48 RGB image, encoded (not 32x32: the processor has to resize it)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def answer(generator: TransformersGenerator, requests: list[Request]) -> list[Outcome]:
    """Every outcome in request order, checking that each request was answered exactly once."""
    calls: list[tuple[int, Outcome]] = []
    generator.generate(requests, lambda i, outcome: calls.append((i, outcome)))
    assert sorted(i for i, _ in calls) == list(range(len(requests)))
    return [outcome for _, outcome in sorted(calls, key=lambda call: call[0])]


def make(model_dir: str, task: str = "text", sampling: SamplingConfig = GREEDY, **cfg) -> TransformersGenerator:
    """A generator on the CPU (the same figures on a machine with a GPU), greedy unless told otherwise."""
    cfg = {"decoding": "greedy", "device": "cpu", **cfg}
    return TransformersGenerator(TransformersConfig(model_dir=model_dir, **cfg), sampling, task)


def texts(outcomes: list[Outcome]) -> list[str | None]:
    return [o.text for o in outcomes]


@pytest.fixture(scope="module")
def lm_greedy(lm_dir) -> list[Outcome]:
    """The LM's greedy answers to PROMPTS, one request at a time: the reference the batched runs must match."""
    return answer(make(lm_dir, batch_size=1), [Request(p) for p in PROMPTS])


def test_loading_is_offline_and_runs_no_remote_code_by_default():
    assert load_kwargs(TransformersConfig()) == {"local_files_only": True, "trust_remote_code": False}
    assert load_kwargs(TransformersConfig(trust_remote_code=True))["trust_remote_code"] is True


@pytest.mark.parametrize("where", ["", "missing", "empty"])
def test_a_missing_or_empty_model_dir_is_a_clear_error(tmp_path, where):
    model_dir = {"": "", "missing": str(tmp_path / "nowhere"), "empty": str(tmp_path)}[where]
    with pytest.raises(ValueError, match="transformers backend: model_dir .* does not exist"):
        make(model_dir)


def test_auto_device_and_dtype():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16


def test_describe_says_what_runs(lm_dir, ved_dir):
    assert make(lm_dir).describe() == {"model_dir": lm_dir, "architecture": "GPT2LMHeadModel", "device": "cpu",
                                       "dtype": "float32", "task": "text", "decoding": "greedy"}
    captioner = make(ved_dir, "image", decoding="sample", dtype="bfloat16")
    assert captioner.describe() == {"model_dir": ved_dir, "architecture": "VisionEncoderDecoderModel",
                                    "device": "cpu", "dtype": "bfloat16", "task": "image", "decoding": "sample"}
    # Sampling at temperature 0 is greedy decoding, and says so.
    zero = make(lm_dir, sampling=SamplingConfig(temperature=0.0), decoding="sample")
    assert zero.describe()["decoding"] == "greedy"


def test_outcomes_keep_request_order_across_batches(lm_dir, lm_greedy):
    assert len(set(texts(lm_greedy))) > 1, "the prompts should get different rewrites"
    batched = answer(make(lm_dir, batch_size=2), [Request(p) for p in PROMPTS])
    assert batched == lm_greedy


def test_counts_are_the_prompt_tokens_and_the_generated_ones(lm_dir, lm_greedy):
    tokenizer = AutoTokenizer.from_pretrained(lm_dir, local_files_only=True)
    for prompt, outcome in zip(PROMPTS, lm_greedy):
        assert outcome.prompt_tokens == len(tokenizer(prompt)["input_ids"]) > 0
        assert 0 < outcome.completion_tokens <= GREEDY.max_new_tokens
        assert outcome.reason is None and outcome.text == outcome.text.strip() and outcome.text
    # The fitted LM ends its rewrites with eos well before 20 tokens: `stop`, the eos counted.
    stopped = [o for o in lm_greedy if o.finish_reason == "stop"]
    assert stopped and all(o.completion_tokens < GREEDY.max_new_tokens for o in stopped)
    for o in stopped:
        assert o.completion_tokens == len(tokenizer(" " + o.text)["input_ids"]) + 1


@pytest.mark.parametrize("kind", ["lm", "ved", "llava"])
def test_greedy_decoding_does_not_depend_on_batching(request, kind):
    model_dir = request.getfixturevalue(f"{kind}_dir")
    task = "text" if kind == "lm" else "image"
    requests = [Request(p, image_bytes(i) if task == "image" else None) for i, p in enumerate(PROMPTS)]
    runs = [answer(make(model_dir, task, batch_size=size), requests) for size in (1, 3, 5)]
    assert runs[0] == runs[1] == runs[2]
    assert all(o.text and o.completion_tokens > 0 for o in runs[0])


def test_a_seed_makes_sampling_reproducible(lm_dir):
    requests = [Request(p) for p in PROMPTS]

    def sampled(seed: int) -> list[str | None]:
        sampling = SamplingConfig(temperature=1.5, top_p=1.0, max_new_tokens=12, seed=seed)
        return texts(answer(make(lm_dir, sampling=sampling, decoding="sample", batch_size=2), requests))

    first = sampled(3)
    assert sampled(3) == first
    assert sampled(4) != first


def test_max_new_tokens_bounds_the_completion(lm_dir, lm_greedy):
    sampling = dataclasses.replace(GREEDY, max_new_tokens=3)
    short = answer(make(lm_dir, sampling=sampling, batch_size=2), [Request(p) for p in PROMPTS])
    assert all(o.completion_tokens == 3 and o.finish_reason == "length" for o in short)
    # A request's own limit overrides the config's, in a call that mixes limits; greedy prefixes agree.
    mixed = [Request(p, max_new_tokens=2 if i % 2 else None) for i, p in enumerate(PROMPTS)]
    outcomes = answer(make(lm_dir, batch_size=4), mixed)
    for i, (outcome, full) in enumerate(zip(outcomes, lm_greedy)):
        if i % 2:
            assert outcome.completion_tokens == 2 and outcome.finish_reason == "length"
            assert full.text.startswith(outcome.text)
        else:
            assert outcome == full


def test_stop_strings_end_and_cut_the_text(lm_dir, lm_greedy):
    reference = lm_greedy[0].text
    words = reference.split()
    assert len(words) >= 3, reference
    stop = " " + words[2]
    sampling = dataclasses.replace(GREEDY, stop=(stop, "never-written"))
    outcome = answer(make(lm_dir, sampling=sampling), [Request(PROMPTS[0])])[0]
    assert outcome.text == reference[:reference.index(stop)].strip()
    assert outcome.finish_reason == "stop"
    assert outcome.completion_tokens < lm_greedy[0].completion_tokens


def test_nothing_left_before_a_stop_string_is_empty(lm_dir, lm_greedy):
    first_word = lm_greedy[0].text.split()[0]
    sampling = dataclasses.replace(GREEDY, stop=(first_word,))
    assert answer(make(lm_dir, sampling=sampling), [Request(PROMPTS[0])]) == [Outcome.failed("empty")]


@pytest.mark.parametrize("kind", ["ved", "llava"])
def test_a_bad_image_fails_alone(request, kind):
    model_dir = request.getfixturevalue(f"{kind}_dir")
    good = [image_bytes(0), image_bytes(1, "JPEG"), image_bytes(2)]
    corrupt, truncated = b"not an image at all", image_bytes(3)[:60]
    requests = [Request("Describe.", good[0]), Request("Describe.", corrupt), Request("Describe.", good[1]),
                Request("Describe.", truncated), Request("Describe.", None), Request("Describe.", good[2])]
    outcomes = answer(make(model_dir, "image", batch_size=2), requests)
    for i in (1, 3, 4):
        assert outcomes[i].reason == "malformed" and outcomes[i].detail.startswith("image: "), outcomes[i]
    assert outcomes[1].detail == "image: UnidentifiedImageError"
    alone = [answer(make(model_dir, "image", batch_size=1), [Request("Describe.", g)])[0] for g in good]
    assert [outcomes[0], outcomes[2], outcomes[5]] == alone
    assert all(o.text for o in alone)


def test_a_vision_encoder_decoder_ignores_the_prompt(ved_dir):
    image = image_bytes(5)
    outcomes = answer(make(ved_dir, "image"), [Request("Describe this image.", image), Request("Other.", image)])
    assert outcomes[0] == outcomes[1]
    # No prompt reaches the model: nothing to count; the caption's tokens are counted.
    assert outcomes[0].prompt_tokens == 0 and outcomes[0].completion_tokens > 0


def test_an_image_text_model_gets_the_chat_template_and_the_image_tokens(llava_dir):
    tokenizer = AutoTokenizer.from_pretrained(llava_dir, local_files_only=True)
    prompt = "Describe this image."
    outcome = answer(make(llava_dir, "image"), [Request(prompt, image_bytes(6))])[0]
    rendered = f"USER: <image>\n{prompt}\nASSISTANT:"
    # The processor expands the one <image> into the vision tower's 16 patch tokens.
    assert outcome.prompt_tokens == len(tokenizer(rendered)["input_ids"]) + 15


def test_close_releases_the_model(lm_dir):
    generator = make(lm_dir)
    generator.close()
    assert generator.model is None


def test_a_tokenizer_without_a_pad_token_pads_with_eos(tmp_path, lm_dir, lm_greedy):
    """Many base LMs (LLaMA, GPT-2) ship no pad token: batches are then padded with eos, and still agree."""
    model_dir = tmp_path / "lm-no-pad"
    shutil.copytree(lm_dir, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir, local_files_only=True)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(model_dir)
    assert AutoTokenizer.from_pretrained(model_dir, local_files_only=True).pad_token is None
    assert answer(make(str(model_dir), batch_size=5), [Request(p) for p in PROMPTS]) == lm_greedy


def test_an_image_text_model_without_a_chat_template_gets_the_image_token_then_the_prompt(tmp_path, llava_dir):
    model_dir = tmp_path / "llava-no-template"
    shutil.copytree(llava_dir, model_dir, ignore=shutil.ignore_patterns("chat_template*"))  # where it is saved
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    assert not processor.chat_template
    prompt = "Describe this image."
    outcome = answer(make(str(model_dir), "image"), [Request(prompt, image_bytes(6))])[0]
    assert outcome.prompt_tokens == len(processor.tokenizer(f"<image>\n{prompt}")["input_ids"]) + 15
    assert outcome.text and outcome.completion_tokens > 0

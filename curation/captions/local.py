"""The `transformers` caption backend: a local Hugging Face model directory, batched, answering the
:class:`~curation.captions.requests.Generator` contract.

Three kinds of model, told apart by the directory's config:

- ``task="text"``: a causal LM (LaCLIP's rewriter). The request's prompt is fed as plain text, never through a
  chat template, even when the tokenizer has one: LaCLIP prompts a *base* model in context (instruction,
  ``source => target`` examples, the caption), and wrapping that in chat roles changes what the model continues.
  An instruction-tuned model still reads the prompt; it just reads it as a document.
- ``task="image"``, an image-text-to-text model (LLaVA, Qwen-VL, ...): the image and the prompt go through the
  processor's chat template when it has one; without one, the prompt is the text, after the image token.
- ``task="image"``, a vision-encoder-decoder model (ViT-GPT2, TrOCR-like captioners; config `model_type`
  ``vision-encoder-decoder``, loaded as ``VisionEncoderDecoderModel``, since transformers 5 has no
  ``AutoModelForVision2Seq``): such a model has no text input, so the request's prompt is ignored and every image
  gets the caption the model writes unprompted; its prompt_tokens are 0.

Nothing is downloaded (``local_files_only=True``) and no code shipped with a model runs unless the config says so.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from curation.captions.config import SamplingConfig, TransformersConfig
from curation.captions.requests import Done, Outcome, Request
from curation.images import decode_rgb

Task = Literal["text", "image"]
"""What a generator is for: rewriting captions (`text`) or captioning images (`image`)."""
ModelKind = Literal["causal-lm", "image-text-to-text", "vision-encoder-decoder"]
"""How a model directory is loaded and prompted."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The config's dtype names, as torch dtypes."""


def load_kwargs(cfg: TransformersConfig) -> dict[str, Any]:
    """The keyword arguments every `from_pretrained` call gets: offline, and remote code only when asked for."""
    return {"local_files_only": True, "trust_remote_code": cfg.trust_remote_code}


def model_path(model_dir: str) -> Path:
    """The model directory, checked before transformers tries (and fails obscurely) to reach the hub."""
    path = Path(model_dir) if model_dir else None
    if path is None or not path.is_dir() or not any(path.iterdir()):
        raise ValueError(f"transformers backend: model_dir {model_dir!r} does not exist or is empty "
                         "(set transformers.model_dir to a local model directory; nothing is downloaded)")
    return path


def resolve_device(device: str) -> torch.device:
    """`auto` is the first GPU when one is visible, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on a GPU (half the memory, the dtype most checkpoints ship in) and float32 on the CPU
    (where bfloat16 matmuls are slow or emulated)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def model_kind(config: Any, task: Task) -> ModelKind:
    """How to load a model, from its config: a text task needs a causal LM; an image task takes a
    vision-encoder-decoder model or, for anything else, an image-text-to-text one."""
    if task == "text":
        return "causal-lm"
    if config.model_type == "vision-encoder-decoder":
        return "vision-encoder-decoder"
    return "image-text-to-text"


def decode_image(data: bytes | None) -> Image.Image:
    """A request's PNG or JPEG bytes as an upright RGB image (curation.images; raises on missing or corrupt bytes)."""
    if data is None:
        raise ValueError("no image")
    return decode_rgb(data)  # fully decoded: a truncated file fails here, not inside the batch


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text before its first stop string, and whether one was found (generate keeps the stop string)."""
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


def completion_length(tokens: list[int], eos_ids: set[int], pad_id: int | None) -> tuple[int, bool]:
    """Tokens the model generated for one sequence, and whether it ended with eos: counted up to and including
    the first eos (as OpenAI-compatible servers count it), without the trailing padding generate adds once a
    sequence that stopped at a stop string waits for the rest of its batch."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return i + 1, True
    length = len(tokens)
    while length and tokens[length - 1] == pad_id:
        length -= 1
    return length, False


def batches(requests: Sequence[Request], indices: Sequence[int], default_max: int,
            size: int) -> list[tuple[int, list[int]]]:
    """The given request indices in batches of at most `size`, each batch sharing one max_new_tokens (so every
    request stops at its own limit and `length` means it hit it), in request order within each limit."""
    by_limit: dict[int, list[int]] = {}
    for i in indices:
        by_limit.setdefault(requests[i].max_new_tokens or default_max, []).append(i)
    return [(limit, indices[start:start + size])
            for limit, indices in by_limit.items() for start in range(0, len(indices), size)]


@dataclass
class Encoded:
    """One batch ready for `generate`: its tensors, each row's prompt length, and where new tokens begin."""

    inputs: dict[str, torch.Tensor]
    """generate's inputs (input_ids, attention_mask, pixel_values, ...), on the model's device."""
    prompt_tokens: list[int]
    """each row's non-pad prompt tokens (image tokens included); 0 for a model that takes no prompt."""
    new_from: int
    """the column of generate's output where generated tokens begin (after the prompt or the start token)."""


class TransformersGenerator:
    """A local model answering requests in batches of ``cfg.batch_size`` under ``torch.inference_mode``.

    A request whose image cannot be decoded is answered `malformed` and left out of its batch; an answer with no
    text left once cut and stripped is `empty`. An error of a whole batch (out of memory, a broken model) is not
    one bad sample and is raised. With a seed, torch is seeded before each batch, so the same requests in the same
    batches give the same samples; greedy decoding does not depend on batching.
    """

    def __init__(self, cfg: TransformersConfig, sampling: SamplingConfig, task: Task) -> None:
        # transformers is imported here, not at the top: importing it takes seconds, and the stages that import
        # this module with another backend never need it.
        from transformers import AutoConfig

        self.cfg, self.sampling, self.task = cfg, sampling, task
        self.path = model_path(cfg.model_dir)
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.config = AutoConfig.from_pretrained(self.path, **load_kwargs(cfg))
        self.kind = model_kind(self.config, task)
        self.model, self.tokenizer, self.processor = self._load()

    def _load(self) -> tuple[Any, Any, Any]:
        """The model, its tokenizer and its processor (the image processor, or the multimodal processor)."""
        import transformers as tf

        kwargs = load_kwargs(self.cfg)
        if self.kind == "causal-lm":
            model_cls, processor = tf.AutoModelForCausalLM, None
            tokenizer = tf.AutoTokenizer.from_pretrained(self.path, **kwargs)
        elif self.kind == "vision-encoder-decoder":
            model_cls = tf.VisionEncoderDecoderModel
            processor = tf.AutoImageProcessor.from_pretrained(self.path, **kwargs)
            tokenizer = tf.AutoTokenizer.from_pretrained(self.path, **kwargs)
        else:
            model_cls = tf.AutoModelForImageTextToText
            processor = tf.AutoProcessor.from_pretrained(self.path, **kwargs)
            tokenizer = processor.tokenizer
        # Decoder-only models continue the last token of each row, so prompts are padded on the left; a prompt
        # longer than the context is cut on the left too, so the caption and its ` =>` stay last.
        tokenizer.padding_side = "left"
        tokenizer.truncation_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = model_cls.from_pretrained(self.path, dtype=self.dtype, **kwargs).to(self.device).eval()
        return model, tokenizer, processor

    @property
    def greedy(self) -> bool:
        """Greedy when the config says so, or when sampling at temperature 0 (its limit)."""
        return self.cfg.decoding == "greedy" or self.sampling.temperature <= 0

    def describe(self) -> dict:
        """The directory, the class its config names, and how it runs (decoding as it runs, not as asked)."""
        architecture = ",".join(self.config.architectures or []) or self.config.model_type
        return {"model_dir": str(self.path), "architecture": architecture, "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."), "task": self.task,
                "decoding": "greedy" if self.greedy else "sample"}

    def close(self) -> None:
        """Drop the model so its memory can go (the GPU cache too: another stage's model may need it)."""
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(self, requests: Sequence[Request], done: Done) -> None:
        """Answer bad images at once, then the rest batch by batch (see :func:`batches`)."""
        images: dict[int, Image.Image] = {}
        if self.task == "image":
            for i, request in enumerate(requests):
                try:
                    images[i] = decode_image(request.image)
                except Exception as error:  # any decoder error is this sample's, never the batch's
                    done(i, Outcome.failed("malformed", f"image: {type(error).__name__}"))
        usable = [i for i in range(len(requests)) if self.task == "text" or i in images]
        for limit, indices in batches(requests, usable, self.sampling.max_new_tokens, self.cfg.batch_size):
            outcomes = self._run_batch([requests[i] for i in indices], [images.get(i) for i in indices], limit)
            for i, outcome in zip(indices, outcomes):
                done(i, outcome)

    def context_length(self) -> int | None:
        """Positions the text model holds (prompt and new tokens together); None when its config does not say."""
        config = getattr(self.config, "text_config", None) or self.config
        return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)

    def _encode(self, requests: list[Request], images: list[Image.Image | None], limit: int) -> Encoded:
        """The batch's tensors on the model's device, in the model's dtype for pixels."""
        if self.kind == "causal-lm":
            room = self.context_length() - limit if self.context_length() else None
            inputs = self.tokenizer([r.prompt for r in requests], return_tensors="pt", padding=True,
                                    truncation=room is not None, max_length=room)
        elif self.kind == "vision-encoder-decoder":
            inputs = self.processor(images=images, return_tensors="pt")
        else:
            inputs = self.processor(images=images, text=[self._mm_prompt(r.prompt) for r in requests],
                                    return_tensors="pt", padding=True)
        inputs = {k: v.to(device=self.device, dtype=self.dtype if v.is_floating_point() else v.dtype)
                  for k, v in inputs.items()}
        if self.kind == "vision-encoder-decoder":
            # No prompt: the decoder starts from its start token, which generate puts first in every sequence.
            return Encoded(inputs, [0] * len(requests), 1)
        return Encoded(inputs, inputs["attention_mask"].sum(dim=1).tolist(), inputs["input_ids"].shape[1])

    def _mm_prompt(self, prompt: str) -> str:
        """An image-text-to-text prompt: the processor's chat template with the image and the instruction, or
        without a template the image token (when the processor has one) before the instruction."""
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        image_token = getattr(self.processor, "image_token", None)
        return f"{image_token}\n{prompt}" if image_token and image_token not in prompt else prompt

    def _generation_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """`generate`'s decoding arguments: greedy, or temperature and top-p alone (top_k=0 turns off the top-k
        filter a model's generation config may carry, as the stage's sampling names no top-k)."""
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if self.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=self.sampling.temperature, top_p=self.sampling.top_p, top_k=0)
        if self.sampling.stop:
            kwargs.update(stop_strings=list(self.sampling.stop), tokenizer=self.tokenizer)
        return kwargs

    def _eos_ids(self) -> set[int]:
        """Every token id that ends a generation (a generation config may list several)."""
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos]) - {None}

    @torch.inference_mode()
    def _run_batch(self, requests: list[Request], images: list[Image.Image | None], limit: int) -> list[Outcome]:
        """One `generate` call; one outcome per request, in order."""
        encoded = self._encode(requests, images, limit)
        if self.sampling.seed is not None:
            torch.manual_seed(self.sampling.seed)
        sequences = self.model.generate(**encoded.inputs, **self._generation_kwargs(limit))
        new_tokens = sequences[:, encoded.new_from:].tolist()  # (B, generated)
        eos_ids, pad_id = self._eos_ids(), self.tokenizer.pad_token_id
        return [self._outcome(tokens, prompt_tokens, limit, eos_ids, pad_id)
                for tokens, prompt_tokens in zip(new_tokens, encoded.prompt_tokens)]

    def _outcome(self, tokens: list[int], prompt_tokens: int, limit: int, eos_ids: set[int],
                 pad_id: int | None) -> Outcome:
        """A sequence's text (cut at the first stop string, stripped) and counts; `length` when it used all its
        new tokens without an eos or a stop string."""
        length, ended = completion_length(tokens, eos_ids, pad_id)
        text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
        text, stopped = cut_at_stop(text, self.sampling.stop)
        text = text.strip()
        if not text:
            return Outcome.failed("empty")
        finish = "length" if length >= limit and not (ended or stopped) else "stop"
        return Outcome(text=text, prompt_tokens=prompt_tokens, completion_tokens=length, finish_reason=finish)

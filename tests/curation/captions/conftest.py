"""Tiny local model directories for the `transformers` backend's tests, built once per session, offline.

A byte-level BPE tokenizer is trained on caption-like sentences; a causal LM (GPT-2), a vision-encoder-decoder
captioner (ViT encoder, GPT-2 decoder with cross-attention) and an image-text-to-text model (LLaVA: CLIP vision
tower, Llama language model) are built around it and saved as a model hub would ship them. The two captioners
keep their random weights; the LM is fitted for a few seconds to the sentences, so that it writes readable
rewrites that end with eos, which the tests of `stop` and stop strings need.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessor,
)

COLOURS = ("red", "blue", "green", "yellow", "white", "black", "purple", "orange")
SHAPES = ("cube", "sphere", "cone", "cylinder", "torus", "pyramid")
SENTENCES = tuple(f"a {c} {s} on a {b} floor => a {s} coloured {c} above {b} ground"
                  for c in COLOURS for s in SHAPES for b in COLOURS[:2])
"""96 caption-like lines (with LaCLIP's `=>`), the tokenizer's training text."""
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
CHAT_TEMPLATE = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
                 "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
"""A minimal LLaVA-style template: the image token, then the instruction, then the assistant's turn. (The newline
after a turn is an expression: transformers renders templates with trim_blocks, which eats one after a tag.)"""
WIDTH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
"""Every transformer here is two layers of width 32: big enough to be a real model, fast on two cores."""


def train_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2's scheme, so any text round-trips) with pad, bos, eos, unk and image tokens."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def gpt2_config(tokenizer: PreTrainedTokenizerFast, **extra) -> GPT2Config:
    return GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, **extra)


def save(model, directory: Path, *parts) -> str:
    """Save a model and its tokenizer or processors into one directory, as a hub repository holds them."""
    model.save_pretrained(directory)
    for part in parts:
        part.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer()


def fit(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, steps: int) -> GPT2LMHeadModel:
    """Full-batch AdamW on the sentences, each ending with eos (the loss falls from ~5.9 to ~0.6 in 60 steps)."""
    batch = tokenizer([s + tokenizer.eos_token for s in SENTENCES], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # (96, T)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory, tokenizer) -> str:
    """A two-layer GPT-2 causal LM, fitted to `source => target` lines."""
    torch.manual_seed(0)
    model = fit(GPT2LMHeadModel(gpt2_config(tokenizer)), tokenizer, steps=60)
    return save(model, tmp_path_factory.mktemp("lm"), tokenizer)


@pytest.fixture(scope="session")
def ved_dir(tmp_path_factory, tokenizer) -> str:
    """A ViT-GPT2 vision-encoder-decoder captioner on 32x32 images, with its image processor and tokenizer."""
    torch.manual_seed(1)
    encoder = ViTConfig(image_size=32, patch_size=8, **WIDTH)
    decoder = gpt2_config(tokenizer, add_cross_attention=True, is_decoder=True)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = tokenizer.bos_token_id
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model = VisionEncoderDecoderModel(config=config)
    generation = model.generation_config
    generation.decoder_start_token_id = tokenizer.bos_token_id
    generation.pad_token_id, generation.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    return save(model, tmp_path_factory.mktemp("ved"), tokenizer, ViTImageProcessor(size={"height": 32, "width": 32}))


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory, tokenizer) -> str:
    """A LLaVA image-text-to-text model (CLIP vision tower on 32x32 images: 16 patch tokens; Llama decoder) with
    a processor that has a chat template."""
    torch.manual_seed(2)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, **WIDTH)
    text = LlamaConfig(vocab_size=len(tokenizer), num_key_value_heads=2, max_position_embeddings=256,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **WIDTH)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(
        "<image>"), vision_feature_layer=-1, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    # 4x4 patches plus CLIP's class token, which the "default" strategy drops: 16 image tokens per image.
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    return save(model, tmp_path_factory.mktemp("llava"), processor)

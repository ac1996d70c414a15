"""LaCLIP's rewrite prompts and answer cleaning (curation.captions.laclip) and its example pools.

The prompt is checked against references/laclip_reference.py, a transcription of LijieFan/LaCLIP's
rewrite/llama_rewrite.py ``main()`` (commit 7ddd516): the literal ``"write image captions differently,\\n\\n"``
then three ``"{source} => {target}"`` blocks drawn with ``random.sample(range(num_caps), 3)`` from the one pool
named by ``--sample_mode`` (rewrite/utils.py), separated by blank lines, and ``"{caption} =>"`` last; the model
is sampled with temperature 0.9, top-p 0.95, ``max_gen_len=77``, and the answer is
``result.split('\\n')[8].strip().split('=>')[1].strip()``: the continuation's first line, stripped. curaclip's
prompt is the same string without the 12 spaces of source indentation inside their triple-quoted literal.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.captions.config import RewriteConfig
from curation.captions.laclip import (
    build_prompt,
    clean_rewrite,
    prompt_rng,
    rewrite_prompts,
    strip_preamble,
)
from curation.captions.laclip_pools import POOLS
from tests.curation.captions.references import laclip_reference as ref

CAPTION = "brown leather sofa in a bright living room"


def chosen_pairs(prompt: str) -> list[tuple[str, str]]:
    """The example pairs a prompt holds, in order: its `source => target` lines between instruction and caption."""
    lines = [line for line in prompt.split("\n") if line]
    return [tuple(line.split(" => ")) for line in lines[1:-1]]


def undent(prompt: str) -> str:
    """LaCLIP's prompt without the source-code indentation in its literal (curaclip's one difference)."""
    return prompt.replace("\n" + ref.LACLIP_INDENT, "\n")


# --- parity with LaCLIP's prompt construction -----------------------------------------------------------------


def test_reference_reproduces_the_laclip_literal():
    """The reference itself, against the literal as it reads in llama_rewrite.py (indentation included)."""
    got = ref.laclip_prompt(["s1", "s2", "s3"], ["t1", "t2", "t3"], "cap\n")
    want = ("write image captions differently,\n\n            s1 => t1\n\n            s2 => t2\n\n"
            "            s3 => t3\n\n            cap =>")
    assert got == want


@pytest.mark.parametrize("pool_name", sorted(POOLS))
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_build_prompt_matches_laclip_for_the_same_examples(pool_name, seed):
    pool = POOLS[pool_name]
    for instruction in (ref.LACLIP_INSTRUCTION, RewriteConfig().instruction):
        prompt = build_prompt(CAPTION, pool, np.random.default_rng(seed), instruction)
        pairs = chosen_pairs(prompt)
        assert all(pair in pool for pair in pairs)
        expected = ref.laclip_prompt([s for s, _ in pairs], [t for _, t in pairs], CAPTION, instruction)
        assert prompt == undent(expected)


def test_build_prompt_matches_laclip_sampling_shape():
    """LaCLIP's own draw (random.sample, three distinct pairs of one pool) fed to both gives the same prompt."""
    pool = POOLS["chatgpt"]
    pairs = ref.laclip_choose(pool, random.Random(3))
    sub_pool = tuple(pairs)  # a pool of exactly the chosen pairs: build_prompt can only pick those
    prompt = build_prompt(CAPTION, sub_pool, np.random.default_rng(0), ref.LACLIP_INSTRUCTION)
    got = chosen_pairs(prompt)
    assert sorted(got) == sorted(pairs)
    assert prompt == undent(ref.laclip_prompt([s for s, _ in got], [t for _, t in got], CAPTION))


def test_answer_read_out_matches_laclip_for_a_base_model_continuation():
    """A base model continues the pattern past its line; LaCLIP keeps line 8's text after '=>', we the first line."""
    pool = POOLS["coco"]
    pairs = ref.laclip_choose(pool, random.Random(0))
    laclip = ref.laclip_prompt([s for s, _ in pairs], [t for _, t in pairs], CAPTION)
    continuation = " A brown leather couch in a sunny living room.\n\n            red car => A car that is red."
    ours, reason = clean_rewrite(continuation, CAPTION)
    assert reason is None
    assert ours == ref.laclip_postprocess(laclip + continuation) == "A brown leather couch in a sunny living room."


# --- prompt structure -------------------------------------------------------------------------------------------


def test_prompt_has_instruction_three_examples_of_one_pool_and_caption_last():
    cfg = RewriteConfig()
    prompts = rewrite_prompts("uid-1", CAPTION, 8, cfg.pools, seed=7, instruction=cfg.instruction,
                              examples=cfg.examples)
    assert len(prompts) == 8
    for j, prompt in enumerate(prompts):
        blocks = prompt.split("\n\n")
        assert blocks[0] == cfg.instruction
        assert blocks[-1] == f"{CAPTION} =>"
        pairs = chosen_pairs(prompt)
        assert len(pairs) == 3 and len(set(pairs)) == 3
        assert set(pairs) <= set(POOLS[cfg.pools[j % len(cfg.pools)]])


def test_rewrite_j_uses_pool_j_mod_len():
    pools = ("coco", "human")
    prompts = rewrite_prompts("u", CAPTION, 5, pools, seed=0, instruction="Rewrite.", examples=2)
    for j, prompt in enumerate(prompts):
        owners = {name for name, pool in POOLS.items() if set(chosen_pairs(prompt)) <= set(pool)}
        assert owners == {pools[j % 2]}


def test_prompts_are_deterministic_and_vary_with_uid_seed_and_rewrite():
    args = dict(k=4, pools=("chatgpt",) * 4, instruction="Rewrite.", examples=3)
    first = rewrite_prompts("a", CAPTION, seed=1, **args)
    assert first == rewrite_prompts("a", CAPTION, seed=1, **args)
    assert len(set(first)) > 1, "the k rewrites draw their examples independently"
    assert first != rewrite_prompts("b", CAPTION, seed=1, **args)
    assert first != rewrite_prompts("a", CAPTION, seed=2, **args)


def test_prompt_rng_depends_only_on_seed_uid_and_rewrite():
    draw = [prompt_rng(5, f"uid{i}", 1).integers(1 << 30) for i in range(20)]
    again = [prompt_rng(5, f"uid{i}", 1).integers(1 << 30) for i in reversed(range(20))][::-1]
    assert draw == again
    assert len(set(draw)) == 20
    assert prompt_rng(5, "x", 0).integers(1 << 30) != prompt_rng(5, "x", 1).integers(1 << 30)


def test_examples_count_and_caption_whitespace():
    prompt = build_prompt("a  dog\non the\tbeach ", POOLS["bard"], np.random.default_rng(0), "Go.", examples=5)
    assert len(chosen_pairs(prompt)) == 5
    assert prompt.endswith("\n\na dog on the beach =>")
    assert build_prompt("x y", POOLS["bard"], np.random.default_rng(0), "Go.", examples=0) == "Go.\n\nx y =>"
    with pytest.raises(ValueError, match="examples"):
        build_prompt("x y", POOLS["bard"], np.random.default_rng(0), "Go.", examples=len(POOLS["bard"]) + 1)


def test_unknown_pool_is_rejected_with_the_known_names():
    with pytest.raises(ValueError, match="known: \\['bard', 'chatgpt', 'coco', 'human'\\]"):
        rewrite_prompts("u", CAPTION, 2, ("chatgpt", "gpt5"), seed=0, instruction="R.", examples=3)
    with pytest.raises(ValueError):
        rewrite_prompts("u", CAPTION, 2, (), seed=0, instruction="R.", examples=3)


def test_config_pools_are_the_known_pools():
    assert set(RewriteConfig().pools) == set(POOLS)


# --- the pools --------------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text).strip().lower()


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pool_is_well_formed(name):
    pool = POOLS[name]
    assert len(pool) >= 16
    assert len(set(pool)) == len(pool)
    assert len({source for source, _ in pool}) == len(pool)
    for source, target in pool:
        for text in (source, target):
            assert text == text.strip() and text
            assert "=>" not in text and "\n" not in text and "\r" not in text
        assert _norm(source) != _norm(target)


def test_pools_differ_from_each_other():
    names = sorted(POOLS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(POOLS[a]) & set(POOLS[b])
            assert not {t for _, t in POOLS[a]} & {t for _, t in POOLS[b]}


# --- cleaning answers -------------------------------------------------------------------------------------------

REWRITE = "A black dog runs along a sandy beach."
SOURCE = "black dog running on the beach"


@pytest.mark.parametrize("output", [
    "Sure, here is a rewritten caption: A black dog runs along a sandy beach.",
    "Sure! Here is one:\n\nA black dog runs along a sandy beach.",
    "Here's a rewrite: A black dog runs along a sandy beach.",
    "Here is a rewritten version of the caption:\n\"A black dog runs along a sandy beach.\"",
    "Rewritten caption: A black dog runs along a sandy beach.",
    "rewritten caption 1: A black dog runs along a sandy beach.",
    "Certainly! Here\u2019s a different way to say it:\n\n\u201cA black dog runs along a sandy beach.\u201d",
    "Of course. Caption: 'A black dog runs along a sandy beach.'",
    "=> A black dog runs along a sandy beach.",
    " A black dog runs along a sandy beach.\n\nblack cat => A cat that is black.",
    "A black dog runs along a sandy beach.\nLet me know if you want another version!",
    "\n\n  \"A black dog runs along a sandy beach.\"  \n",
])
def test_preambles_quotes_and_extra_lines_are_removed(output):
    assert clean_rewrite(output, SOURCE) == (REWRITE, None)


def test_strip_preamble_forms():
    assert strip_preamble("SURE THING! HERE IS A NEW CAPTION: a cat naps") == "a cat naps"
    assert strip_preamble('"=> a cat naps"') == "a cat naps"
    assert strip_preamble("Answer: `a cat naps`") == "a cat naps"
    assert strip_preamble("a cat naps") == "a cat naps"


def test_ordinary_output_passes_unchanged():
    for text in ("A black dog runs along a sandy beach.", "Here the dog runs on sand", "dogs: two of them, running",
                 "Sure-footed goat on a cliff", "Captions on a museum wall beside a painting"):
        assert clean_rewrite(text, SOURCE) == (text, None)


@pytest.mark.parametrize("output", ["", "   \n\n ", "Sure! Here is a rewrite:", '""', "=>"])
def test_empty(output):
    assert clean_rewrite(output, SOURCE) == (None, "empty")


@pytest.mark.parametrize("output", ["black dog running on the beach", "Black dog running on the beach.",
                                    "  BLACK  dog running on the\tbeach!!", '"black dog running on the beach"',
                                    "Rewritten caption: Black dog running on the beach."])
def test_identical(output):
    assert clean_rewrite(output, SOURCE) == (None, "identical")


@pytest.mark.parametrize("output", ["Dog.", "Here is one:\n\nbeach", '"dog"'])
def test_too_short(output):
    assert clean_rewrite(output, SOURCE) == (None, "too_short")


@settings(max_examples=300, deadline=None)
@given(output=st.text(), source=st.text(max_size=40))
def test_clean_rewrite_returns_one_line_of_two_words_or_a_reason(output, source):
    text, reason = clean_rewrite(output, source)
    if text is None:
        assert reason in {"empty", "identical", "too_short"}
    else:
        assert reason is None
        assert len(text.splitlines()) == 1 and text == text.strip()
        assert len(text.split()) >= 2


@settings(max_examples=100, deadline=None)
@given(caption=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60), seed=st.integers(0, 2**32),
       uid=st.text(max_size=20), examples=st.integers(0, 16))
def test_prompt_ends_with_the_caption_and_holds_the_examples(caption, seed, uid, examples):
    prompt = build_prompt(caption, POOLS["human"], prompt_rng(seed, uid, 0), "Rewrite.", examples)
    assert prompt.endswith(" ".join(caption.split()) + " =>")
    assert prompt.startswith("Rewrite.\n\n")
    assert prompt.count(" => ") >= examples

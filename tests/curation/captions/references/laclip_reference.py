"""Independent reference transcription of LaCLIP's prompt construction and output post-processing.

Source (read directly from the authors' code, not from the paper):
    repository  LijieFan/LaCLIP
    commit      7ddd516e7a2b94651a819217b573b157b461199d (HEAD when read); rewrite/llama_rewrite.py and
                rewrite/utils.py were last changed in 3cad337324638648270e0d7bfa0d295b39721edd ("updates",
                2023-10-11).
    files       rewrite/llama_rewrite.py  main():
                    * per caption, ``chosen_idx = random.sample(range(num_caps), 3)``: three example pairs
                      drawn without replacement from the one pool named by ``--sample_mode`` (lines 103-131;
                      `coco` draws 3 images, then 2 of each image's 5 captions as source and target);
                    * the prompt, a triple-quoted literal ``current_prompt = \"\"\"write image captions
                      differently, ... {} =>\"\"\".format(...)`` (lines 133-145), with the caption's newlines
                      removed by ``original_prompt.replace('\\n', '')``;
                    * prompts over ``max_seq_len - 5`` tokens cut to ``max_seq_len - 10`` tokens plus ``' =>'``
                      (lines 146-153; not transcribed: it needs LLaMA's tokenizer);
                    * ``generator.generate(prompts, max_gen_len=77, temperature=temperature, top_p=top_p)``,
                      main()'s defaults temperature=0.9, top_p=0.95 (line 155);
                    * post-processing ``result.split('\\n')[8].strip()`` then ``.split('=>')[1].strip()``
                      (lines 159-162): LLaMA v1's ``generate`` returns prompt + continuation, and line 8 is
                      the ``{caption} => {continuation's first line}`` line;
                    * written out as ``p.strip().replace('\\n', ' ')`` one per line (line 166).
                rewrite/utils.py  the four pools: chatgpt_/bard_/human_ source and target lists (16 pairs each)
                    and coco_caption_list (18 images x 5 captions).

The literal's lines after the first are indented by the 12 spaces of the code around it, and LLaMA saw them.
Re-written here in my own code from that reading; the authors' example pairs are not copied.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

LACLIP_INSTRUCTION = "write image captions differently,"
"""The instruction exactly as llama_rewrite.py writes it (lower case, a trailing comma)."""
LACLIP_INDENT = " " * 12
"""The source-code indentation that sits inside the triple-quoted literal, before every line but the first."""


def laclip_prompt(sources: Sequence[str], targets: Sequence[str], caption: str,
                  instruction: str = LACLIP_INSTRUCTION) -> str:
    """The prompt string llama_rewrite.py main() builds from three chosen pairs and one line of source.txt
    (``instruction`` is a parameter only so a test can pass curaclip's; LaCLIP's is the default)."""
    assert len(sources) == len(targets) == 3, "LaCLIP's literal has exactly three example slots"
    ind = LACLIP_INDENT
    text = caption.replace("\n", "")
    return (f"{instruction}\n\n"
            f"{ind}{sources[0]} => {targets[0]}\n\n"
            f"{ind}{sources[1]} => {targets[1]}\n\n"
            f"{ind}{sources[2]} => {targets[2]}\n\n"
            f"{ind}{text} =>")


def laclip_choose(pool: Sequence[tuple[str, str]], rng: random.Random) -> list[tuple[str, str]]:
    """The non-coco branches of main(): three distinct indices from ``random.sample``, their pairs in draw order."""
    return [pool[i] for i in rng.sample(range(len(pool)), 3)]


def laclip_postprocess(result: str) -> str:
    """main()'s read-out of one LLaMA result (prompt + continuation): line 8, the part after its first '=>'."""
    line = result.split("\n")[8].strip()
    return line.split("=>")[1].strip().replace("\n", " ")

"""Reference transcriptions of ARO's caption perturbations and of NegCLIP's hard-negative loss.

Sources, read at their latest stored commits:

* ``mertyg/vision-language-models-are-bows`` (ARO, Yuksekgonul et al., ICLR 2023), commit 81fdd20,
  ``dataset_zoo/perturbations.py`` (class ``TextShuffler``) and ``dataset_zoo/aro_datasets.py``
  (``COCO_Order`` / ``Flickr30k_Order`` build 4 perturbed captions per caption with
  ``shuffle_nouns_and_adj``, ``shuffle_allbut_nouns_and_adj``, ``shuffle_within_trigrams``,
  ``shuffle_trigrams``). These are the *evaluation* (Order benchmark) perturbations, not the NegCLIP
  training negatives.
* NegCLIP *training* negatives: the generator the ARO first author posted in answer to issue #13 of that
  repository (a gist, ``gist.github.com/mertyg/03e638fef99cbd8c3a108e8bacd16a6c``; a copy of it was read
  from the code store): ``global_find_hard_negatives``, ``shuffle_noun_phrase``, ``shuffle_verb_phrases``,
  ``shuffler`` / ``inner_pos_and_tag_finder`` / ``swapper``, ``check_same``. spaCy ``en_core_web_lg``.
  The released ``temp_data/valid_neg_clip.tsv`` in the ARO repository is consistent with it
  (1-5 negatives per caption, mean 1.52; phrase swaps come out lower-cased).
* NegCLIP training loop: ``vinid/neg_clip`` (open_clip fork), ``src/training/data.py`` (``CsvDataset``),
  ``src/training/train.py`` (``train_one_epoch``), ``src/open_clip/loss.py`` (``ClipLoss.forward``).

Everything here is pure Python (``random.Random`` for randomness, ``math`` for the loss) so it runs with
neither spaCy, nltk, numpy nor torch.  Part-of-speech information is supplied by the caller as
pre-tagged tokens.  Tags may be Penn Treebank fine tags (``NN``, ``NNS``, ``JJ``, ``RB`` ...) or
Universal/spaCy coarse tags (``NOUN``, ``PROPN``, ``ADJ``, ``ADV``, ``VERB``, ``AUX``); anything else is
"other".  The functions reproduce the *semantics* of the originals, not their random streams.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from random import Random

# ---------------------------------------------------------------------------------------------------------
# Tag classes
# ---------------------------------------------------------------------------------------------------------

#: ARO's ``shuffle_nouns_and_adj`` selects tokens whose spaCy *fine* tag is one of these (so proper nouns
#: count as nouns).  The coarse spellings are accepted as equivalents for pre-tagged input.
NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS", "NOUN", "PROPN"})
#: ARO's adjective class: fine tags JJ / JJR / JJS (coarse ADJ accepted as the equivalent).
ADJ_TAGS = frozenset({"JJ", "JJR", "JJS", "ADJ"})

#: Penn -> coarse mapping used where the NegCLIP generator reads spaCy's coarse ``pos_`` (ADV, ADJ, VERB,
#: AUX) but the caller only has Penn tags.  (spaCy's own mapping is context dependent for a few tags;
#: this is the usual approximation.)
PTB_TO_COARSE = {
    "NN": "NOUN", "NNS": "NOUN", "NNP": "PROPN", "NNPS": "PROPN",
    "JJ": "ADJ", "JJR": "ADJ", "JJS": "ADJ",
    "RB": "ADV", "RBR": "ADV", "RBS": "ADV", "WRB": "ADV",
    "VB": "VERB", "VBD": "VERB", "VBG": "VERB", "VBN": "VERB", "VBP": "VERB", "VBZ": "VERB",
    "MD": "AUX",
}


def is_noun(tag: str) -> bool:
    return tag in NOUN_TAGS


def is_adj(tag: str) -> bool:
    return tag in ADJ_TAGS


def _words(tokens: Sequence) -> list[str]:
    """Accept either plain words or (word, tag[, pos]) tuples and return the words."""
    return [t if isinstance(t, str) else t[0] for t in tokens]


def _permute_positions(words: list[str], positions: list[int], rng: Random) -> None:
    """Uniformly permute, in place, the words found at ``positions`` among those same positions."""
    picked = [words[i] for i in positions]
    rng.shuffle(picked)
    for i, w in zip(positions, picked):
        words[i] = w


def join_tokens(words: Sequence[str]) -> str:
    """ARO returns every token-level perturbation as ``" ".join(tokens)``: one space between tokens, so
    punctuation that the tokenizer split off stays separated ("a yak ." rather than "a yak.")."""
    return " ".join(words)


# ---------------------------------------------------------------------------------------------------------
# ARO word-order perturbations (COCO-Order / Flickr30k-Order benchmark; dataset_zoo/perturbations.py)
# ---------------------------------------------------------------------------------------------------------

def shuffle_nouns_and_adj_reference(tokens: Sequence[tuple[str, str]], rng: Random) -> list[str]:
    """Transcription of ``TextShuffler.shuffle_nouns_and_adj`` (vision-language-models-are-bows,
    ``dataset_zoo/perturbations.py``; before commit c70fdc2 a module-level function of the same name).

    Original: spaCy ``en_core_web_sm`` tokenises and tags the caption; the indices whose fine tag is in
    {NN, NNS, NNP, NNPS} get one uniform random permutation (``np.random.permutation``) and, separately,
    the indices whose fine tag is in {JJ, JJR, JJS} get another.  Result is ``" ".join`` of the tokens.

    Exact semantics (properties an implementation must share):

    * output length == input length; every non-noun, non-adjective token stays at its position;
    * the nouns are permuted only among noun positions and the adjectives only among adjective positions
      (a noun never lands where an adjective was, and vice versa), so the multiset of words at noun
      positions and the multiset at adjective positions are each preserved;
    * the permutation is uniform and may be the identity: no guarantee that the caption changes
      (e.g. a caption with a single noun and a single adjective is returned unchanged).

    ``tokens``: list of (word, tag).  Returns the list of words; ``join_tokens`` gives ARO's string.
    """
    words = _words(tokens)
    _permute_positions(words, [i for i, t in enumerate(tokens) if is_noun(t[1])], rng)
    _permute_positions(words, [i for i, t in enumerate(tokens) if is_adj(t[1])], rng)
    return words


def shuffle_allbut_nouns_and_adj_reference(tokens: Sequence[tuple[str, str]], rng: Random) -> list[str]:
    """Transcription of ``TextShuffler.shuffle_allbut_nouns_and_adj`` (vision-language-models-are-bows,
    ``dataset_zoo/perturbations.py``).

    Original: spaCy tags; a boolean mask marks every token that is *not* a noun (NN, NNS, NNP, NNPS) or an
    adjective (JJ, JJR, JJS); the masked tokens get one uniform random permutation among themselves.

    Exact semantics:

    * every noun and adjective keeps its position (and the nouns/adjectives in order are unchanged);
    * all other tokens -- determiners, verbs, prepositions, punctuation, numerals alike, as one single pool
      -- are permuted among the non-noun/adjective positions; their multiset is preserved;
    * the permutation is uniform and may be the identity.
    """
    words = _words(tokens)
    _permute_positions(words, [i for i, t in enumerate(tokens) if not (is_noun(t[1]) or is_adj(t[1]))], rng)
    return words


def get_trigrams_reference(words: Sequence) -> list[list]:
    """Transcription of ``TextShuffler.get_trigrams`` (taken by ARO from lingo-mit/context-ablations).

    Cuts the token list into consecutive, non-overlapping chunks of 3, left to right; the last chunk holds
    the 1 or 2 leftover tokens when the length is not a multiple of 3 (no chunk at all for empty input).
    """
    return [list(words[i:i + 3]) for i in range(0, len(words), 3)]


def shuffle_within_trigrams_reference(words: Sequence[str], rng: Random) -> list[str]:
    """Transcription of ``TextShuffler.shuffle_within_trigrams`` / ``trigram_shuffle``
    (vision-language-models-are-bows, ``dataset_zoo/perturbations.py``).

    Original: ``nltk.word_tokenize`` the caption (so punctuation is its own token), chunk with
    ``get_trigrams``, ``random.shuffle`` each chunk in place, join chunks in their original order.

    Exact semantics: chunk k of the output is a permutation of chunk k of the input (positions 3k..3k+2);
    no token leaves its chunk; chunk order is unchanged; each within-chunk permutation is uniform and may be
    the identity.  Tags are not used.
    """
    out: list[str] = []
    for chunk in get_trigrams_reference(_words(words)):
        rng.shuffle(chunk)
        out.extend(chunk)
    return out


def shuffle_trigrams_reference(words: Sequence[str], rng: Random) -> list[str]:
    """Transcription of ``TextShuffler.shuffle_trigrams`` (vision-language-models-are-bows,
    ``dataset_zoo/perturbations.py``).

    Original: ``nltk.word_tokenize``, ``get_trigrams``, ``random.shuffle`` the *list of chunks*, join.

    Exact semantics: the output is a concatenation of the input's chunks (3 consecutive tokens each, the
    last possibly shorter) in a uniformly random order; the inside of each chunk is untouched; the short
    leftover chunk may end up anywhere, including first.  May be the identity.
    """
    chunks = get_trigrams_reference(_words(words))
    rng.shuffle(chunks)
    return [w for chunk in chunks for w in chunk]


def shuffle_all_words_reference(caption: str, rng: Random) -> list[str]:
    """Transcription of ``TextShuffler.shuffle_all_words``: split the raw caption on single spaces
    (``str.split(" ")``, no tokenizer, so punctuation stays glued to its word and double spaces give empty
    strings) and uniformly permute all pieces.  Offered by ``get_text_perturb_fn`` but not one of the four
    COCO/Flickr-Order perturbations."""
    pieces = caption.split(" ")
    rng.shuffle(pieces)
    return pieces


# ---------------------------------------------------------------------------------------------------------
# NegCLIP training negatives (the issue-#13 gist: global_find_hard_negatives)
# ---------------------------------------------------------------------------------------------------------

def check_same_reference(transformed: str, target: str) -> bool:
    """Transcription of the gist's ``check_same``: delete every '.' and ',' from both strings, collapse
    runs of whitespace and strip, then compare exactly.  Case-sensitive, and other punctuation or spacing
    around quotes/apostrophes counts as a difference -- which is why the released TSV contains a few
    "negatives" that differ from the caption only in case or tokenisation ("Large ... large" swapped,
    ``it's`` -> ``it 's``)."""
    def norm(s: str) -> str:
        return " ".join(s.replace(".", "").replace(",", "").split())
    return norm(transformed) == norm(target)


def _fine_and_coarse(token: Sequence[str]) -> tuple[str, str]:
    """(word, tag) or (word, fine_tag, coarse_pos) -> (fine, coarse).  With one tag we use it as the fine
    tag and map Penn tags to coarse ones; a coarse-only NOUN is treated as fine NN (number unknown)."""
    if len(token) >= 3:
        return token[1], token[2]
    tag = token[1]
    fine = "NN" if tag == "NOUN" else tag
    return fine, PTB_TO_COARSE.get(tag, tag)


def swap_two_tokens_reference(tokens: Sequence[Sequence[str]], tag: str, caption: str, rng: Random,
                              use_coarse: bool) -> str | None:
    """Transcription of the gist's ``shuffler`` -> ``inner_pos_and_tag_finder`` -> ``swapper``.

    Collect the positions whose tag equals ``tag`` exactly (the gist compares spaCy's fine ``tag_`` for
    ``NN`` and ``NNS`` and the coarse ``pos_`` for ``ADV`` and ``ADJ``; ``use_coarse`` picks which).  With
    fewer than 2 such positions return None.  Otherwise draw 2 distinct positions uniformly
    (``random.sample(idxs, 2)``), exchange the two words, and join *all* spaCy tokens with single spaces
    (original case kept, punctuation space-separated).  Return None if ``check_same_reference`` says the
    result equals the caption (e.g. two identical words swapped), else the string.

    Exactly two tokens change places; NN only swaps with NN and NNS only with NNS (singular/plural never
    mix), so the sentence stays grammatical in number.
    """
    idxs = [i for i, t in enumerate(tokens) if _fine_and_coarse(t)[1 if use_coarse else 0] == tag]
    if len(idxs) < 2:
        return None
    a, b = rng.sample(idxs, 2)
    words = _words(tokens)
    words[a], words[b] = words[b], words[a]
    out = join_tokens(words)
    return None if check_same_reference(out, caption) else out


def swap_phrases_reference(caption: str, phrase_a: str, phrase_b: str) -> str | None:
    """Transcription of the string swap shared by the gist's ``shuffle_noun_phrase`` and
    ``shuffle_verb_phrases``: on the *raw* caption, replace every occurrence of ``phrase_a`` by a
    placeholder, then every occurrence of ``phrase_b`` by ``phrase_a``, then the placeholder by
    ``phrase_b`` (plain ``str.replace``, all occurrences, substring matches included); lower-case the whole
    result; None if ``check_same_reference`` finds it unchanged.  Original spacing/punctuation of the
    caption is kept (unlike the token swaps), but the output is lower-cased."""
    placeholder = "123X456"
    out = caption.replace(phrase_a, placeholder).replace(phrase_b, phrase_a).replace(placeholder, phrase_b)
    return None if check_same_reference(out, caption) else out.lower()


def noun_phrase_swap_reference(caption: str, noun_chunks: Sequence[str], rng: Random) -> str | None:
    """Transcription of the gist's ``shuffle_noun_phrase``.  ``noun_chunks`` are spaCy's
    ``doc.noun_chunks`` texts (a dependency parse is needed, so the caller supplies them).  Only chunks of
    more than 2 whitespace-separated words are eligible ("a flowered umbrella", 3 words, is; "the dirt",
    2 words, is not; a bare "yak" is not).  With fewer than 2 eligible
    chunks: None; otherwise 2 distinct chunks drawn uniformly are swapped by ``swap_phrases_reference``."""
    eligible = [c for c in noun_chunks if len(c.split()) > 2]
    if len(eligible) < 2:
        return None
    a, b = rng.sample(eligible, 2)
    return swap_phrases_reference(caption, a, b)


_VERB_PHRASE = re.compile(r"V?D*A*V+")  # VERB? ADV* AUX* VERB+  (V=VERB, D=ADV, A=AUX, one char per token)


def verb_phrase_spans_reference(coarse_tags: Sequence[str]) -> list[tuple[int, int]]:
    """The gist's ``shuffle_verb_phrases`` span finder without spaCy: the spaCy ``Matcher`` pattern
    ``[{POS: VERB, OP: ?}, {POS: ADV, OP: *}, {POS: AUX, OP: *}, {POS: VERB, OP: +}]`` returns *every*
    (start, end) token span whose coarse tags match it; ``spacy.util.filter_spans`` then keeps the longest
    spans first (ties: earlier start first), dropping any that overlap one already kept.  Returned sorted
    by start.  E.g. a caption whose only verbs are "holding" and "petting" (not adjacent) gives two
    single-token spans."""
    code = "".join({"VERB": "V", "ADV": "D", "AUX": "A"}.get(t, "x") for t in coarse_tags)
    spans = [(s, e) for s in range(len(code)) for e in range(s + 1, len(code) + 1)
             if _VERB_PHRASE.fullmatch(code, s, e)]
    kept: list[tuple[int, int]] = []
    taken: set[int] = set()
    for s, e in sorted(spans, key=lambda se: (-(se[1] - se[0]), se[0])):
        if not taken.intersection(range(s, e)):
            kept.append((s, e))
            taken.update(range(s, e))
    return sorted(kept)


def verb_phrase_swap_reference(caption: str, tokens: Sequence[Sequence[str]], rng: Random) -> str | None:
    """Transcription of the gist's ``shuffle_verb_phrases``: find verb-phrase spans
    (``verb_phrase_spans_reference`` on the coarse tags), need at least 2, draw 2 distinct ones uniformly
    and swap their texts in the raw caption with ``swap_phrases_reference`` (output lower-cased).  Span text
    is approximated by joining the span's tokens with single spaces (spaCy's ``Span.text`` keeps the
    original whitespace, identical for ordinary words)."""
    spans = verb_phrase_spans_reference([_fine_and_coarse(t)[1] for t in tokens])
    if len(spans) < 2:
        return None
    words = _words(tokens)
    (s1, e1), (s2, e2) = rng.sample(spans, 2)
    return swap_phrases_reference(caption, " ".join(words[s1:e1]), " ".join(words[s2:e2]))


def negclip_hard_negatives_reference(caption: str, tokens: Sequence[Sequence[str]],
                                     noun_chunks: Sequence[str], rng: Random,
                                     verb_mode: str = "gist") -> list[str]:
    """Transcription of the gist's ``global_find_hard_negatives`` plus the post-processing in its
    ``__main__``: at most ONE candidate from each of six strategies, in this order --

    1. noun-phrase swap  (``shuffle_noun_phrase``; chunks of >2 words; lower-cased output)
    2. verb-phrase swap  (``shuffle_verb_phrases``; lower-cased output)
    3. swap two NN tokens   (fine tag, singular common nouns)
    4. swap two NNS tokens  (fine tag, plural common nouns)
    5. swap two ADV tokens  (coarse POS)
    6. swap two ADJ tokens  (coarse POS)

    None results are dropped; a caption with no candidate at all is removed from the training CSV
    (``dropna``).  So each kept caption has 1..6 negatives (the released validation TSV: 1-5, mean 1.52),
    each a single swap of two same-category elements; no word is ever added, deleted or replaced, and no
    strategy is a full shuffle.  Duplicates between strategies are not removed.  The gist also keeps only
    the first caption of each COCO (Karpathy train) image (``drop_duplicates(subset=["image_id"])``).

    Discrepancy with the released data: in ``temp_data/valid_neg_clip.tsv`` (4839 COCO val captions) the
    only lower-cased negatives are noun-phrase swaps (at most one per caption, 826 captions); verb swaps
    appear instead as case-kept, space-tokenised exchanges of two ``-ing`` words (e.g. "A child holding a
    flowered umbrella and petting a yak." -> "A child petting a flowered umbrella and holding a yak ."),
    never as mixed forms like sits/holding -- i.e. what a token swap on the fine tag VBG gives, not what
    the gist's lower-casing ``shuffle_verb_phrases`` gives.  ``verb_mode="gist"`` (default) follows the
    gist's code; ``verb_mode="vbg_token_swap"`` reproduces the released data's behaviour for strategy 2.

    ``tokens``: (word, tag) or (word, fine_tag, coarse_pos) for the spaCy tokens of ``caption``;
    ``noun_chunks``: the caption's noun-chunk texts.
    """
    if verb_mode == "gist":
        verb_candidate = verb_phrase_swap_reference(caption, tokens, rng)
    elif verb_mode == "vbg_token_swap":
        verb_candidate = swap_two_tokens_reference(tokens, "VBG", caption, rng, use_coarse=False)
    else:
        raise ValueError(f"unknown verb_mode {verb_mode!r}")
    candidates = [
        noun_phrase_swap_reference(caption, noun_chunks, rng),
        verb_candidate,
        swap_two_tokens_reference(tokens, "NN", caption, rng, use_coarse=False),
        swap_two_tokens_reference(tokens, "NNS", caption, rng, use_coarse=False),
        swap_two_tokens_reference(tokens, "ADV", caption, rng, use_coarse=True),
        swap_two_tokens_reference(tokens, "ADJ", caption, rng, use_coarse=True),
    ]
    return [c for c in candidates if c is not None]


# ---------------------------------------------------------------------------------------------------------
# NegCLIP loss (vinid/neg_clip: train.py train_one_epoch + open_clip/loss.py ClipLoss, single process)
# ---------------------------------------------------------------------------------------------------------

def _rows(x) -> list[list[float]]:
    if hasattr(x, "tolist"):
        x = x.tolist()
    return [list(map(float, r)) for r in x]


def _mean_cross_entropy(logits: list[list[float]], labels: list[int]) -> float:
    total = 0.0
    for row, y in zip(logits, labels):
        m = max(row)
        total += m + math.log(sum(math.exp(v - m) for v in row)) - row[y]
    return total / len(labels)


def negclip_loss_reference(image, text, neg_text, logit_scale: float,
                           hard_image=None, hard_image_text=None, hard_image_neg_text=None) -> float:
    """NegCLIP's training loss as ``vinid/neg_clip`` computes it on one GPU (the fork states the
    distributed path is not supported).  Features are the model outputs, already L2-normalised by
    ``CLIP.forward``; nothing is normalised here.  Accepts nested lists, numpy arrays or tensors
    (via ``tolist``); returns a float (no gradient).

    Data (``CsvDataset.__getitem__``): for caption i the loader draws, afresh every time, ONE negative
    caption uniformly from its list (``random.choice``), ONE hard-negative image uniformly from its 3
    precomputed neighbour indices (``neg_image`` column), that neighbour's own caption, and ONE of the
    neighbour's negative captions.  ``train_one_epoch`` then builds, for a batch of B,

        images = [image (B); hard_image (B)]                                        -> 2B rows
        texts  = [text (B); hard_image_text (B); neg_text (B); hard_image_neg_text (B)] -> 4B rows

    and ``ClipLoss`` with world_size 1 computes

        logits_per_image = s * images @ texts.T            (2B x 4B)
        logits_per_text  = s * texts @ images.T            (4B x 2B)
        labels = arange(2B)
        loss = ( CE(logits_per_image, labels) + CE(logits_per_text[:2B], labels) ) / 2

    So: (a) negative captions (both blocks) appear ONLY as extra columns of the image->text softmax; they
    are never rows of the text->image term; (b) the hard-negative images are full members of the batch:
    each is an anchor (its positive is its own caption at row B+j) in image->text, and an extra candidate
    in every text->image softmax -- the batch is effectively 2B pairs; (c) no masking of any kind (a
    neighbour that duplicates an in-batch image, or a negative equal to a positive, is still a
    "negative"); (d) both CE terms are means over 2B rows, plain average of the two directions.
    ``s`` is ``logit_scale.exp()`` clamped to at most 100 (``logit_scale`` parameter clamped to
    [0, ln 100] after each step).

    With ``hard_image`` None this reduces to the hard-caption-only variant: images = image (B),
    texts = [text; neg_text], negatives in image->text only.  ``neg_text`` may hold any number of rows
    (their order does not matter: they are never a label).
    """
    img = _rows(image)
    txt = _rows(text)
    if hard_image is not None:
        img += _rows(hard_image)
        txt += _rows(hard_image_text)
    candidates = txt + _rows(neg_text) + (_rows(hard_image_neg_text) if hard_image_neg_text is not None else [])
    n = len(img)
    if len(txt) != n:
        raise ValueError("need exactly one positive caption per image")
    s = float(logit_scale)
    dot = lambda u, v: sum(a * b for a, b in zip(u, v))  # noqa: E731
    logits_per_image = [[s * dot(i, t) for t in candidates] for i in img]
    logits_per_text = [[s * dot(t, i) for i in img] for t in txt]  # only the first 2B text rows are used
    labels = list(range(n))
    return (_mean_cross_entropy(logits_per_image, labels) + _mean_cross_entropy(logits_per_text, labels)) / 2

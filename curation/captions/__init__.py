"""The caption stages' library: LaCLIP rewrites (`rewrite`) and DreamLIP long / ALIP short captions (`longcap`),
on one of three backends.

- `rewrite` follows LaCLIP ("Improving CLIP Training with Language Rewrites", Fan et al. 2023): an LLM rewrites
  each caption k times, prompted in context with three `source => target` examples from one of four pools
  (:mod:`curation.captions.laclip`); training samples the original or one rewrite per step.
- `longcap` follows DreamLIP ("DreamLIP: Language-Image Pre-training with Long Captions", Zheng et al. 2024): one
  or more vision-language models write a detailed caption whose sentences training samples as sub-captions; and
  ALIP ("ALIP: Adaptive Language-Image Pre-training with Synthetic Caption", Yang et al. 2023): a short
  synthetic caption beside the raw alt-text.

Backends (``BACKENDS``): `simulated` (:mod:`~curation.captions.simulated`, embedded, offline), `openai` (any
OpenAI-compatible server, :mod:`~curation.captions.openai_api`) and `transformers` (a local model directory,
:mod:`~curation.captions.local`). The real ones answer :class:`~curation.captions.requests.Request` s through
the per-sample cache (:mod:`~curation.captions.cache`); :mod:`~curation.captions.runner` turns rows into
requests and answers into columns.
"""

from __future__ import annotations

from curation.captions.config import (
    BackendName,
    CaptionerConfig,
    LongcapConfig,
    OpenAIConfig,
    RewriteConfig,
    SamplingConfig,
    TransformersConfig,
)
from curation.captions.runner import Captioner, Rewriter, Tally, merge_tallies, split_sentences
from curation.captions.simulated import SimulatedBackend, sample_rng

BACKENDS: dict[str, str] = {
    "simulated": "curation.captions.simulated.SimulatedBackend",
    "openai": "curation.captions.openai_api.OpenAIGenerator",
    "transformers": "curation.captions.local.TransformersGenerator",
}
"""Caption backends by name, and the class behind each (imported only when used: `transformers` pulls in torch)."""

STAGE_SEEDS: dict[str, int] = {"rewrite": 1, "longcap": 2}
"""The seed each caption stage draws its per-sample randomness from (with the uid), so the two stages' outputs
are independent."""

__all__ = ["BACKENDS", "STAGE_SEEDS", "BackendName", "Captioner", "CaptionerConfig", "LongcapConfig", "OpenAIConfig",
           "RewriteConfig", "Rewriter", "SamplingConfig", "SimulatedBackend", "Tally", "TransformersConfig",
           "merge_tallies", "sample_rng", "split_sentences"]

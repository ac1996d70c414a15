"""The `eval` stage's configuration (and `curaclip eval`'s): which datasets, which tasks, and each task's settings.

A dataset is named by a source string, as `curaclip eval --dataset` takes it: ``synthetic`` (the synthetic
world's sets, only for a run whose pool is the synthetic world), ``folder:DIR`` (one sub-folder per class),
``csv:FILE`` (image path, caption rows for retrieval) or ``wds:URL`` (WebDataset shards laid out as
CLIP_benchmark's). A config entry is that string, or a mapping that adds a class-name file, a template file
or the tasks to run on it (:class:`DatasetSpec`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

TASKS: tuple[str, ...] = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe", "knn", "compositional",
                          "fewshot_gda")
"""Every task the suite runs, in report order (CLIP_benchmark's names for the ones it has)."""

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a {c}.",
    "a drawing of a {c}.",
    "a picture of a {c} on a background.",
)
"""Zero-shot prompt templates of the synthetic sets, ensembled per class (CLIP Sec. 3.1.4)."""


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset to score, with what its files do not say themselves."""

    source: str
    """'synthetic', 'folder:DIR', 'csv:FILE' or 'wds:URL' (see the module docstring)."""
    classnames: str | None = None
    """a text file with one class name per line, in class-index order; default: the dataset's own names."""
    templates: str | None = None
    """a JSON list of prompt strings with '{c}' (or '{}'); default: the dataset's own, else CLIP's 'a photo of
    a {c}.'."""
    tasks: tuple[str, ...] = ()
    """tasks to run on this dataset; empty: eval.tasks (every task its kind supports when that is empty too)."""
    name: str | None = None
    """how results name the dataset; default: the folder or file name."""


@dataclass(frozen=True)
class SyntheticSetsConfig:
    """Sizes of the synthetic world's evaluation sets (drawn from seeds apart from the pool's)."""

    train_per_class: int = 100
    """classification images per class that fit the linear probe, kNN and few-shot methods."""
    validation_per_class: int = 25
    """images per class that choose the probe's penalty and GDA's alpha (never the test images)."""
    test_per_class: int = 50
    """images per class scored by zero-shot, the probe, kNN and few-shot."""
    retrieval_pairs: int = 500
    """image-caption pairs for retrieval; recall is over this gallery."""
    compositional_pairs: int = 200
    """images per compositional subset (attribution, relation, order)."""
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    """zero-shot prompt templates with '{c}'."""


@dataclass(frozen=True)
class ProbeConfig:
    """Linear probe on frozen, normalised image features (CLIP's protocol)."""

    weight_decays: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    """L2 penalties swept on the validation split; the best refits on train + validation."""
    max_iter: int = 100
    """L-BFGS iterations per fit (full batch, convex: converges well before on these sizes)."""


@dataclass(frozen=True)
class FewShotConfig:
    """Training-free few-shot GDA (Wang et al., ICLR 2024)."""

    shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    """training images per class drawn for each few-shot classifier."""
    draws: int = 3
    """independent draws of the shots per shot count; results are mean and std over draws."""
    augment_views: int = 10
    """augmented views (random crop + flip) of each drawn image the classifier is fitted on, the authors'
    augment_epoch; 0 fits on the images' plain embeddings."""


@dataclass(frozen=True)
class EvalConfig:
    """Configuration of the `eval` stage."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "per_class": "synthetic.test_per_class", "retrieval_pairs": "synthetic.retrieval_pairs",
        "compositional_pairs": "synthetic.compositional_pairs", "templates": "synthetic.templates",
    }
    """old flat keys -> their new paths (flows/config.py names the new one when an old key is used)."""

    datasets: str | tuple[str | DatasetSpec, ...] = "auto"
    """'auto' (the synthetic world's sets when the pool is the synthetic world, none otherwise: the stage is
    then skipped and says why) or a list of dataset sources / DatasetSpec mappings."""
    tasks: tuple[str, ...] = ()
    """tasks to run (names in TASKS); empty: every task each dataset's kind supports."""
    synthetic: SyntheticSetsConfig = field(default_factory=SyntheticSetsConfig)
    """sizes of the synthetic sets."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """the linear probe."""
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    """the few-shot GDA baseline."""
    batch_size: int = 256
    """images or texts per encoder call."""
    amp: bool = False
    """encode under torch.autocast (bf16 on CPU, fp16 on CUDA), as CLIP_benchmark's --amp."""
    retrieval_ks: tuple[int, ...] = (1, 5, 10)
    """k of the reported recall@k, both directions."""
    knn_k: int = 10
    """neighbours voting in the kNN classifier (weighted by exp(cos / 0.07), as in DINO)."""
    seed: int = 0
    """seed of the splits a dataset without its own draws, of the probe and of the few-shot draws."""

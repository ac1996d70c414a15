"""The run configuration: a tree of per-stage frozen dataclasses, loaded from YAML.

Each stage's config lives beside the code it configures (``curation/``, ``training/``, ``eval/``);
this module only assembles them into :class:`RunConfig` and validates YAML against their type
hints. Unknown keys and wrong types are errors that name the offending dotted key, so a typo in a
config never silently falls back to a default; a key that moved is an error naming its new path (a config
class lists its moved keys in ``MOVED_KEYS``, as TrainConfig does).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from curation.balancing import CurateConfig
from curation.captions import LongcapConfig, RewriteConfig
from curation.cluster_units import ClusterStageConfig
from curation.embedding_filters import require_pretrained
from curation.filters import FilterConfig
from curation.sharding import ShardConfig
from curation.sources import IngestConfig
from eval.config import EvalConfig
from eval.providers import resolve_sources
from tasks.executors.base import ExecutorKind, StageResources
from tasks.store.artifacts import to_dict
from training.config import TrainConfig
from training.embedding import EmbedConfig

STAGES: tuple[str, ...] = (
    "ingest", "filter", "curate", "embed", "cluster", "rewrite", "longcap", "shard", "train", "eval",
)

StageName = typing.Literal[STAGES]  # type: ignore[valid-type]  (the stage names, for config keys)


class ConfigError(ValueError):
    """A configuration that does not match the schema; the message names the dotted key."""


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None
    """Ray cluster address; None uses RAY_ADDRESS if set, else starts Ray locally."""
    num_cpus: int | None = None
    """CPUs for a local Ray instance; None lets Ray count them."""


@dataclass(frozen=True)
class RetryConfig:
    """Prefect's retries of a whole stage task, for transient failures only (flows.orchestration.transient).

    A retried stage resumes from its staging area (finished parts are reused), so a retry costs only what was in
    flight. Inside a stage Prefect retries nothing: a lost unit is Ray's to retry (tasks.executors.ray_tasks), so
    the two multiply only for a failure Ray already gave up on."""

    retries: int = 1
    """retries of any stage after its first try"""
    delay_seconds: float = 10.0
    """wait before each retry"""
    stages: dict[StageName, int] = field(default_factory=dict)
    """per-stage retries, overriding `retries` (e.g. `{train: 0}`)"""

    def of(self, stage: str) -> int:
        return self.stages.get(stage, self.retries)


@dataclass(frozen=True)
class RunConfig:
    """One pipeline run: a config block per stage, in pipeline order."""

    executor: ExecutorKind = "ray"
    """where stages run their units of work: "ray" (Ray tasks and actor pools, the cluster of `ray:`) or "local"
    (one after the other in this process: for a debugger; no Ray is started)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where stages fan out their work."""
    resources: StageResources = field(default_factory=StageResources)
    """CPUs, GPUs, memory and actors each stage's units reserve (not part of any cache key)."""
    retries: RetryConfig = field(default_factory=RetryConfig)
    """Prefect's retries of a whole stage on a transient failure (not part of any cache key)."""
    ingest: IngestConfig = field(default_factory=IngestConfig)
    """Raw pool sources (the synthetic world by default)."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    """DataComp basic filtering."""
    curate: CurateConfig = field(default_factory=CurateConfig)
    """MetaCLIP matching and balancing."""
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    """LaCLIP caption rewriting."""
    longcap: LongcapConfig = field(default_factory=LongcapConfig)
    """DreamLIP long captions and ALIP synthetic captions."""
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    """open_clip image/text embeddings for clustering."""
    cluster: ClusterStageConfig = field(default_factory=ClusterStageConfig)
    """MLCD k-means multi-labels."""
    shard: ShardConfig = field(default_factory=ShardConfig)
    """WebDataset shard writing."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """open_clip pretraining."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation suite."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the type hint ``tp`` and convert YAML shapes (lists -> tuples, dicts -> dataclasses)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if not any(type(value) is type(a) and value == a for a in allowed):  # True is not 1, 1.0 is not 1
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: null is not allowed")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is dict:
        return _coerce_mapping(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    return _coerce_scalar(tp, value, where)


def _coerce_mapping(tp: Any, value: Any, where: str) -> dict:
    """A ``dict[K, V]`` field: every key checked against K (a Literal names the choices), every value against V.
    A list of keys means each with the value 1 (``train.objectives: [alip, mlcd]``: weight 1.0 each)."""
    key_tp, value_tp = typing.get_args(tp)
    if isinstance(value, (list, tuple)):
        value = dict.fromkeys(value, 1)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping or a list, got {type(value).__name__} {value!r}")
    return {_coerce(key_tp, k, where): _coerce(value_tp, v, f"{where}.{k}") for k, v in value.items()}


def _coerce_scalar(tp: Any, value: Any, where: str) -> Any:
    # bool is a subclass of int in Python; YAML `epochs: yes` must not become 1.
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a plain mapping, validating every key and type."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    prefix = f"{where}." if where else ""
    moved = getattr(cls, "MOVED_KEYS", {})  # old key -> new path, declared beside the config (TrainConfig)
    for key in (k for k in unknown if k in moved):
        raise ConfigError(f"{prefix}{key} moved to {prefix}{moved[key]}")
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s} (valid keys for {cls.__name__}: {', '.join(sorted(known))})"
        )
    values = {
        name: _coerce(hints[name], value, f"{where}.{name}" if where else name) for name, value in data.items()
    }
    return cls(**values)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``train.schedule.epochs=3`` -> ("train.schedule.epochs", 3); the value is parsed as a YAML scalar, list or
    mapping (``train.objectives={clip: 1, mlcd: 0.5}``)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {err}") from None
    if isinstance(value, str) and "," in value and not raw.lstrip().startswith(("'", '"')):
        value = [yaml.safe_load(v) for v in value.split(",")]  # train.objectives=clip,mlcd: a list
    elif isinstance(value, str) and _is_collection_field(key.strip()):
        value = [value]  # train.objectives=mlcd: a one-item list
    return key.strip(), value


def _is_collection_field(dotted: str) -> bool:
    """Whether the dotted key names a tuple- or mapping-typed field of RunConfig (unknown keys: False)."""
    tp: Any = RunConfig
    for key in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(tp)} if dataclasses.is_dataclass(tp) else {}
        if key not in fields:
            return False
        tp = typing.get_type_hints(tp)[key]
    return typing.get_origin(tp) in (tuple, dict)


def default_config_text() -> str:
    """The packaged default configuration (``flows/default.yaml``)."""
    return importlib.resources.files("flows").joinpath("default.yaml").read_text()


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Load a YAML config (the packaged default when ``path`` is None) and apply ``key=value`` overrides."""
    text = Path(path).read_text() if path is not None else default_config_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'default config'}: the top level must be a mapping of stage sections")
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    return resolve(from_dict(RunConfig, data))


def eval_config(overrides: typing.Sequence[str] = ()) -> EvalConfig:
    """The eval settings alone, from `key=value` overrides relative to the eval section (`curaclip eval --set
    fewshot.shots=1,4`)."""
    data: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    return from_dict(EvalConfig, data, "eval")


def resolve(cfg: RunConfig) -> RunConfig:
    """Check the settings one stage takes from another (MLCD's labels come from the cluster stage, its class count
    from the cluster artifact's centers.npy, read by the train stage; cluster.order "auto" becomes "cluster" when
    NegCLIP needs neighbours in the shard stream, else "input"), and the eval datasets against the pool (a
    real-data run is never scored on the synthetic world)."""
    try:
        resolve_sources(cfg.eval.datasets, [s.format for s in cfg.ingest.sources], cfg.ingest.world)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.cluster.top_k > cfg.cluster.num_centers:
        raise ConfigError(f"cluster.top_k={cfg.cluster.top_k} exceeds cluster.num_centers={cfg.cluster.num_centers}: "
                          "a sample has only num_centers centers to be labelled with")
    negclip = cfg.train.negclip
    wants_neighbours = "negclip" in cfg.train.objectives and negclip.hard_negative_images
    if wants_neighbours and cfg.cluster.neighbours == 0:
        raise ConfigError("train.negclip.hard_negative_images needs each sample's neighbours, but cluster.neighbours "
                          "is 0: set cluster.neighbours (3, NegCLIP's choice) or train.negclip.hard_negative_images: "
                          "false")
    if wants_neighbours and cfg.cluster.order == "input":
        raise ConfigError("train.negclip.hard_negative_images finds neighbours in the shard stream: cluster.order "
                          "must be cluster (or auto), not input")
    if cfg.cluster.order == "auto":
        order = "cluster" if wants_neighbours else "input"
        cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, order=order))
    if cfg.cluster.clip_score.enabled:
        try:
            require_pretrained(cfg.embed.checkpoint, "cluster.clip_score")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    mlcd = cfg.train.mlcd
    if mlcd.num_centers is not None:
        raise ConfigError(f"train.mlcd.num_centers={mlcd.num_centers}: MLCD's class count is read from the cluster "
                          "artifact's centers.npy (one row per center); set cluster.num_centers instead")
    if "mlcd" in cfg.train.objectives and mlcd.top_k > cfg.cluster.top_k:
        raise ConfigError(f"train.mlcd.top_k={mlcd.top_k} exceeds cluster.top_k={cfg.cluster.top_k}: "
                          "the shards carry only cluster.top_k labels per sample")
    return cfg


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)

"""The train stage's configs: every field has a default, an allowed type and a docstring."""

import ast
import dataclasses
import inspect
import typing
from pathlib import Path

import pytest

from training.config import (
    DataConfig,
    DistConfig,
    ObjectiveName,
    OptimConfig,
    ProgressConfig,
    ScheduleConfig,
    TrainConfig,
)
from training.objectives.alip import ALIPConfig
from training.objectives.dreamlip import DreamLIPConfig
from training.objectives.mlcd import MLCDConfig
from training.objectives.negclip import NegCLIPConfig
from training.objectives.protoclip import ProtoCLIPConfig

SCALARS = {int, float, str, bool, int | None, float | None, str | None,
           tuple[str, ...], tuple[int, ...], tuple[float, ...], dict[ObjectiveName, float]}
CONFIGS = [TrainConfig, OptimConfig, ScheduleConfig, DataConfig, DistConfig, ProgressConfig,
           ALIPConfig, DreamLIPConfig, NegCLIPConfig, MLCDConfig, ProtoCLIPConfig]


def field_docstrings(cls: type) -> dict[str, str]:
    """Field name -> the string literal right under it in the class body."""
    tree = ast.parse(Path(inspect.getsourcefile(cls)).read_text())
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__).body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = after.value.value
    return docs


@pytest.mark.parametrize("cls", CONFIGS)
def test_fields_have_allowed_types_defaults_and_docstrings(cls):
    hints = typing.get_type_hints(cls)
    docs = field_docstrings(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        choice = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp  # tuple[Literal[...], ...]
        literal = typing.get_origin(choice) is typing.Literal and all(isinstance(a, str)
                                                                      for a in typing.get_args(choice))
        assert tp in SCALARS or literal or (dataclasses.is_dataclass(tp) and tp in CONFIGS), (cls.__name__, f.name, tp)
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f.name
        assert docs.get(f.name, "").strip(), f"{cls.__name__}.{f.name} has no docstring"
    assert cls.__dataclass_params__.frozen


def test_defaults_keep_plain_clip_on_one_rank():
    cfg = TrainConfig()
    assert cfg.objectives == {"clip": 1.0} and cfg.distribution.ranks == 1 and cfg.distribution.accum_freq == 1
    assert cfg.optim.optimizer == "adamw" and cfg.distribution.gpus_per_rank == 0.0
    assert cfg.mlcd.num_centers is None and cfg.dreamlip.num_text == 6
    assert isinstance(cfg.protoclip, ProtoCLIPConfig)
    assert dataclasses.replace(cfg, mlcd=MLCDConfig(num_centers=10)).mlcd.num_centers == 10


def test_every_moved_key_names_a_field_of_its_component():
    hints = typing.get_type_hints(TrainConfig)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for old, new in TrainConfig.MOVED_KEYS.items():
        assert old not in fields, old
        component, _, name = new.partition(".")
        if old == "objective_weights":
            assert new.startswith("objectives,"), new  # the weights are the objectives mapping's values
            continue
        assert name == old and name in {f.name for f in dataclasses.fields(hints[component])}, (old, new)
    moved = {f.name for c in (OptimConfig, ScheduleConfig, DataConfig, DistConfig, ProgressConfig)
             for f in dataclasses.fields(c)}
    assert moved == set(TrainConfig.MOVED_KEYS) - {"objective_weights"}  # every component field was a flat key



def test_objectives_are_kept_in_the_registry_order_whatever_order_they_are_written_in():
    from training.config import TrainConfig

    a, b = TrainConfig(objectives={"mlcd": 0.5, "clip": 1.0}), TrainConfig(objectives={"clip": 1.0, "mlcd": 0.5})
    assert list(a.objectives) == list(b.objectives) == ["clip", "mlcd"]  # same build order, same key: same result
    assert a == b


def test_the_bootstrap_keeps_the_train_stages_device_and_precision_but_not_its_ranks():
    from dataclasses import replace

    from training.config import DistConfig, TrainConfig
    from training.embedding import EmbedConfig
    from training.jobs import bootstrap_config

    train = replace(TrainConfig(), distribution=DistConfig(device="cuda", precision="bf16", ranks=4, accum_freq=2))
    assert bootstrap_config(EmbedConfig(), train).distribution == DistConfig(device="cuda", precision="bf16")

import pytest

from flows.config import ConfigError, RunConfig, load_config, parse_override, to_yaml


def test_default_config_loads_and_round_trips(tmp_path):
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


def test_overrides_are_typed():
    cfg = load_config(overrides=["train.schedule.epochs=2", "curate.t=77", "ingest.world.num_images=300"])
    assert cfg.train.schedule.epochs == 2 and cfg.curate.t == 77 and cfg.ingest.world.num_images == 300


def test_override_of_a_tuple_field():
    cfg = load_config(overrides=["eval.synthetic.templates=['a {}.', 'the {}.']"])
    assert cfg.eval.synthetic.templates == ("a {}.", "the {}.")


@pytest.mark.parametrize("override, words", [
    ("train.epoch=2", "unknown key train.epoch"),
    ("train.schedule.epoch=2", "unknown key train.schedule.epoch"),
    ("trian.epochs=2", "unknown key trian"),
    ("train.schedule.epochs=two", "train.schedule.epochs: expected int"),
    ("train.schedule.epochs=true", "train.schedule.epochs: expected int"),
    ("train.optim.lr=[1]", "train.optim.lr: expected float"),
    ("train.objectives={clip: x}", "train.objectives.clip: expected float"),
    ("train.objectives=5", "train.objectives: expected a mapping or a list"),
    ("curate.seed=1.5", "curate.seed: expected int"),
])
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
        load_config(overrides=[override])


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="top level"):
        load_config(path)


def test_parse_override():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=null") == ("a.b", None)
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_set_takes_comma_lists_and_single_items_for_list_fields():
    from flows.config import load_config

    assert load_config(overrides=["train.objectives=alip,mlcd"]).train.objectives == {"alip": 1.0, "mlcd": 1.0}
    assert load_config(overrides=["train.objectives=dcl"]).train.objectives == {"dcl": 1.0}
    weighted = load_config(overrides=["train.objectives={clip: 1, mlcd: 0.5}"]).train.objectives
    assert weighted == {"clip": 1.0, "mlcd": 0.5} and list(weighted) == ["clip", "mlcd"]
    assert load_config(overrides=["train.objectives.mlcd=0.5"]).train.objectives == {"alip": 1.0, "mlcd": 0.5}


def test_objectives_in_yaml_are_a_mapping_of_weights_or_a_list(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  objectives: [dreamlip, mlcd]\n")
    assert load_config(path).train.objectives == {"dreamlip": 1.0, "mlcd": 1.0}
    path.write_text("train:\n  objectives: {dreamlip: 1.0, mlcd: 0.25}\n")
    assert load_config(path).train.objectives == {"dreamlip": 1.0, "mlcd": 0.25}


def test_every_moved_key_is_an_error_naming_its_new_path(tmp_path):
    from training.config import TrainConfig

    assert TrainConfig.MOVED_KEYS["epochs"] == "schedule.epochs"
    for old, new in TrainConfig.MOVED_KEYS.items():
        expected = f"train.{old} moved to train.{new}"
        with pytest.raises(ConfigError) as err:
            load_config(overrides=[f"train.{old}=1"])
        assert str(err.value) == expected
        path = tmp_path / "old.yaml"
        path.write_text(f"train:\n  {old}: 1\n")
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert str(err.value) == expected
    with pytest.raises(ConfigError, match=r"^train\.epochs moved to train\.schedule\.epochs$"):
        load_config(overrides=["train.epochs=3"])
    with pytest.raises(ConfigError, match=r"train\.objective_weights moved to train\.objectives, which maps each"):
        load_config(overrides=["train.objectives=clip,mlcd", "train.objective_weights=1,0.5"])



def test_mlcd_s_class_count_is_never_a_config_value():
    import pytest

    from flows.config import ConfigError, load_config

    cfg = load_config(overrides=["train.objectives=clip,mlcd", "cluster.num_centers=40"])
    assert cfg.train.mlcd.num_centers is None  # the train stage reads it from the cluster artifact's centers.npy
    with pytest.raises(ConfigError, match="centers.npy.*cluster.num_centers"):
        load_config(overrides=["train.objectives=mlcd", "train.mlcd.num_centers=7"])
    with pytest.raises(ConfigError, match="top_k"):
        load_config(overrides=["train.objectives=mlcd", "train.mlcd.top_k=9"])


def _choice_fields(tp, path):
    """(dotted path, allowed values) of every Literal-typed field under the config dataclass `tp`."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(tp)
    for f in dataclasses.fields(tp):
        hint, where = hints[f.name], f"{path}.{f.name}" if path else f.name
        args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) else []
        inner = args[0] if typing.get_origin(hint) in (tuple, dict, typing.Union) and args else None
        if typing.get_origin(hint) is typing.Literal:
            yield where, typing.get_args(hint), False
        elif inner is not None and typing.get_origin(inner) is typing.Literal:  # tuple items or mapping keys
            yield where, typing.get_args(inner), typing.get_origin(hint)
        elif dataclasses.is_dataclass(hint):
            yield from _choice_fields(hint, where)
        elif inner is not None and dataclasses.is_dataclass(inner):
            yield from _choice_fields(inner, f"{where}[0]")


def test_every_choice_with_a_wrong_value_is_an_error_naming_the_key_and_the_choices():
    import re

    from flows.config import from_dict
    from tasks.store.artifacts import to_dict

    choices = list(_choice_fields(RunConfig, ""))
    names = {path for path, _, _ in choices}
    assert {"train.distribution.precision", "train.distribution.device", "train.optim.optimizer",
            "train.objectives", "train.data.text_sampler", "rewrite.backend", "longcap.backend", "cluster.gpu",
            "ingest.sources[0].format", "train.negclip.kinds", "train.dreamlip.grouping_norm"} <= names
    for path, allowed, container in choices:
        data = to_dict(RunConfig())
        node, keys = data, re.findall(r"[a-z_]+|\[\d+\]", path)
        for key in keys[:-1]:
            if key.startswith("[") and not node:  # a list empty by default (longcap.captioners): one minimal item
                node.append({"name": "x"} if path.startswith("longcap.captioners") else {})
            node = node[int(key[1:-1])] if key.startswith("[") else node[key]
        node[keys[-1]] = {"no-such-choice": 1.0} if container is dict else \
            ["no-such-choice"] if container else "no-such-choice"
        with pytest.raises(ConfigError) as err:
            from_dict(RunConfig, data)
        message = str(err.value)
        assert message.startswith(path) and all(repr(a) in message for a in allowed), (path, message)


def test_choice_literals_match_their_registries():
    import typing

    from curation.captions import BACKENDS, BackendName
    from curation.readers import FORMATS, SourceConfig
    from training.config import DataConfig, ObjectiveName, OptimConfig
    from training.data import TEXT_SAMPLERS
    from training.objectives import LOSSES
    from training.objectives.negatives import NEGATIVE_KINDS, NegativeKind
    from training.objectives.protoclip import KMEANS_INITS, ProtoCLIPConfig
    from training.optim import OPTIMIZERS

    assert set(typing.get_args(ObjectiveName)) == set(LOSSES)
    assert set(typing.get_args(BackendName)) == set(BACKENDS)
    assert set(typing.get_args(NegativeKind)) == set(NEGATIVE_KINDS)
    assert set(typing.get_args(typing.get_type_hints(DataConfig)["text_sampler"])) == set(TEXT_SAMPLERS)
    assert set(typing.get_args(typing.get_type_hints(OptimConfig)["optimizer"])) == set(OPTIMIZERS)
    assert set(typing.get_args(typing.get_type_hints(ProtoCLIPConfig)["kmeans_init"])) == set(KMEANS_INITS)
    assert set(typing.get_args(typing.get_type_hints(SourceConfig)["format"])) == {"synthetic", *FORMATS}


def test_presets_apply_before_set_and_unknown_ones_are_refused(capsys):
    from flows.cli import main
    from flows.presets import preset_overrides

    smoke = load_config(overrides=[*preset_overrides("smoke"), "train.schedule.epochs=2"])
    assert smoke.ingest.world.num_images == 360 and smoke.train.schedule.epochs == 2  # --set wins over the preset
    assert load_config(overrides=preset_overrides("default")) == load_config()
    with pytest.raises(ValueError, match="smoke"):
        preset_overrides("tiny")
    assert main(["show-config", "--preset", "smoke", "--set", "train.data.batch_size=16"]) == 0
    shown = capsys.readouterr().out
    assert "num_images: 360" in shown and "batch_size: 16" in shown


def _leaves(node: dict, path: str = ""):
    for key, value in node.items():
        dotted = f"{path}.{key}" if path else key
        if isinstance(value, dict) and value and key != "objectives":
            yield from _leaves(value, dotted)
        else:
            yield dotted


def _at(cfg, dotted: str):
    for key in dotted.split("."):
        cfg = cfg[key] if isinstance(cfg, dict) else getattr(cfg, key)
    return cfg


def test_the_default_yaml_holds_only_overrides_of_the_library_defaults():
    """One source of defaults: a key in flows/default.yaml that restates a library default would silently keep
    the old value when the library's default changes."""
    import yaml

    from flows.config import RunConfig, default_config_text

    written = yaml.safe_load(default_config_text())
    loaded, library = load_config(), RunConfig()
    restated = [key for key in _leaves(written) if _at(loaded, key) == _at(library, key)]
    assert restated == []


def test_eval_datasets_take_a_name_or_a_list_and_refuse_the_world_for_real_data():
    assert load_config().eval.datasets == "auto"
    assert load_config(overrides=["eval.datasets=synthetic"]).eval.datasets == "synthetic"
    assert load_config(overrides=["eval.datasets=[synthetic]"]).eval.datasets == ("synthetic",)
    real = "ingest.sources=[{format: parquet, path: /data/pool.parquet}]"
    assert load_config(overrides=[real]).eval.datasets == "auto"  # auto: the eval stage will be skipped
    with pytest.raises(ConfigError, match="never scored on the synthetic world"):
        load_config(overrides=[real, "eval.datasets=synthetic"])
    with pytest.raises(ConfigError, match="eval dataset 'imagenet': expected 'synthetic' or one of folder:PATH"):
        load_config(overrides=["eval.datasets=imagenet"])


def test_executor_and_resources_load_from_the_config():
    cfg = load_config(overrides=["executor=local", "resources.embed.actors=4", "resources.embed.gpus=0.25",
                                 "resources.cluster.job_cpus=8", "resources.ingest.memory_gb=2"])
    assert cfg.executor == "local"
    assert (cfg.resources.embed.actors, cfg.resources.embed.gpus, cfg.resources.embed.cpus) == (4, 0.25, 1.0)
    assert cfg.resources.of("cluster").job_cpus == 8 and cfg.resources.of("ingest").memory_gb == 2
    with pytest.raises(ConfigError, match="unknown key resources.embed.gpu"):
        load_config(overrides=["resources.embed.gpu=1"])
    with pytest.raises(ConfigError, match="executor: 'dask' is not one of 'ray', 'local'"):
        load_config(overrides=["executor=dask"])


def test_the_clip_score_filter_needs_a_pretrained_embedding_checkpoint(tmp_path):
    import pytest

    from flows.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="cluster.clip_score needs embeddings from a pretrained model.*checkpoint"):
        load_config(overrides=["cluster.clip_score.enabled=true", "cluster.clip_score.fraction=0.3"])
    cfg = load_config(overrides=["cluster.clip_score.enabled=true", "cluster.clip_score.fraction=0.3",
                                 f"embed.checkpoint={tmp_path / 'model.pt'}"])
    assert cfg.cluster.clip_score.fraction == 0.3 and not cfg.cluster.semdedup.enabled
    assert load_config(overrides=["cluster.semdedup.enabled=true", "cluster.semdedup.eps=0.05"]).cluster.semdedup.eps \
        == 0.05


def test_cluster_settings_the_other_stages_rely_on_are_checked_when_loading():
    import pytest

    from flows.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="cluster.top_k=9 exceeds cluster.num_centers=8"):
        load_config(overrides=["cluster.num_centers=8", "cluster.top_k=9"])
    with pytest.raises(ConfigError, match="cluster.neighbours"):
        load_config(overrides=["train.objectives=negclip", "cluster.neighbours=0"])
    cfg = load_config(overrides=["train.objectives=negclip"])
    assert cfg.cluster.neighbours == 3 and cfg.train.negclip.hard_negative_images
    assert load_config(overrides=["train.objectives=negclip", "cluster.neighbours=0",
                                  "train.negclip.hard_negative_images=false"]).cluster.neighbours == 0

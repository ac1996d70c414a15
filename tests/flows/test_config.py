import pytest

from flows.config import ConfigError, RunConfig, load_config, parse_override, to_yaml


def test_default_config_loads_and_round_trips(tmp_path):
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


def test_overrides_are_typed():
    cfg = load_config(overrides=["train.epochs=2", "curate.t=77", "ingest.world.num_images=300"])
    assert cfg.train.epochs == 2 and cfg.curate.t == 77 and cfg.ingest.world.num_images == 300


def test_override_of_a_tuple_field():
    cfg = load_config(overrides=["eval.templates=['a {}.', 'the {}.']"])
    assert cfg.eval.templates == ("a {}.", "the {}.")


@pytest.mark.parametrize("override, words", [
    ("train.epoch=2", "unknown key train.epoch"),
    ("trian.epochs=2", "unknown key trian"),
    ("train.epochs=two", "train.epochs: expected int"),
    ("train.epochs=true", "train.epochs: expected int"),
    ("train.lr=[1]", "train.lr: expected float"),
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

    assert load_config(overrides=["train.objectives=alip,mlcd"]).train.objectives == ("alip", "mlcd")
    assert load_config(overrides=["train.objectives=dcl"]).train.objectives == ("dcl",)
    assert load_config(overrides=["train.objective_weights=1,0.5", "train.objectives=clip,mlcd"]
                       ).train.objective_weights == (1.0, 0.5)


def test_mlcd_takes_its_classes_from_the_cluster_stage():
    import pytest

    from flows.config import ConfigError, load_config

    cfg = load_config(overrides=["train.objectives=clip,mlcd", "cluster.num_centers=40"])
    assert cfg.train.mlcd.num_centers == 40
    assert load_config().train.mlcd.num_centers is None  # untouched when MLCD is off
    with pytest.raises(ConfigError, match="cluster.num_centers"):
        load_config(overrides=["train.objectives=mlcd", "train.mlcd.num_centers=7"])
    with pytest.raises(ConfigError, match="top_k"):
        load_config(overrides=["train.objectives=mlcd", "train.mlcd.top_k=9"])

"""Every file in configs/ validates; overrides and error reporting behave."""

from pathlib import Path

import pytest

from vhindex.config import Config, ConfigError, apply_overrides, load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# configs/serve/ holds Serve configs (tests/test_serve.py) and configs/deploy/ deployment specs (tests/test_deploy.py)
ALL_CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not {"serve", "deploy"} & set(p.parts))


def test_there_are_configs():
    assert len(ALL_CONFIGS) >= 4, ALL_CONFIGS


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_config_file_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # The resolved YAML must load back to the same config (what jobs log and save).
    import yaml

    from vhindex.config import config_from_dict

    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_dotted_overrides_are_typed_and_nested():
    # (configs/demo.yaml's model section is its DKPH students' architecture: the defaults' ITQ takes n_iter)
    cfg = load_config(None, ["model.bits=32", "demo.bits=[16, 64]", "eval.protocol=standard",
                                                 "run.output_dir=memory://x", "model.params.n_iter=5"])
    assert cfg.model.bits == 32
    assert cfg.demo.bits == [16, 64]
    assert cfg.eval.protocol == "standard"
    assert cfg.run.output_dir == "memory://x"
    assert cfg.model.params == {"n_iter": 5}


def test_all_problems_are_reported_at_once_with_their_keys():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.bits=20", "eval.protocol=fancy", "run.sed=3", "demo.methods=[lsh, nope]",
                           "eval.ks=[0, 5]"])
    keys = {k for k, _ in info.value.problems}
    assert keys == {"model.bits", "eval.protocol", "run.sed", "eval.ks", "demo.methods"}, info.value.problems
    text = str(info.value)
    assert "multiple of 8" in text and "unknown key" in text and "fancy" in text
    assert "'nope'" in text and "choose from" in text


def test_bad_model_params_are_named():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.name=itq", "model.params.not_a_param=1"])
    assert info.value.problems[0][0] == "model.params"
    assert "not_a_param" in info.value.problems[0][1]


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["model.bits"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"model": {"bits": 8}}, ["model.bits.x=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_moved_keys_fail_naming_their_replacement(tmp_path):
    from vhindex.config import RENAMED_KEYS

    assert RENAMED_KEYS["train.bits"] == "model.bits" and RENAMED_KEYS["graph.k"] == "graph.anchors"
    for old, new in RENAMED_KEYS.items():
        with pytest.raises(ConfigError) as info:
            load_config(None, [f"{old}=1"])
        assert info.value.problems == [(old, f"this key moved: use {new} instead")], info.value.problems
    # in a file, together with every other problem
    path = tmp_path / "old.yaml"
    path.write_text("train:\n  bits: 16\n  anchors: 100\n  epochs: -1\nindex:\n  k: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert dict(info.value.problems) == {"train.bits": "this key moved: use model.bits instead",
                                         "train.anchors": "this key moved: use graph.anchors instead",
                                         "index.k": "this key moved: use index.top_k instead",
                                         "train.epochs": "Input should be greater than or equal to 0 (got -1)"}


def test_storage_options_are_given_once_and_sections_may_override():
    cfg = load_config(None, ["run.storage_options={anon: true}", "serve.storage_options={key: k}"])
    assert cfg.run.storage_options == {"anon": True}
    for section in ("data", "graph", "index", "extract", "encode"):
        assert getattr(cfg, section).storage_options == {"anon": True}, section
    assert cfg.serve.storage_options == {"key": "k"}
    assert load_config(None).data.storage_options == {}

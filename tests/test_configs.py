"""Every file in configs/ validates; overrides and error reporting behave."""

from pathlib import Path

import pytest

from vhindex.config import Config, ConfigError, apply_overrides, load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ALL_CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if "serve" not in p.parts)


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
    cfg = load_config(CONFIG_DIR / "demo.yaml", ["model.bits=32", "demo.bits=[16, 64]", "eval.protocol=standard",
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

"""R2VPOConfig: documented fields, YAML + overrides, clear errors naming the field."""

import dataclasses
from pathlib import Path

import pytest

from r2vpo_ascend.trainer.config import ConfigError, R2VPOConfig, parse_overrides

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_every_field_has_help():
    for f in dataclasses.fields(R2VPOConfig):
        assert len(f.metadata.get("help", "")) > 10, f.name
    text = R2VPOConfig.describe()
    assert "ratio_var_target" in text and "replay_ratio" in text


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = R2VPOConfig.from_yaml(path)
    assert cfg.steps >= 1


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("loss: ppo_clip\nsteps: 3\nlr: 1e-4\n")
    cfg = R2VPOConfig.from_yaml(p, ["steps=7", "report_to=[jsonl,tensorboard]", "clip_eps_high=0.3"])
    assert (cfg.loss, cfg.steps, cfg.lr, cfg.report_to, cfg.clip_eps_high) == \
        ("ppo_clip", 7, 1e-4, ["jsonl", "tensorboard"], 0.3)
    assert R2VPOConfig.from_dict(cfg.to_dict()) == cfg


def test_int_is_accepted_for_float():
    assert R2VPOConfig(lr=1).lr == 1.0


@pytest.mark.parametrize("values, needle", [
    ({"num_generation": 4}, "unknown config key `num_generation`; did you mean num_generations"),
    ({"steps": "ten"}, "`steps` expects int"),
    ({"steps": True}, "`steps` expects int"),
    ({"lr": "fast"}, "`lr` expects float"),
    ({"dual_update": "sometimes"}, "`dual_update`"),
    ({"replay_ratio": 1.0}, "`replay_ratio`"),
    ({"num_generations": 0}, "`num_generations` must be >= 1"),
    ({"ratio_var_target": 0.0}, "`ratio_var_target`"),
    ({"lambda_min": 2.0, "lambda_max": 1.0}, "lambda_min"),
    ({"report_to": ["jsonl", "mlflow"]}, "report_to"),
    ({"resume": "/no/such/checkpoint"}, "`resume`"),
])
def test_bad_values_name_the_field(values, needle):
    with pytest.raises(ConfigError, match=None) as info:
        R2VPOConfig.from_dict(values)
    assert needle in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        R2VPOConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        R2VPOConfig.from_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        R2VPOConfig.from_yaml(listy)


def test_parse_overrides():
    assert parse_overrides(["a=1", "b=x", "c=[1,2]", "d="]) == {"a": 1, "b": "x", "c": [1, 2], "d": None}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_yaml12_scalars():
    """`off`/`yes` stay strings (YAML 1.1 would make them booleans) and `1e-4` is a float."""
    assert parse_overrides(["a=off", "b=1e-4", "c=true", "d=yes", "e=-2e3"]) == \
        {"a": "off", "b": 1e-4, "c": True, "d": "yes", "e": -2000.0}
    assert R2VPOConfig.from_dict(parse_overrides(["progress_bar=off"])).progress_bar == "off"

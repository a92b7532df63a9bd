"""R2VPOConfig: documented fields, YAML + overrides, clear errors naming the field."""

import dataclasses
from pathlib import Path

import pytest

from r2vpo_ascend.trainer.config import (FIXED, MAY_CHANGE, ConfigError, R2VPOConfig, check_resume_config,
                                        parse_overrides)

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
    ({"num_generations": 0}, "`num_generations` must be >= 2"),
    ({"num_generations": 1}, "with one response each is 0"),
    ({"lr": 0.0}, "`lr` must be finite and > 0"),
    ({"lr": float("nan")}, "`lr` must be finite and > 0"),
    ({"lr": "nan"}, "`lr` expects float"),
    ({"init_lambda": 500.0}, "`init_lambda` (500.0) must be within [lambda_min, lambda_max]"),
    ({"adam_betas": "abc"}, "`adam_betas` must be two numbers in [0, 1)"),
    ({"adam_betas": [0.9, 1.5]}, "`adam_betas`"),
    ({"sft_batch_size": 0}, "`sft_batch_size` must be >= 1"),
    ({"num_threads": -1}, "`num_threads` must be >= 0"),
    ({"temperature": float("nan")}, "`temperature` must be finite and > 0"),
    ({"ratio_var_target": float("inf")}, "`ratio_var_target` must be finite"),
    ({"lambda_max": float("nan")}, "`lambda_max` must be finite"),
    ({"save_every": -1}, "`save_every` must be >= 0"),
    ({"keep_checkpoints": 0}, "`keep_checkpoints` must be >= 1"),
    ({"top_p": 0.0}, "`top_p` must be in (0, 1]"),
    ({"max_bad_steps": -1}, "`max_bad_steps` must be >= 0"),
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


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        R2VPOConfig(output_dir=str(tmp_path / "f"))


def test_every_field_declares_what_resume_may_change():
    """`on_resume` comes from the `_f` helper (default: fixed); a field made another way fails here."""
    for f in dataclasses.fields(R2VPOConfig):
        assert f.metadata.get("on_resume") in (MAY_CHANGE, FIXED), f.name
    flags = {f.name: f.metadata["on_resume"] for f in dataclasses.fields(R2VPOConfig)}
    assert flags["loss"] == flags["lr"] == flags["seed"] == FIXED
    assert flags["steps"] == flags["eval_every"] == flags["output_dir"] == MAY_CHANGE


def _state(config, step=3):
    return {"config": config.to_dict(), "trainer": {"step": step}}


def test_resume_refuses_changed_fixed_fields_naming_them(capsys):
    saved = R2VPOConfig(loss="r2vpo", lr=1e-4, steps=5, ppo_epochs=1, replay_ratio=0.0)  # explicit: not per-loss
    with pytest.raises(ConfigError, match=r"may not change on resume: loss \('r2vpo' -> 'ppo_clip'\), "
                                          r"lr \(0.0001 -> 0.5\)"):
        check_resume_config(saved.replace(loss="ppo_clip", lr=0.5), _state(saved), Path("ck"))
    check_resume_config(saved.replace(steps=9, eval_every=2), _state(saved), Path("ck"))
    assert "changed since the checkpoint: eval_every 10 -> 2, steps 5 -> 9" in capsys.readouterr().out \
        .replace("steps 5 -> 9, eval_every 10 -> 2", "eval_every 10 -> 2, steps 5 -> 9")
    check_resume_config(saved, {"config": {}, "trainer": {"step": 1}}, Path("ck"))  # an old checkpoint: no config


def test_resume_refuses_a_checkpoint_past_steps():
    saved = R2VPOConfig(steps=30)
    with pytest.raises(ConfigError, match="at RL step 30, past steps=3"):
        check_resume_config(saved.replace(steps=3), _state(saved, step=30), Path("ck"))

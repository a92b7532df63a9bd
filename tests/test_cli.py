"""The `r2vpo` command: info, plot, and user errors as one line with exit code 2."""

import json

import pytest

from r2vpo_ascend import cli


def test_info_reports_backend_and_versions(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "cpu" and info["dist_backend"] == "gloo"
    assert info["versions"]["torch"].startswith("2.")
    assert "openpangu-embedded-7b" in info["model_presets"]


@pytest.mark.parametrize("argv, needle", [
    (["train", "num_generation=4"], "unknown config key `num_generation`"),
    (["train", "steps=ten"], "`steps` expects int"),
    (["train", "--config", "/no/such.yaml"], "cannot read config file"),
    (["train", "model=/no/such/dir", "steps=1"], "config field `model`"),
    (["train", "dataset=/no/such.jsonl", "steps=1", "sft_steps=0"], "/no/such.jsonl"),
    (["plot", "/no/such/run"], "metrics.jsonl"),
])
def test_user_errors_are_one_line(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and err.startswith("r2vpo ") and "Traceback" not in err


def test_plot_writes_png(tmp_path, capsys):
    rows = [{"step": s, "rollouts": 16 * s, "reward/mean": 0.1 * s, "r2vpo/lambda": 1.0 / (s + 1),
             "r2vpo/ratio_var": 0.01, "replay/ess_frac": 0.9, "eval/accuracy": 0.2} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["plot", str(tmp_path)]) == 0
    png = tmp_path / "training_curves.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("overrides, sleep_mode", [(["rollout_engine=vllm"], True),
                                                    (["rollout_engine=vllm", "vllm_sleep_mode=false"], False),
                                                    ([], False)])
def test_train_sets_the_runtime_env_from_its_config(monkeypatch, capsys, overrides, sleep_mode):
    """vllm-ascend's sleep mode needs another allocator setting: `train` passes its own config's
    choice (and collective timeout) to the device layer, not the defaults."""
    import device
    calls = []
    monkeypatch.setattr(device, "prepare_runtime_env", lambda **kw: calls.append(kw) or {})
    assert cli.main(["train", "--print-config", "model=tiny", "collective_timeout_s=99", *overrides]) == 0
    assert calls == [{"sleep_mode": sleep_mode, "collective_timeout_s": 99.0}]

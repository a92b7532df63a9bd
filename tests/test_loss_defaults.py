"""Per-loss defaults of the reuse knobs (trainer/loss_defaults.py, issue 11 item 5)."""

import pytest

from r2vpo_ascend.trainer import loss_defaults
from r2vpo_ascend.trainer.config import R2VPOConfig


@pytest.mark.parametrize("loss", ["r2vpo", "ppo_clip", "gspo", "clip_higher", "my_registered_loss"])
def test_unset_reuse_knobs_take_their_losses_defaults(loss):
    config = R2VPOConfig(loss=loss)
    for name in loss_defaults.FIELDS:
        assert getattr(config, name) == loss_defaults.loss_default(loss, name)
        assert getattr(config, name) is not None
    assert R2VPOConfig.from_dict(config.to_dict()) == config  # what a checkpoint records reloads the same


def test_a_value_set_by_the_user_wins_and_survives_a_change_of_loss():
    config = R2VPOConfig(ppo_epochs=3, replay_ratio=0.25)
    assert (config.ppo_epochs, config.replay_ratio) == (3, 0.25)
    other = config.replace(loss="ppo_clip")
    assert (other.ppo_epochs, other.replay_ratio) == (3, 0.25)


def test_defaulted_fields_follow_a_change_of_loss():
    r2vpo = R2VPOConfig(loss="r2vpo")
    clip = r2vpo.replace(loss="ppo_clip")
    assert clip == R2VPOConfig(loss="ppo_clip")
    assert clip.replace(loss="r2vpo") == r2vpo
    assert r2vpo.replace(lr=1e-3).ppo_epochs == r2vpo.ppo_epochs  # other changes keep them


def test_the_help_text_names_the_per_loss_defaults():
    text = R2VPOConfig.describe()
    for name in loss_defaults.FIELDS:
        assert loss_defaults.describe(name) in text
    assert "otherwise" in loss_defaults.describe("ppo_epochs")


def test_resuming_with_another_loss_names_the_reuse_knobs_its_defaults_change():
    from pathlib import Path

    from r2vpo_ascend.algos.errors import ConfigError
    from r2vpo_ascend.trainer.config_checks import check_resume_config
    saved = R2VPOConfig(loss="r2vpo", steps=5)
    state = {"config": saved.to_dict(), "trainer": {"step": 1}}
    with pytest.raises(ConfigError, match=r"ppo_epochs \(4 -> 1\).*replay_ratio \(0.5 -> 0.0\)"):
        check_resume_config(saved.replace(loss="ppo_clip"), state, Path("ck"))

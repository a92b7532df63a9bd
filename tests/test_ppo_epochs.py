"""`ppo_epochs`: several passes over each update batch (verl's ppo_epochs, TRL's num_iterations)."""

import json

import torch

from r2vpo_ascend.api import R2VPOConfig, R2VPOTrainer
from r2vpo_ascend.trainer.checkpoint import latest_checkpoint, load_checkpoint


def _config(tmp_path, **kw):
    # the entropy bonus moves the weights even when every reward (so every advantage) is 0
    base = dict(model="tiny", dataset="arithmetic", dataset_size=64, eval_every=0, steps=2, prompts_per_step=4,
                num_generations=4, max_new_tokens=4, sft_steps=0, lr=1e-2, num_threads=1, entropy_coef=0.05,
                output_dir=str(tmp_path / "run"), progress_bar="off", log_every=0, save_every=1)
    base.update(kw)
    return R2VPOConfig(**base)


def _rows(tmp_path):
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["step"] > 0]


def test_each_pass_takes_updates_per_step_optimizer_steps_off_policy(tmp_path):
    trainer = R2VPOTrainer(config=_config(tmp_path, ppo_epochs=3, updates_per_step=2))
    trainer.train()
    steps_taken = {int(state["step"]) for state in trainer.engine.optimizer.state.values()}
    assert steps_taken == {2 * 3 * 2}                          # steps × ppo_epochs × updates_per_step
    rows = _rows(tmp_path)
    # later passes see the weights moved by earlier ones: ρ ≠ 1, so V̂ > 0 and λ moves
    assert all(r["r2vpo/ratio_var"] > 0 for r in rows)
    assert all(r["r2vpo/lambda_max_change"] > 0 for r in rows)
    for key in ("grad/adv_part", "grad/var_part", "grad/var_share", "grad/top1pct_share",
                "grad/staleness_0/var_share", "r2vpo/dual_ratio_var"):
        assert all(key in r for r in rows), key
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert state["config"]["ppo_epochs"] == 3 and state["dual"]["lam"] == trainer.dual.lam


def test_a_second_pass_is_off_policy(tmp_path):
    """Two passes: the second sees the weights the first moved, ρ ≠ 1 (behaviour log-probs come
    from pass 0's forward: test_update_speed.py)."""
    two = R2VPOTrainer(config=_config(tmp_path / "b", ppo_epochs=2))
    two.train()
    rows = _rows(tmp_path / "b")
    assert all(r["r2vpo/ratio_var"] > 0 for r in rows)
    assert torch.isfinite(torch.tensor([r["loss/policy"] for r in rows])).all()


def test_parameter_space_split_every_n_steps(tmp_path):
    """grad_split_every=2: grad_param/* at steps 2 and 4 only; the two parts add up to the loss's
    gradient, so their norms bound its norm (triangle inequality) and shares are in [0, 1]."""
    R2VPOTrainer(config=_config(tmp_path, steps=4, ppo_epochs=2, replay_ratio=0.5, grad_split_every=2,
                                init_lambda=2.0)).train()
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows if "grad_param/adv_norm" in r] == [2, 4]
    for r in rows:
        if "grad_param/adv_norm" in r:
            assert r["grad_param/var_norm"] > 0 and r["grad_param/adv_norm"] >= 0
            assert 0 <= r["grad_param/var_share"] <= 1 and 0 < r["grad_param/top1pct_share"] <= 1
            assert -1 <= r["grad_param/cos"] <= 1

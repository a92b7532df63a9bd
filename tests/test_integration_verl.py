"""The verl plugin against the real verl 0.9.1 (its registry, signature and config objects).

Run by scripts/test_verl.sh in verl's own environment; skipped where verl is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("verl")

from omegaconf import OmegaConf  # noqa: E402
from verl.trainer.ppo.core_algos import get_policy_loss_fn  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402
from verl.workers.config import FSDPActorConfig  # noqa: E402

from r2vpo_ascend.algos.errors import ConfigError  # noqa: E402
from r2vpo_ascend.algos.losses import r2vpo_loss  # noqa: E402
from r2vpo_ascend.integrations import verl as plugin  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LENGTH = 6


@pytest.fixture(autouse=True)
def fresh_lambda():
    plugin.reset_dual_state()
    yield
    plugin.reset_dual_state()


def actor_config(*, loss_agg_mode: str = "token-mean", mini_batch: int = 4, rollout_n: int = 2, micro: int = 2,
                 **loss_settings) -> FSDPActorConfig:
    policy_loss = plugin.R2VPOPolicyLossConfig(**{"init_lambda": 0.5, "dual_lr": 5.0, "ratio_var_target": 1e-3,
                                                  **loss_settings})
    return FSDPActorConfig(strategy="fsdp", rollout_n=rollout_n, ppo_mini_batch_size=mini_batch,
                           ppo_micro_batch_size_per_gpu=micro, loss_agg_mode=loss_agg_mode,
                           loss_scale_factor=LENGTH, policy_loss=policy_loss)


def set_batch_info(config, mask: torch.Tensor, *, dp_size: int = 1, scale: int = 1) -> None:
    """What verl's ppo_loss writes before calling the loss (global = `scale` × this batch)."""
    config.global_batch_info.update(dp_size=dp_size, batch_num_tokens=int(mask.sum()) * scale,
                                    global_batch_size=mask.shape[0] * scale, loss_scale_factor=config.loss_scale_factor)


def micro_batch(seed: int, batch: int = 2):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, LENGTH, dtype=torch.bool)
    mask[0, 4:] = False
    old = -torch.rand(batch, LENGTH, generator=generator) * 2
    log_prob = (old + 0.4 * torch.randn(batch, LENGTH, generator=generator)).requires_grad_(True)
    advantages = torch.randn(batch, 1, generator=generator).expand(batch, LENGTH).contiguous()
    return old, log_prob, advantages, mask


def call(config, old, log_prob, advantages, mask):
    """The loss through verl's registry, with verl's keyword signature (as ppo_loss calls it)."""
    return get_policy_loss_fn("r2vpo")(old_log_prob=old, log_prob=log_prob, advantages=advantages,
                                       response_mask=mask, loss_agg_mode=config.loss_agg_mode, config=config,
                                       rollout_is_weights=None)


def test_import_verl_registers_the_loss_through_the_entry_point():
    code = ("import sys, verl; from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as R; "
            "print(R['r2vpo'].__module__, 'r2vpo_ascend.integrations.verl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["r2vpo_ascend.integrations.verl", "True"]
    assert get_policy_loss_fn("r2vpo") is plugin.compute_policy_loss_r2vpo


def test_config_through_verls_omegaconf_target():
    raw = OmegaConf.create({"_target_": "r2vpo_ascend.integrations.verl.R2VPOPolicyLossConfig",
                            "loss_mode": "r2vpo", "init_lambda": 0.25, "center": "one"})
    settings = omega_conf_to_dataclass(raw)
    assert isinstance(settings, plugin.R2VPOPolicyLossConfig) and settings.init_lambda == 0.25
    assert settings.ratio_var_target == 0.05  # R2VPOConfig's default, from the shared table
    with pytest.raises(ConfigError, match="dual_update"):
        plugin.R2VPOPolicyLossConfig(dual_update="sometimes")


@pytest.mark.parametrize("loss_agg_mode", plugin.SUPPORTED_LOSS_AGG)
def test_loss_and_gradient_equal_r2vpo_loss(loss_agg_mode):
    config = actor_config(loss_agg_mode=loss_agg_mode, init_lambda=1.5)
    old, log_prob, advantages, mask = micro_batch(0)
    set_batch_info(config, mask)
    loss, metrics = call(config, old, log_prob, advantages, mask)
    (grad,) = torch.autograd.grad(loss, log_prob)
    expected = r2vpo_loss(log_prob, old, advantages, mask, 1.5, loss_agg=loss_agg_mode,
                          max_response_length=LENGTH).loss
    (expected_grad,) = torch.autograd.grad(expected, log_prob)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(grad, expected_grad)
    assert metrics["actor/r2vpo_lambda"] == 1.5


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_global_normalisation_matches_verls_own_vanilla_loss(loss_agg_mode):
    """λ = 0 and no clipping: R²VPO's policy term is verl's vanilla loss, also with dp_size = 2 and
    global denominators (batch_num_tokens, global_batch_size) larger than the micro-batch's."""
    config = actor_config(loss_agg_mode=loss_agg_mode, init_lambda=0.0, mini_batch=8)
    vanilla_config = FSDPActorConfig(strategy="fsdp", rollout_n=2, ppo_mini_batch_size=8,
                                     ppo_micro_batch_size_per_gpu=2, loss_agg_mode=loss_agg_mode,
                                     loss_scale_factor=LENGTH, clip_ratio=1e6, clip_ratio_low=1e6, clip_ratio_high=1e6,
                                     clip_ratio_c=1e6)
    old, log_prob, advantages, mask = micro_batch(1)
    for cfg in (config, vanilla_config):
        set_batch_info(cfg, mask, dp_size=2, scale=8)
    ours, _ = call(config, old, log_prob, advantages, mask)
    theirs, _ = get_policy_loss_fn("vanilla")(old, log_prob, advantages, mask, loss_agg_mode, vanilla_config, None)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    torch.testing.assert_close(torch.autograd.grad(ours, log_prob)[0], torch.autograd.grad(theirs, log_prob)[0])


def test_one_dual_step_per_mini_batch_on_the_exact_global_ratio_variance(tmp_path):
    state_file = tmp_path / "r2vpo_dual.json"
    config = actor_config(dual_state_path=str(state_file))  # 4 prompts × 2 = 8 sequences / 2 = 4 calls
    batches = [micro_batch(seed) for seed in range(8)]
    used = []
    for old, log_prob, advantages, mask in batches:
        set_batch_info(config, mask, scale=4)
        used.append(call(config, old, log_prob, advantages, mask)[1]["actor/r2vpo_lambda"])
    state = plugin.dual_state()
    assert state.dual_steps == 2 and state.micro_batches_per_step == 4
    assert used[:4] == [0.5] * 4 and len(set(used[4:])) == 1 and used[4] != 0.5
    # The dual step's V̂ is that of the 4 micro-batches together (centre: their common mean).
    old, log_prob, advantages, mask = (torch.cat(parts) for parts in zip(*batches[4:]))
    whole = r2vpo_loss(log_prob, old, advantages, mask, 0.0).stats.ratio_var()
    assert state.last_ratio_var == pytest.approx(whole, rel=1e-6)  # float32 sums

    saved = json.loads(state_file.read_text())
    assert saved["dual"]["lam"] == state.controller.lam and saved["dual_steps"] == 2
    plugin.reset_dual_state()  # a restarted process: λ comes back from dual_state_path
    old, log_prob, advantages, mask = batches[0]
    set_batch_info(config, mask, scale=4)
    assert call(config, old, log_prob, advantages, mask)[1]["actor/r2vpo_lambda"] == saved["dual"]["lam"]
    assert plugin.dual_state().dual_steps == 2


def test_unsupported_settings_are_refused_by_name():
    old, log_prob, advantages, mask = micro_batch(0)
    dynamic = FSDPActorConfig(strategy="fsdp", rollout_n=2, ppo_mini_batch_size=4, use_dynamic_bsz=True,
                              ppo_max_token_len_per_gpu=64, policy_loss=plugin.R2VPOPolicyLossConfig())
    cases = [(dynamic, "use_dynamic_bsz"), (actor_config(loss_agg_mode="token-sum"), "token-sum")]
    no_length = FSDPActorConfig(strategy="fsdp", rollout_n=2, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2,
                                loss_agg_mode="seq-mean-token-sum-norm", policy_loss=plugin.R2VPOPolicyLossConfig())
    cases.append((no_length, "loss_scale_factor"))
    for config, named in cases:
        plugin.reset_dual_state()
        set_batch_info(config, mask)
        with pytest.raises(ConfigError, match=named):
            call(config, old, log_prob, advantages, mask)
    with pytest.raises(ConfigError, match="rollout correction"):
        get_policy_loss_fn("r2vpo")(old, log_prob, advantages, mask, "token-mean", actor_config(),
                                    torch.ones_like(old))


def test_two_gloo_ranks_hold_the_same_lambda(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(Path(__file__).resolve()), str(tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["lam"] == ranks[1]["lam"] != 0.5
    assert ranks[0]["local_var"] != ranks[1]["local_var"]
    # The same λ as one process that sees both ranks' micro-batches of the mini-batch.
    batches = [micro_batch(10 * rank + i) for i in range(2) for rank in (0, 1)]
    old, log_prob, advantages, mask = (torch.cat(parts) for parts in zip(*batches))
    whole = r2vpo_loss(log_prob, old, advantages, mask, 0.0).stats.ratio_var()
    expected = plugin.dual_controller(actor_config().policy_loss)
    expected.update(whole)
    assert ranks[0]["lam"] == pytest.approx(expected.lam, rel=1e-6)


def _worker(out: Path) -> None:
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    config = actor_config()  # 8 sequences per mini-batch, 2 ranks, micro-batches of 2: 2 calls each
    local = []
    for i in range(2):
        old, log_prob, advantages, mask = micro_batch(10 * rank + i)
        set_batch_info(config, mask, dp_size=2, scale=4)
        local.append(call(config, old, log_prob, advantages, mask)[1]["actor/r2vpo_ratio_var"])
    state = plugin.dual_state()
    assert state.dual_steps == 1
    (out / f"rank{rank}.json").write_text(json.dumps({"lam": state.controller.lam, "local_var": local}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))

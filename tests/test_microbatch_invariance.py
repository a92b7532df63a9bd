"""The trainer's update does not depend on how a mini-batch is cut into micro-batches, for every
`loss_agg` mode, with responses of unequal lengths (so micro-batches have different padded
widths), the KL penalty and the entropy bonus on, and ρ ≠ 1. Dr. GRPO
(`seq-mean-token-sum-norm`) normalises by the run's `max_response_length`, never by a
micro-batch's width; KL and entropy aggregate like the policy loss.
"""

import copy

import pytest
import torch

from r2vpo_ascend.algos import LOSS_AGG_MODES, kl_penalty
from r2vpo_ascend.api import R2VPOConfig, R2VPOTrainer
from r2vpo_ascend.replay import Rollout
from r2vpo_ascend.trainer.batch import collate
from r2vpo_ascend.trainer.logprobs import response_log_probs
from _tensor_probes import record_step_grads

MAX_NEW_TOKENS = 6
LENGTHS = [1, 6, 2, 5, 3, 6, 4, 1, 2, 6, 5, 3]  # unequal: chunks of 3 have widths 6, 6, 6, 5


def make_trainer(tmp_path, loss_agg: str, micro_batch_size: int) -> R2VPOTrainer:
    cfg = R2VPOConfig(model="tiny", dataset="arithmetic", dataset_size=32, prompts_per_step=4, num_generations=3,
                      max_new_tokens=MAX_NEW_TOKENS, sft_steps=0, eval_every=0, steps=1, updates_per_step=1, ppo_epochs=1,
                      micro_batch_size=micro_batch_size, loss_agg=loss_agg, init_lambda=2.0, kl_coef=0.1,
                      entropy_coef=0.01, lr=1e-3, progress_bar="off", log_every=0,
                      output_dir=str(tmp_path / f"{loss_agg}-{micro_batch_size}"))
    trainer = R2VPOTrainer(config=cfg)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # a reference policy away from the current one: the KL term is not zero
        for p in trainer.updater.ref_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return trainer


def make_rollouts(trainer: R2VPOTrainer) -> list[Rollout]:
    """Responses of unequal lengths with behaviour log-probs 0.3·noise away from the current ones."""
    generator = torch.Generator().manual_seed(3)
    vocab = trainer.engine.model.config.vocab_size
    prompts = [trainer.tokenizer(r["prompt"])["input_ids"] for r in trainer.train_records[:len(LENGTHS)]]
    responses = [torch.randint(4, vocab, (n,), generator=generator).tolist() for n in LENGTHS]
    with torch.no_grad():
        batch = collate(prompts, responses, trainer.tokenizer.pad_token_id)
        log_probs, _ = response_log_probs(trainer.engine.model, batch)
    rollouts = []
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        old = log_probs[i, :len(response)] + 0.3 * torch.randn(len(response), generator=generator)
        rollouts.append(Rollout(prompt_ids=prompt, response_ids=response, old_log_probs=old.float(),
                                reward=0.0, advantage=float(torch.randn((), generator=generator)), version=0,
                                group_id=i // 3))
    return rollouts


def update_and_record(trainer: R2VPOTrainer, rollouts: list[Rollout]) -> tuple[torch.Tensor, dict]:
    """The update's metrics and the accumulated gradient the optimiser step sees."""
    grads = record_step_grads(trainer)
    metrics = trainer.updater.update(copy.deepcopy(rollouts), current_version=0)
    assert len(grads) == 1
    return grads[0], metrics


@pytest.mark.parametrize("loss_agg", LOSS_AGG_MODES)
def test_update_is_the_same_for_any_micro_batch_size(tmp_path, loss_agg):
    results = {}
    for micro_batch_size in (64, 3):
        trainer = make_trainer(tmp_path, loss_agg, micro_batch_size)
        rollouts = make_rollouts(trainer) if micro_batch_size == 64 else rollouts
        grad, metrics = update_and_record(trainer, rollouts)
        params = torch.cat([p.detach().flatten() for p in trainer.engine.model.parameters()])
        results[micro_batch_size] = grad, metrics, params
    (grad_one, metrics_one, params_one), (grad_many, metrics_many, params_many) = results[64], results[3]
    assert grad_one.abs().max() > 0
    torch.testing.assert_close(grad_many, grad_one, rtol=1e-5, atol=1e-6 * grad_one.abs().max().item())
    # The gradient is the test: Adam's first step, ≈ lr·g/(|g| + eps), hardly sees a rescaled
    # gradient and magnifies float rounding where |g| ~ eps, so the weights only get lr/100, and
    # only where |g| ≫ eps (a 1e-7 gradient off by 2e-8, rounding, moved its weight by lr/20).
    clear = grad_one.abs() > 1e-6
    torch.testing.assert_close(params_many[clear], params_one[clear], rtol=1e-5, atol=1e-5)
    for key in ("loss/policy", "r2vpo/pg_loss", "r2vpo/var_penalty", "kl/ref", "entropy/mean", "grad_norm",
                "r2vpo/ratio_var", "r2vpo/lambda"):
        assert metrics_many[key] == pytest.approx(metrics_one[key], rel=1e-5, abs=1e-8), key
    assert metrics_one["kl/ref"] > 0 and metrics_one["r2vpo/ratio_var"] > 0  # neither term is vacuous


def _by_hand(values: torch.Tensor, mask: torch.Tensor, loss_agg: str) -> float:
    """The four modes written out on the whole batch (independent of `aggregate`)."""
    lengths = mask.sum(-1)
    per_seq = (values * mask).sum(-1)
    if loss_agg == "token-mean":
        return float(per_seq.sum() / lengths.sum())
    if loss_agg == "seq-mean-token-mean":
        return float((per_seq / lengths).mean())
    if loss_agg == "seq-mean-token-sum":
        return float(per_seq.mean())
    return float(per_seq.sum() / (len(lengths) * MAX_NEW_TOKENS))  # L = max_new_tokens by default


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_kl_term_aggregates_like_the_policy_loss(tmp_path, loss_agg):
    trainer = make_trainer(tmp_path, loss_agg, micro_batch_size=3)
    rollouts = make_rollouts(trainer)
    batch = collate([r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts],
                    trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        log_probs, _ = response_log_probs(trainer.engine.model, batch)
        ref_log_probs, _ = response_log_probs(trainer.updater.ref_model, batch)
    expected = _by_hand(kl_penalty(log_probs, ref_log_probs), batch.response_mask, loss_agg)
    _, metrics = update_and_record(trainer, rollouts)
    assert metrics["kl/ref"] == pytest.approx(expected, rel=1e-5)

"""The update's compute savings keep its numbers: behaviour log-probs from the first optimiser
step's own forward (only the rest get a no-grad pass), length-bucketed micro-batches, and the
chunked log-prob head on a real-sized (49,152) vocabulary."""

import copy

import pytest
import torch

from device.kernels.logprobs import CPU_TILE_BYTES
from r2vpo_ascend.api import R2VPOConfig, R2VPOTrainer
from r2vpo_ascend.replay import Rollout
from r2vpo_ascend.trainer.batch import collate
from r2vpo_ascend.trainer.logprobs import response_log_probs
from r2vpo_ascend.trainer.policy_update import by_length
from _tensor_probes import LargestTensor, record_step_grads


def _trainer(tmp_path, name: str, **kw) -> R2VPOTrainer:
    base = dict(model="tiny", dataset="arithmetic", dataset_size=32, prompts_per_step=4, num_generations=3,
                max_new_tokens=8, sft_steps=0, eval_every=0, steps=1, micro_batch_size=64, init_lambda=2.0,
                entropy_coef=0.01, lr=1e-3, num_threads=1, progress_bar="off", log_every=0, ppo_epochs=1,
                replay_ratio=0.0, output_dir=str(tmp_path / name))
    base.update(kw)
    return R2VPOTrainer(config=R2VPOConfig(**base))


def _rollouts(trainer: R2VPOTrainer, lengths: list[int], *, replayed: int = 0, one_prompt: bool = False,
              seed: int = 3) -> list[Rollout]:
    """Responses of the given lengths; the last `replayed` are stale (version -1) with stored
    behaviour log-probs 0.3·noise away from the current ones, the others fresh (None)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = trainer.engine.model.config.vocab_size
    records = trainer.train_records[:1] * len(lengths) if one_prompt else trainer.train_records[:len(lengths)]
    prompts = [trainer.tokenizer(r["prompt"])["input_ids"] for r in records]
    responses = [torch.randint(4, vocab, (n,), generator=generator).tolist() for n in lengths]
    with torch.no_grad():
        log_probs, _ = response_log_probs(trainer.engine.model, collate(prompts, responses, trainer.tokenizer.pad_token_id))
    out = []
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        stale = i >= len(lengths) - replayed
        old = (log_probs[i, :len(response)] + 0.3 * torch.randn(len(response), generator=generator)).float()
        out.append(Rollout(prompt_ids=prompt, response_ids=response, old_log_probs=old if stale else None,
                           reward=0.0, advantage=float(torch.randn((), generator=generator)),
                           version=-1 if stale else 0, group_id=i // 3))
    return out


class _Forwards:
    """Wraps `engine.log_probs`: each call's (grad enabled, rows, padded tokens), and at the
    first grad-enabled call, how many of `batch` still had no behaviour log-probs."""

    def __init__(self, engine, batch: list[Rollout]):
        self.calls: list[tuple[bool, int, int]] = []
        self.unfilled_at_first_grad: int | None = None
        inner = engine.log_probs

        def log_probs(tokens, **kw):
            grad = torch.is_grad_enabled()
            if grad and self.unfilled_at_first_grad is None:
                self.unfilled_at_first_grad = sum(r.old_log_probs is None for r in batch)
            self.calls.append((grad, len(tokens), tokens.input_ids.numel()))
            return inner(tokens, **kw)
        engine.log_probs = log_probs

    def rows(self, grad: bool) -> int:
        return sum(n for g, n, _ in self.calls if g == grad)


def _params(trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.engine.model.parameters()])


LENGTHS = [1, 8, 2, 7, 3, 8, 4, 1, 2, 8, 5, 3]


@pytest.mark.parametrize("updates_per_step,ppo_epochs", [(2, 2), (1, 2), (3, 1)])
def test_behaviour_log_probs_come_from_the_first_mini_batch(tmp_path, updates_per_step, ppo_epochs):
    """Same update as with the old separate no-grad pass over every fresh sample, which now runs
    only over the fresh samples outside the first mini-batch (none with one mini-batch)."""
    kw = dict(updates_per_step=updates_per_step, ppo_epochs=ppo_epochs)
    results = {}
    for mode in ("separate_pass", "first_mini_batch"):
        trainer = _trainer(tmp_path, mode, **kw)
        batch = _rollouts(trainer, LENGTHS, replayed=4)
        stored = [r.old_log_probs.clone() for r in batch[-4:]]
        fresh = [r for r in batch if r.old_log_probs is None]
        initial = _params(trainer)
        forwards = _Forwards(trainer.engine, batch)
        if mode == "separate_pass":  # what the trainer did before: every fresh sample, up front
            trainer.updater.behaviour_log_probs(fresh)
        metrics = trainer.updater.update(batch, current_version=0)
        results[mode] = metrics, _params(trainer), [r.old_log_probs for r in batch], forwards
        for before, r in zip(stored, batch[-4:]):  # replayed samples keep theirs
            assert torch.equal(r.old_log_probs, before)
    (m_old, p_old, lp_old, f_old), (m_new, p_new, lp_new, f_new) = results.values()
    assert set(m_new) == set(m_old)
    for key in m_old:
        assert m_new[key] == pytest.approx(m_old[key], rel=1e-5, abs=1e-7), key
    torch.testing.assert_close(p_new, p_old, rtol=1e-5, atol=1e-6)
    for new, old in zip(lp_new, lp_old):
        torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
    assert m_old["r2vpo/ratio_var"] > 0 and (p_old - initial).abs().max() > 0  # neither is vacuous
    n_fresh, n_all = len(LENGTHS) - 4, len(LENGTHS)
    in_first = f_new.unfilled_at_first_grad  # the first mini-batch's fresh samples, filled by its forward
    assert f_old.rows(grad=False) == n_fresh and f_old.unfilled_at_first_grad == 0
    assert in_first > 0 and f_new.rows(grad=False) == n_fresh - in_first
    if updates_per_step == 1:
        assert f_new.rows(grad=False) == 0
    assert f_new.rows(grad=True) == f_old.rows(grad=True) == ppo_epochs * n_all


def test_trainer_step_with_several_updates_has_no_full_behaviour_pass(tmp_path):
    """The trainer leaves fresh samples' log-probs to the update: one RL step with 2 mini-batches
    runs the no-grad forward over half the fresh samples (micro-batches of 64: no centre pre-pass)."""
    trainer = _trainer(tmp_path, "run", updates_per_step=2, ppo_epochs=2, max_new_tokens=4)
    no_grad_rows = []
    inner = trainer.engine.log_probs

    def log_probs(tokens, **kw):
        if not torch.is_grad_enabled():
            no_grad_rows.append(len(tokens))
        return inner(tokens, **kw)
    trainer.engine.log_probs = log_probs
    trainer.train()
    assert sum(no_grad_rows) == 12 // 2  # 4 prompts x 3: the second mini-batch's fresh samples
    assert all(r.old_log_probs is not None and len(r.old_log_probs) == len(r.response_ids) for r in trainer.buffer)


class _TwoRanks:
    """Rank 0 of 2 around a real engine; the other rank (simulated) needs 3 no-grad forwards."""
    world_size, rank = 2, 0

    def __init__(self, inner):
        self.inner, self.rows = inner, []

    def log_probs(self, tokens, **kw):
        self.rows.append(len(tokens))
        return self.inner.log_probs(tokens, **kw)

    def all_reduce_sum(self, table):
        other = torch.zeros_like(table)
        other[1] = 3
        return table + other


def test_every_rank_runs_as_many_behaviour_forwards_as_the_busiest(tmp_path):
    """Under ZeRO-3 each forward is a collective: a rank with fewer samples outside its first
    mini-batch pads its no-grad pass with empty rows up to the busiest rank's count."""
    trainer = _trainer(tmp_path, "ranks", micro_batch_size=2)
    batch = _rollouts(trainer, [3, 5, 2, 4])
    engine = _TwoRanks(trainer.engine)
    trainer.updater.engine = engine
    trainer.updater._fill_behaviour_log_probs(batch, [batch[:2], batch[2:]], [1, 1])
    assert engine.rows == [2, 1, 1]  # its 2 pending samples, then 2 one-row padding forwards
    assert all(r.old_log_probs is None for r in batch[:2])  # the first mini-batch's forward fills these
    assert [len(r.old_log_probs) for r in batch[2:]] == [2, 4]


def _recorded_update(trainer, batch):
    grads = record_step_grads(trainer)
    forwards = _Forwards(trainer.engine, batch)
    metrics = trainer.updater.update(batch, current_version=0)
    return grads[0], metrics, forwards


def _padded_tokens(chunks, pad_id) -> int:
    return sum(collate([r.prompt_ids for r in c], [r.response_ids for r in c], pad_id).input_ids.numel()
               for c in chunks)


def test_length_bucketed_micro_batches_same_update_fewer_padded_tokens(tmp_path):
    """Micro-batches of 2 cut from the length-sorted mini-batch: the same gradient and loss as one
    micro-batch of everything, and each pads only to its own longest sample."""
    lengths = [1, 30, 2, 29, 3, 28, 4, 27, 5, 26, 6, 25]  # distinct: one length-sorted order
    results = {}
    for micro in (64, 2):
        trainer = _trainer(tmp_path, f"mbs{micro}", micro_batch_size=micro, max_new_tokens=30, kl_coef=0.1)
        batch = _rollouts(trainer, lengths, replayed=len(lengths), one_prompt=True)
        results[micro] = (*_recorded_update(trainer, copy.deepcopy(batch)), batch, trainer.tokenizer.pad_token_id)
    (g_one, m_one, _, _, _), (g_many, m_many, forwards, batch, pad_id) = results[64], results[2]
    assert g_one.abs().max() > 0
    torch.testing.assert_close(g_many, g_one, rtol=1e-5, atol=1e-6 * g_one.abs().max().item())
    for key in ("loss/policy", "r2vpo/pg_loss", "r2vpo/var_penalty", "kl/ref", "entropy/mean", "grad_norm",
                "r2vpo/ratio_var"):
        assert m_many[key] == pytest.approx(m_one[key], rel=1e-5, abs=1e-8), key
    processed = sum(tokens for grad, _, tokens in forwards.calls if grad)
    bucketed = _padded_tokens([by_length(batch)[i:i + 2] for i in range(0, len(batch), 2)], pad_id)
    as_given = _padded_tokens([batch[i:i + 2] for i in range(0, len(batch), 2)], pad_id)
    assert processed == bucketed < 0.7 * as_given


def test_update_never_builds_full_logits_on_a_49k_vocabulary(tmp_path):
    """SmolLM2's vocabulary size on a 1-layer, hidden-16 Llama: the update's forward + backward
    (with entropy and a KL reference) never holds a [response tokens x vocabulary] tensor, only
    tiles within the chunked kernel's CPU budget."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from r2vpo_ascend.models.tokenizer import build_char_tokenizer

    vocab, hidden = 49_152, 16
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id))
    config = R2VPOConfig(dataset="arithmetic", dataset_size=16, prompts_per_step=2, num_generations=4,
                         max_new_tokens=64, sft_steps=0, eval_every=0, steps=1, micro_batch_size=16, kl_coef=0.1,
                         entropy_coef=0.01, num_threads=1, progress_bar="off", log_every=0,
                         output_dir=str(tmp_path / "run"))
    trainer = R2VPOTrainer(model=model, tokenizer=tokenizer, config=config)
    batch = _rollouts(trainer, [64] * 16)
    tokens = sum(len(r.response_ids) for r in batch)
    largest = LargestTensor()
    with largest:
        metrics = trainer.updater.update(batch, current_version=0)
    assert torch.isfinite(torch.tensor(metrics["loss/policy"]))
    # nothing bigger than one logits tile of the CPU budget; the logits (1,024 x 49,152) are 3x that
    assert 4 * largest.numel <= CPU_TILE_BYTES < 4 * tokens * vocab // 2
    assert largest.numel >= vocab * hidden  # the check sees the head's weight gradient

"""R2VPOGRPOTrainer / R2VPOGRPOConfig with the real trl==1.16.0 on a tiny model (CPU).

Run as a script under torchrun (``_worker``) it trains on every process and writes each rank's
λ history, for the two-process test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402

from r2vpo_ascend.algos.dual_settings import R2VPO_SETTINGS  # noqa: E402
from r2vpo_ascend.algos.errors import CheckpointError, ConfigError  # noqa: E402
from r2vpo_ascend.algos.losses import r2vpo_loss  # noqa: E402
from r2vpo_ascend.integrations.trl import DUAL_STATE_FILE, R2VPOGRPOConfig, R2VPOGRPOTrainer  # noqa: E402
from r2vpo_ascend.models.tiny import build_tiny_model  # noqa: E402
from r2vpo_ascend.models.tokenizer import build_char_tokenizer  # noqa: E402
from r2vpo_ascend.trainer.config import R2VPOConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def reward(completions, **kwargs) -> list[float]:
    """Varied, deterministic rewards so that groups have non-zero advantages."""
    return [float(sum(map(ord, c)) % 3) for c in completions]


def make_args(out: Path, **overrides) -> R2VPOGRPOConfig:
    # num_iterations=2: the second pass over each generation is off-policy (ρ ≠ 1), so λ moves.
    settings = dict(output_dir=str(out), per_device_train_batch_size=4, num_generations=4,
                    gradient_accumulation_steps=2, max_completion_length=6, num_iterations=2, max_steps=4,
                    learning_rate=1e-2, report_to="none", use_cpu=True, logging_steps=1, save_strategy="no",
                    init_lambda=0.5, dual_lr=5.0, ratio_var_target=1e-4, seed=0, dataloader_num_workers=0,
                    disable_tqdm=True, bf16=False)  # fp32: exact comparisons, and faster on a CPU
    settings.update(overrides)
    return R2VPOGRPOConfig(**settings)


def make_trainer(args: R2VPOGRPOConfig) -> R2VPOGRPOTrainer:
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    dataset = Dataset.from_dict({"prompt": [f"{i}+{i % 7}=" for i in range(32)]})
    return R2VPOGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                            processing_class=tokenizer)


def lambda_history(trainer: R2VPOGRPOTrainer) -> list[tuple[float, float]]:
    """(λ used, λ after the dual step) of every optimiser step, from TRL's own logs."""
    return [(h["r2vpo/lambda"], h["r2vpo/lambda_next"]) for h in trainer.state.log_history if "r2vpo/lambda" in h]


# ---- the config ---------------------------------------------------------------------------------


def test_r2vpo_fields_match_r2vpo_config_and_the_shared_table():
    ours = {f.name: f for f in dataclasses.fields(R2VPOConfig)}
    trl = {f.name: f for f in dataclasses.fields(R2VPOGRPOConfig)}
    for setting in R2VPO_SETTINGS:
        for fields in (ours, trl):
            field = fields[setting.name]
            assert field.default == setting.default, setting.name
            assert field.metadata["help"] == setting.help, setting.name
        assert ours[setting.name].metadata.get("choices") == setting.choices, setting.name
    args = R2VPOGRPOConfig(output_dir="unused", report_to="none", use_cpu=True)
    assert {s.name: getattr(args, s.name) for s in R2VPO_SETTINGS} == \
        {s.name: getattr(R2VPOConfig(), s.name) for s in R2VPO_SETTINGS}


def test_trl_command_line_parser_reads_the_r2vpo_fields_and_the_config_pickles():
    """TRL scripts parse their config with TrlParser; checkpoints pickle it (training_args.bin)."""
    import pickle

    from trl import TrlParser
    (args,) = TrlParser(R2VPOGRPOConfig).parse_args_and_config(
        ["--output_dir", "unused", "--report_to", "none", "--use_cpu", "true", "--init_lambda", "0.3",
         "--dual_step_max", "0.5", "--center", "one"])
    assert (args.init_lambda, args.dual_step_max, args.center) == (0.3, 0.5, "one")
    assert pickle.loads(pickle.dumps(args)).init_lambda == 0.3


@pytest.mark.parametrize("option, value, named", [
    ("loss_type", "cispo", "loss_type"), ("top_entropy_quantile", 0.5, "top_entropy_quantile"),
    ("off_policy_mask_threshold", 0.1, "off_policy_mask_threshold"), ("delta", 2.0, "delta"),
    ("entropy_coef", 0.01, "entropy_coef"), ("dual_update", "sometimes", "dual_update"),
    ("ratio_var_target", 0.0, "target"),
])
def test_unsupported_or_invalid_options_are_refused_by_name(option, value, named):
    with pytest.raises(ConfigError, match=named):
        R2VPOGRPOConfig(output_dir="unused", report_to="none", use_cpu=True, **{option: value})


def test_vllm_importance_correction_is_refused_and_a_plain_grpo_config_too(tmp_path):
    args = make_args(tmp_path)
    args.use_vllm = True  # set after __post_init__ (which would need vLLM installed): the trainer checks again
    with pytest.raises(ConfigError, match="vllm_importance_sampling_correction"):
        make_trainer(args)
    from trl import GRPOConfig
    with pytest.raises(ConfigError, match="R2VPOGRPOConfig"):
        make_trainer(GRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True))


# ---- the loss -----------------------------------------------------------------------------------


def _micro_batch(trainer: R2VPOGRPOTrainer, generator: torch.Generator) -> dict:
    batch, prompt_len, completion_len = 4, 3, 6
    vocab = trainer.model.config.vocab_size
    completion_mask = torch.ones(batch, completion_len, dtype=torch.long)
    completion_mask[1, 4:] = 0
    completion_mask[3, 2:] = 0
    completion_ids = torch.randint(5, vocab, (batch, completion_len), generator=generator)
    return {"prompt_ids": torch.randint(5, vocab, (batch, prompt_len), generator=generator),
            "prompt_mask": torch.ones(batch, prompt_len, dtype=torch.long),
            "completion_ids": completion_ids, "completion_mask": completion_mask,
            "advantages": torch.randn(batch, generator=generator),
            "num_items_in_batch": completion_mask.sum()}


def _log_probs(model, inputs) -> torch.Tensor:
    """log π(completion) straight from the model's logits (temperature 1), not through TRL."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    logits = model(input_ids=ids, attention_mask=attention).logits[:, inputs["prompt_ids"].size(1) - 1:-1]
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("loss_type, loss_agg, level", [
    ("dapo", "token-mean", "token"), ("grpo", "seq-mean-token-mean", "token"),
    ("dr_grpo", "seq-mean-token-sum-norm", "token"), ("grpo", "seq-mean-token-mean", "sequence"),
])
def test_loss_and_gradient_equal_r2vpo_loss(tmp_path, loss_type, loss_agg, level):
    trainer = make_trainer(make_args(tmp_path, loss_type=loss_type, importance_sampling_level=level,
                                     init_lambda=2.0, gradient_accumulation_steps=1, steps_per_generation=1))
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model
    model.train()
    inputs = _micro_batch(trainer, torch.Generator().manual_seed(1))
    with torch.no_grad():  # a behaviour policy that differs from the model, so ρ ≠ 1
        inputs["old_per_token_logps"] = _log_probs(model, inputs) + 0.3 * torch.randn(4, 6)
    loss = trainer._compute_loss(model, inputs)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    expected = r2vpo_loss(_log_probs(model, inputs), inputs["old_per_token_logps"], inputs["advantages"],
                          inputs["completion_mask"], 2.0, ratio_level=level, loss_agg=loss_agg,
                          max_response_length=6 if loss_type == "dr_grpo" else None).loss
    expected_grads = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    compared = 0
    for got, want in zip(grads, expected_grads):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
            compared += 1
    assert compared > 0
    assert trainer.r2vpo_dual_steps == 1  # sync_gradients outside accumulation: one dual step


@pytest.mark.parametrize("loss_type, loss_agg", [("dapo", "token-mean"), ("grpo", "seq-mean-token-mean"),
                                                ("dr_grpo", "seq-mean-token-sum-norm")])
def test_two_accumulated_micro_batches_give_the_gradient_of_their_union(tmp_path, loss_type, loss_agg):
    """TRL's normalisers as global denominators: the summed micro-batch gradients of one
    optimiser step are those of r2vpo_loss over the whole step (c = 1: exact; see the docs for
    center=mean)."""
    trainer = make_trainer(make_args(tmp_path, loss_type=loss_type, center="one", init_lambda=2.0,
                                     gradient_accumulation_steps=2, steps_per_generation=2))
    trainer.current_gradient_accumulation_steps = 2
    model = trainer.model
    model.train()
    generator = torch.Generator().manual_seed(2)
    parts = [_micro_batch(trainer, generator) for _ in range(2)]
    for part in parts:
        with torch.no_grad():
            part["old_per_token_logps"] = _log_probs(model, part) + 0.3 * torch.randn(4, 6, generator=generator)
    total = sum(part["completion_mask"].sum() for part in parts)
    params = list(model.parameters())
    summed = [torch.zeros_like(p) for p in params]
    for index, part in enumerate(parts):
        part["num_items_in_batch"] = total  # TRL's count over the generation batch (= this step)
        # As the Trainer does: only the last micro-batch of the step syncs (and takes the dual step).
        trainer.accelerator.gradient_state._set_sync_gradients(index == len(parts) - 1)
        for acc, grad in zip(summed, torch.autograd.grad(trainer._compute_loss(model, part), params,
                                                         allow_unused=True)):
            if grad is not None:
                acc += grad
    whole = {key: torch.cat([part[key] for part in parts]) for key in parts[0] if key != "num_items_in_batch"}
    expected = r2vpo_loss(_log_probs(model, whole), whole["old_per_token_logps"], whole["advantages"],
                          whole["completion_mask"], 2.0, center="one", loss_agg=loss_agg,
                          max_response_length=6 if loss_type == "dr_grpo" else None).loss
    for got, want in zip(summed, torch.autograd.grad(expected, params, allow_unused=True)):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    assert trainer.r2vpo_dual_steps == 1 and trainer.r2vpo_dual.lam != 2.0


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_at_lambda_zero_the_loss_is_trls_own_unclipped_loss_with_kl(tmp_path, loss_type):
    """TRL's own _compute_loss as the reference: with λ = 0 and clipping out of reach, R²VPO's
    loss is TRL's, normalisers and the β·KL term (bias-corrected, TRL's default) included."""
    from trl import GRPOTrainer
    trainer = make_trainer(make_args(tmp_path, loss_type=loss_type, init_lambda=0.0, epsilon=1e6,
                                     epsilon_high=1e6, gradient_accumulation_steps=1, steps_per_generation=1))
    trainer.current_gradient_accumulation_steps = 1
    trainer.beta = 0.1  # set after construction: with β > 0 at start TRL would download a reference model
    model = trainer.model
    model.train()
    generator = torch.Generator().manual_seed(3)
    inputs = _micro_batch(trainer, generator)
    with torch.no_grad():
        log_probs = _log_probs(model, inputs)
        inputs["old_per_token_logps"] = log_probs + 0.3 * torch.randn(4, 6, generator=generator)
        inputs["ref_per_token_logps"] = log_probs + 0.5 * torch.randn(4, 6, generator=generator)
    params = list(model.parameters())
    ours = trainer._compute_loss(model, inputs)
    ours_grads = torch.autograd.grad(ours, params, allow_unused=True)
    theirs = GRPOTrainer._compute_loss(trainer, model, inputs)
    theirs_grads = torch.autograd.grad(theirs, params, allow_unused=True)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    for got, want in zip(ours_grads, theirs_grads):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


# ---- training, λ and checkpoints ---------------------------------------------------------------


def test_lambda_moves_once_per_optimiser_step_and_on_policy_steps_have_unit_ratio(tmp_path):
    trainer = make_trainer(make_args(tmp_path))
    trainer.train()
    history = lambda_history(trainer)
    assert len(history) == 4 and trainer.r2vpo_dual_steps == 4  # one dual step per optimiser step
    for (_, after), (used, _) in zip(history, history[1:]):
        assert used == after  # the λ a step uses is the one the previous dual step produced
    ratio_vars = [h["r2vpo/ratio_var"] for h in trainer.state.log_history if "r2vpo/ratio_var" in h]
    # Steps 1 and 3 are the first pass over a fresh generation (ρ ≡ 1); 2 and 4 the second pass.
    assert ratio_vars[0] == 0.0 and ratio_vars[2] == 0.0
    assert ratio_vars[1] > 1e-4 and ratio_vars[3] > 1e-4
    assert history[1][1] > history[1][0]  # V̂ > δ raised λ
    assert trainer.r2vpo_dual.lam != pytest.approx(0.5)


def test_resume_restores_lambda_from_the_trl_checkpoint(tmp_path):
    first = make_trainer(make_args(tmp_path, save_strategy="steps", save_steps=2))
    first.train()
    checkpoint = tmp_path / "checkpoint-2"
    saved = json.loads((checkpoint / DUAL_STATE_FILE).read_text())
    assert saved["dual_steps"] == 2 and saved["dual"]["lam"] != pytest.approx(0.5)
    assert saved["dual"]["lam"] == pytest.approx(lambda_history(first)[1][1])

    second = make_trainer(make_args(tmp_path, save_strategy="steps", save_steps=2))
    second.train(resume_from_checkpoint=str(checkpoint))
    assert second.r2vpo_dual_steps == 4  # 2 restored + steps 3 and 4
    # TRL restores its log history (steps 1-2) and the RNG: steps 3-4 repeat the first run's, which
    # they would not had λ restarted at init_lambda = 0.5.
    resumed = lambda_history(second)
    assert len(resumed) == 4 and resumed[2][0] == pytest.approx(saved["dual"]["lam"])
    assert [x for pair in resumed[2:] for x in pair] == pytest.approx([x for pair in lambda_history(first)[2:] for x in pair])

    (checkpoint / DUAL_STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match=DUAL_STATE_FILE):
        make_trainer(make_args(tmp_path)).train(resume_from_checkpoint=str(checkpoint))


def test_two_processes_hold_the_same_lambda(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(Path(__file__).resolve()), str(tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["history"] == ranks[1]["history"]
    assert len(ranks[0]["history"]) == 4 and ranks[0]["final"] == ranks[1]["final"] != 0.5
    # The two ranks trained on different completions: their local V̂ differ, the global one is shared.
    assert ranks[0]["local_ratio_var"] != ranks[1]["local_ratio_var"]


def _worker(out: Path) -> None:
    torch.set_num_threads(1)
    trainer = make_trainer(make_args(out / "run"))
    local = []
    original = trainer._accumulate

    def record(stats):
        local.append(stats.ratio_var())
        original(stats)

    trainer._accumulate = record
    trainer.train()
    rank = trainer.accelerator.process_index
    history = [(h["r2vpo/lambda"], h["r2vpo/lambda_next"]) for h in trainer.state.log_history
               if "r2vpo/lambda" in h]
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world_size": trainer.accelerator.num_processes, "history": history, "final": trainer.r2vpo_dual.lam,
        "local_ratio_var": local}))
    # Tear the gloo group down before interpreter exit: left to the destructors, a rank could
    # abort at exit ("terminate called without an active exception") after a successful run.
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))

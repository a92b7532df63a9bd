"""experiments/trl_arm.py: the sample-efficiency study's TRL GRPOTrainer arm (issue 11 stage B/C),
its dispatch in experiments/launch.py and its stage-B grid."""

import json
import sys

import pytest
import torch

pytest.importorskip("trl")

from experiments import launch, trl_arm  # noqa: E402
from experiments import sample_efficiency as se  # noqa: E402
from experiments.report_data import read_run  # noqa: E402
from r2vpo_ascend.algos.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random tiny model saved as a run's `final/` is (model and tokenizer save_pretrained)."""
    from r2vpo_ascend.models.tiny import build_tiny_model
    from r2vpo_ascend.models.tokenizer import build_char_tokenizer
    d = tmp_path_factory.mktemp("warm") / "final"
    tokenizer = build_char_tokenizer()
    build_tiny_model(tokenizer, seed=0).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def _config(model_dir, out, **overrides):
    return dict({"model": str(model_dir), "dataset": "arithmetic", "data_seed": 0, "eval_size": 6,
                 "eval_split": "validation", "prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 3,
                 "temperature": 1.0, "lr": 3e-4, "sft_steps": 0, "seed": 0, "steps": 2, "eval_every": 1,
                 "num_threads": 1, "log_every": 0, "output_dir": str(out), "trainer": "trl",
                 "num_iterations": 2, "replay_ratio": 0.0, "updates_per_step": 1}, **overrides)


def test_two_rl_steps_with_num_iterations_2_write_our_metrics(tiny_dir, tmp_path, monkeypatch):
    from trl import GRPOTrainer
    generations, eval_states = [], []
    generate = GRPOTrainer._generate_and_score_completions

    def counting(self, *a, **k):
        generations.append(self.state.global_step)
        return generate(self, *a, **k)

    evaluate = trl_arm.evaluate

    def recording(engine, *a, **k):  # the model as our evaluation sees it
        eval_states.append((engine.model.training, torch.is_grad_enabled()))
        return evaluate(engine, *a, **k)

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", counting)
    monkeypatch.setattr(trl_arm, "evaluate", recording)
    trainer = trl_arm.train(_config(tiny_dir, tmp_path))
    # 2 RL steps x num_iterations 2 = 4 optimiser steps, one generation batch per RL step
    assert trainer.state.global_step == 4 and generations == [0, 2]
    assert eval_states == [(False, False)] * 3 and trainer.model.training
    run = read_run(tmp_path)
    assert [(s, r) for s, r, _ in run["evals"]] == [(0, 0), (1, 4), (2, 8)]  # rollouts = step x P x G
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["trl/optimizer_steps"] for x in lines[1:]] == [2, 4]
    for x in lines[1:]:
        assert 0 <= x["reward/mean"] <= 1 and 0 < x["response_length/mean"] <= 3 and x["lr"] == pytest.approx(3e-4)
        assert x["eval/num_problems"] == 6


@pytest.mark.parametrize("bad", [{"replay_ratio": 0.5}, {"ppo_epochs": 4}, {"loss": "ppo_clip"},
                                 {"num_iterations": 0}, {"trainer": "r2vpo"}, {"lr_sheduler": "constant"}])
def test_config_the_arm_cannot_honour_is_refused(tiny_dir, tmp_path, bad):
    with pytest.raises(ConfigError):
        trl_arm.split_config(_config(tiny_dir, tmp_path, **bad))


def test_grpo_args_follow_our_config(tiny_dir, tmp_path):
    config, k = trl_arm.split_config(_config(tiny_dir, tmp_path, num_iterations=4, steps=5, warmup_steps=3,
                                             max_grad_norm=0.5, weight_decay=0.1))
    args = trl_arm.grpo_args(config, k)
    assert (args.per_device_train_batch_size, args.num_generations, args.steps_per_generation,
            args.gradient_accumulation_steps, args.num_iterations, args.max_steps) == (4, 2, 1, 1, 4, 20)
    assert (args.max_completion_length, args.top_k, args.top_p, args.gradient_checkpointing) == (3, 0, 1.0, False)
    assert (args.max_grad_norm, args.weight_decay, args.warmup_steps) == (0.5, 0.1, 3)
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "constant_with_warmup"


def test_launch_dispatches_on_trainer_trl(tmp_path, monkeypatch):
    cfg_path = tmp_path / "config.yaml"
    assert launch.train_command({"trainer": "trl"}, cfg_path) == [
        sys.executable, "-m", "experiments.trl_arm", "--config", str(cfg_path)]
    assert launch.train_command({}, cfg_path)[1:5] == ["-m", "r2vpo_ascend.cli", "train", "--no-plot"]
    seen = []
    monkeypatch.setattr(trl_arm, "train", lambda cfg: seen.append(cfg))
    cfg = {"trainer": "trl", "num_iterations": 2, "num_threads": 1}
    result = launch.train_once(cfg, tmp_path / "run", in_process=True, keep_models=False)
    assert result.status == "done" and seen == [cfg]


def test_stage_b_plan_of_the_trl_arm_and_its_pick(tmp_path):
    runs = se.build_plan("B", ["easy"], ["trl_grpo"], None, 10, tmp_path)
    tune = [r for r in runs if r.kind == "tune_b"]
    assert sorted(r.arm for r in tune) == sorted(f"trl_grpo/lr{lr:g}_i{k}" for lr in (1e-4, 3e-4) for k in (1, 2, 4))
    assert all(r.config["trainer"] == "trl" and "ppo_epochs" not in r.config for r in tune)
    i4, i1 = (next(r for r in tune if r.arm == f"trl_grpo/lr0.0003_i{k}") for k in (4, 1))
    assert i4.cost() > i1.cost()  # 4 optimiser steps per RL step
    for run, accs in ((i4, [0.2, 0.5, 0.6]), (i1, [0.2, 0.3, 0.4])):
        run.run_dir.mkdir(parents=True)
        rows = [{"step": s, "rollouts": 10 * s, "eval/accuracy": a} for s, a in enumerate(accs)]
        (run.run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        (run.run_dir / "done.json").write_text(json.dumps({"rc": 0}))
    assert se.stage_b_picks(tmp_path, "easy", ["trl_grpo"]) == {"trl_grpo": {"lr": 3e-4, "num_iterations": 4}}

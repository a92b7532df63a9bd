"""The run directory never loses or mixes up work; divergence and signals stop a run loudly;
user errors are caught before a model loads (docs/reliability.md)."""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch

from r2vpo_ascend.algos.errors import (CheckpointError, ConfigError, ModelLoadError, OutputDirLockedError,
                                       RewardError, TrainingDivergedError)
from r2vpo_ascend.api import R2VPOConfig, R2VPOTrainer
from r2vpo_ascend.trainer import trainer as trainer_module
from r2vpo_ascend.trainer.run_dir import StopRequested


def config(tmp_path, **kw):
    base = dict(model="tiny", dataset="arithmetic", dataset_size=64, eval_size=8, eval_every=0, steps=2,
                prompts_per_step=4, num_generations=2, max_new_tokens=4, sft_steps=0, lr=1e-3, num_threads=1,
                output_dir=str(tmp_path / "run"), progress_bar="off", log_every=0, save_every=1,
                ppo_epochs=1, replay_ratio=0.0)  # one optimiser step per RL step (the faults are injected per step)
    base.update(kw)
    return R2VPOConfig(**base)


def steps_in(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def checkpoints(run):
    return sorted(p.name for p in (run / "checkpoints").glob("step_*"))


def test_a_fresh_run_moves_the_earlier_run_aside_instead_of_deleting_or_pruning_it(tmp_path):
    run = tmp_path / "run"
    R2VPOTrainer(config=config(tmp_path, steps=3)).train()
    R2VPOTrainer(config=config(tmp_path, steps=1, resume="never")).train()
    earlier = run / "previous_runs" / "1"
    assert steps_in(earlier / "metrics.jsonl") == [1, 2, 3]        # the earlier run's logs are kept
    assert checkpoints(earlier) == ["step_000002", "step_000003"]  # and its checkpoints
    assert steps_in(run / "metrics.jsonl") == [1] and checkpoints(run) == ["step_000001"]
    assert (run / "checkpoints" / "latest").read_text() == "step_000001"


def test_a_second_run_on_a_locked_output_dir_is_refused(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from r2vpo_ascend.trainer.run_dir import OutputDirLock\n"
                               f"lock = OutputDirLock({str(run)!r}).acquire()\n"
                               "print('locked', flush=True)\ntime.sleep(60)\n"],
                              stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirLockedError, match=f"is in use by another run \\(pid {holder.pid} on "):
            R2VPOTrainer(config=config(tmp_path)).train()
    finally:
        holder.kill()
        holder.wait()
    R2VPOTrainer(config=config(tmp_path, steps=1)).train()  # the kernel dropped the dead holder's lock
    R2VPOTrainer(config=config(tmp_path, steps=2)).train()  # and ours was released on exit


def test_sigint_stops_after_the_step_with_a_checkpoint_and_the_run_resumes(tmp_path):
    calls = []

    def reward_fn(prompts, completions, **columns):
        calls.append(1)
        if len(calls) == 2:  # during step 2
            os.kill(os.getpid(), signal.SIGINT)
        return [float(i % 2) for i in range(len(completions))]

    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(StopRequested, match="stopped by SIGINT after RL step 2") as info:
        R2VPOTrainer(config=config(tmp_path, steps=4, save_every=0), reward_fn=reward_fn).train()
    assert info.value.signum == signal.SIGINT and signal.getsignal(signal.SIGINT) is previous
    run = tmp_path / "run"
    assert checkpoints(run) == ["step_000002"] and not (run / "final").exists()
    R2VPOTrainer(config=config(tmp_path, steps=4, save_every=0), reward_fn=reward_fn).train()
    assert steps_in(run / "metrics.jsonl") == [1, 2, 3, 4] and (run / "final").exists()


@pytest.mark.parametrize("max_bad_steps, stops_at", [(0, 2), (1, 3)])
def test_a_non_finite_gradient_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, max_bad_steps, stops_at):
    """A skipped step (within max_bad_steps) leaves the weights as they were: its checkpoint is good."""
    trainer = R2VPOTrainer(config=config(tmp_path, steps=5, max_bad_steps=max_bad_steps))
    real_step, count = trainer.engine.step, []

    def step():
        count.append(1)
        if len(count) >= 2:  # from RL step 2 on the gradient is NaN (the engine skips the update)
            trainer.engine.optimizer.zero_grad(set_to_none=True)
            return float("nan")
        return real_step()
    trainer.engine.step = step
    with pytest.raises(TrainingDivergedError, match=f"diverged at RL step {stops_at} \\(rank 0\\): grad_norm not "
                                                    f"finite .* the last good checkpoint is .*step_00000{stops_at - 1}"):
        trainer.train()
    run = tmp_path / "run"
    assert checkpoints(run) == [f"step_00000{s}" for s in range(1, stops_at)] and not (run / "final").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, stops_at + 1))
    assert [r["nonfinite/skipped_steps"] for r in rows] == [0] + list(range(1, stops_at))


def test_a_nan_reaching_the_dual_update_is_divergence(tmp_path, monkeypatch):
    from r2vpo_ascend.algos.errors import NonFiniteError
    trainer = R2VPOTrainer(config=config(tmp_path, steps=2))

    def update(*args, **kwargs):
        raise NonFiniteError("ratio_var (V̂) passed to the dual update is not finite: nan")
    monkeypatch.setattr(trainer.updater, "update", update)
    with pytest.raises(TrainingDivergedError, match="RL step 1 .* inside the update: ratio_var"):
        trainer.train()


def test_a_torn_metrics_line_does_not_block_resume(tmp_path):
    run = tmp_path / "run"
    R2VPOTrainer(config=config(tmp_path, steps=2)).train()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "reward/me')  # killed mid-write
    R2VPOTrainer(config=config(tmp_path, steps=3)).train()
    assert steps_in(run / "metrics.jsonl") == [1, 2, 3]


def test_resume_refuses_a_changed_loss_and_a_checkpoint_past_steps(tmp_path):
    R2VPOTrainer(config=config(tmp_path, steps=2)).train()
    with pytest.raises(ConfigError, match=r"may not change on resume: loss \('r2vpo' -> 'ppo_clip'\), lr"):
        R2VPOTrainer(config=config(tmp_path, steps=3, loss="ppo_clip", lr=0.5)).train()
    with pytest.raises(ConfigError, match="at RL step 2, past steps=1"):
        R2VPOTrainer(config=config(tmp_path, steps=1)).train()


def test_a_corrupt_newest_checkpoint_resumes_from_the_previous_one(tmp_path, capsys):
    run = tmp_path / "run"
    R2VPOTrainer(config=config(tmp_path, steps=2)).train()
    state = run / "checkpoints" / "step_000002" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    R2VPOTrainer(config=config(tmp_path, steps=2)).train()
    out = capsys.readouterr()
    assert "skipping checkpoint step_000002" in out.err and "step_000001 at step 1" in out.out
    assert steps_in(run / "metrics.jsonl") == [1, 2]


# ---- caught before any model loads ---------------------------------------------------------
@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the config was checked")
    monkeypatch.setattr(trainer_module, "load_model_and_tokenizer", refuse)


def test_an_unknown_loss_is_refused_at_construction(tmp_path, no_model_load):
    with pytest.raises(ConfigError, match="`loss`: unknown policy loss 'foo'; registered: .*r2vpo"):
        R2VPOTrainer(config=config(tmp_path, loss="foo", sft_steps=5))


def test_a_python_reward_is_found_in_the_working_directory_or_refused(tmp_path, monkeypatch, no_model_load):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    with pytest.raises(RewardError, match="cannot import module 'my_reward_mod'"):
        R2VPOTrainer(config=config(tmp_path, reward="python:my_reward_mod:score"))
    (tmp_path / "my_reward_mod.py").write_text("def score(prompts, completions, **kw):\n"
                                               "    return [0.0] * len(completions)\n")
    with pytest.raises(RewardError, match="has no attribute 'nope'"):
        R2VPOTrainer(config=config(tmp_path, reward="python:my_reward_mod:nope"))
    from r2vpo_ascend.rewards import get_reward_fn
    assert get_reward_fn("python:my_reward_mod:score")(None, ["a", "b"]) == [0.0, 0.0]


def _safetensors(path, nbytes):
    header = json.dumps({"w": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * nbytes)


def test_a_model_dir_without_weights_or_with_a_truncated_file_is_refused(tmp_path, no_model_load):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no weights"):
        R2VPOTrainer(config=config(tmp_path, model=str(model)))
    _safetensors(model / "model.safetensors", 4096)
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ModelLoadError, match="model.safetensors is truncated or corrupt"):
        R2VPOTrainer(config=config(tmp_path, model=str(model)))


# ---- data --------------------------------------------------------------------------------
def test_sft_cuts_prompts_to_max_prompt_length(monkeypatch):
    from r2vpo_ascend.models.tiny import build_tiny_model
    from r2vpo_ascend.models.tokenizer import build_char_tokenizer
    from r2vpo_ascend.trainer import sft
    tok = build_char_tokenizer()
    seen = []
    real = sft.collate
    monkeypatch.setattr(sft, "collate", lambda prompts, completions, pad: seen.append(
        (max(map(len, prompts)), max(map(len, completions)))) or real(prompts, completions, pad))
    records = [{"prompt": "1+1=" * 20000, "answer": "2" * 500}, {"prompt": "3+4=", "answer": "7"}]
    sft.sft_warm_start(build_tiny_model(tok, seed=0), tok, records, steps=1, lr=1e-3, batch_size=2, seed=0,
                       device="cpu", max_prompt_length=16, max_answer_length=8)
    assert seen == [(16, 9)]  # 8 answer tokens + EOS


def test_a_file_dataset_without_eval_dataset_gets_a_disjoint_seeded_held_out_split(tmp_path):
    from r2vpo_ascend.models.tokenizer import build_char_tokenizer
    from r2vpo_ascend.trainer.setup import config_records as prompt_records
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(50)))
    cfg = config(tmp_path, dataset=str(data), eval_size=10, eval_every=1, reward="arithmetic")
    tok = build_char_tokenizer()
    train, held = prompt_records(cfg, tok, split="train"), prompt_records(cfg, tok, split="eval")
    assert len(train) == 40 and len(held) == 10
    assert not {r["problem"] for r in train} & {r["problem"] for r in held}
    assert [r["problem"] for r in held] != [f"{i}+1=" for i in range(10)]  # not the first rows
    assert held == prompt_records(cfg, tok, split="eval")  # seeded: the same split every time
    other = prompt_records(cfg.replace(data_seed=1), tok, split="eval")
    assert {r["problem"] for r in other} != {r["problem"] for r in held}
    with pytest.raises(Exception, match="would leave none to train on"):
        prompt_records(cfg.replace(eval_size=50), tok, split="train")


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_two_process_run_takes_the_lock_on_rank_0_only(tmp_path):
    """Rank 0 locks (rank 1 does not, or the job would lock itself out); a second job is refused."""
    import _mp_helpers as helpers
    run = tmp_path / "run"
    args = ["model=tiny", "dataset=arithmetic", "dataset_size=64", "eval_every=0", "prompts_per_step=4",
            "num_generations=2", "max_new_tokens=4", "sft_steps=0", "steps=1", "num_threads=1", "progress_bar=off",
            f"output_dir={run}"]
    ok = helpers.torchrun(args, timeout=200)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert checkpoints(run) == ["step_000001"]
    from r2vpo_ascend.trainer.run_dir import OutputDirLock
    with OutputDirLock(run):
        refused = helpers.torchrun(args, timeout=200)
    assert refused.returncode != 0
    assert f"output_dir {run} is in use by another run (pid {os.getpid()}" in refused.stderr

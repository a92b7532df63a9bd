"""Helpers for the multi-process tests (test_multiprocess.py, test_deepspeed.py, test_device.py,
test_losses_distributed.py) and for reading a run's metrics (also test_resume.py).

Importable by spawned workers and by `torchrun` subprocesses (tests/ on PYTHONPATH), so the
reward functions can be named as `reward=python:_mp_helpers:<name>`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from r2vpo_ascend.rollout.base import RolloutEngine

ROOT = Path(__file__).resolve().parent.parent

# ---- rewards for `reward=python:_mp_helpers:...` ---------------------------------------------


def text_reward(prompts, completions, **columns) -> list[float]:
    """Varied, deterministic rewards (a function of the completion text only), so that groups have
    non-zero advantages and the policy loss a real gradient, whatever the model learns."""
    return [(sum(map(ord, c)) % 5) / 4.0 for c in completions]


_calls = {"n": 0}


def reward_or_die(prompts, completions, **columns) -> list[float]:
    """`text_reward`, except on rank 1 at the RL step R2VPO_TEST_FAIL_AT_STEP (one call per step:
    run with eval_every=0): there it dies (`os._exit(1)`) or, with R2VPO_TEST_FAIL_MODE=hang,
    stops answering. It first waits for the previous step's checkpoint (R2VPO_TEST_OUTPUT), so the
    failure always lands after it, and notes the time it failed in `<output>/failed_at`."""
    _calls["n"] += 1
    fail_at = int(os.environ.get("R2VPO_TEST_FAIL_AT_STEP", "0"))
    if fail_at and _calls["n"] == fail_at and os.environ.get("RANK") == "1":
        out = Path(os.environ["R2VPO_TEST_OUTPUT"])
        marker = out / "checkpoints" / f"step_{fail_at - 1:06d}" / "COMPLETE"
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # rank 0 finishes pointing `latest` at it
        (out / "failed_at").write_text(str(time.time()))
        mode = os.environ.get("R2VPO_TEST_FAIL_MODE", "exit")
        print(f"[test] rank 1 {'hangs' if mode == 'hang' else 'exits'} at step {fail_at}", flush=True)
        if mode == "hang":
            time.sleep(3600)
        os._exit(1)
    return text_reward(prompts, completions, **columns)


# ---- a rollout engine whose responses depend on the prompt only ----------------------------


class ScriptedRolloutEngine(RolloutEngine):
    """Deterministic responses (a function of the prompt tokens), so a one-process run and a
    multi-process run see exactly the same global batches: their updates can be compared."""

    def __init__(self, tokenizer, max_new_tokens: int):
        from r2vpo_ascend.rollout import Generation
        self._generation = Generation
        self.tokens = [tokenizer.convert_tokens_to_ids(c) for c in "0123456789+-="]
        self.eos = tokenizer.eos_token_id
        self.max_new_tokens = max_new_tokens

    def generate(self, prompts, sampling, n=1):
        out = []
        for prompt in prompts:
            rng = random.Random(hashlib.sha256(repr(list(prompt)).encode()).hexdigest())
            group = []
            for i in range(n):  # the first token tells the responses of a group apart
                length = rng.randint(1, self.max_new_tokens)
                tokens = [self.tokens[i % len(self.tokens)]] + [rng.choice(self.tokens) for _ in range(length - 1)]
                finished = length < self.max_new_tokens
                group.append(self._generation(list(prompt), tokens + [self.eos] if finished else tokens, finished))
            out.append(group)
        return out


# ---- process set-up --------------------------------------------------------------------------


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world_size: int, port: int, timeout_s: float = 120):
    """Env-var set-up as torchrun does it, then `device.init_distributed` (gloo on the CPU)."""
    import device
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return device.init_distributed(device.get_backend("cpu"), timeout_s=timeout_s)


def torchrun(run_args: list[str], env: dict | None = None, timeout: float = 150,
             nproc: int = 2) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node <nproc> --standalone -m r2vpo_ascend.cli
    train --no-plot <run_args>` on the CPU, with tests/ on PYTHONPATH (for `reward=python:_mp_helpers:...`)
    and `env` on top of the environment; output captured as text, not checked."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
           "-m", "r2vpo_ascend.cli", "train", "--no-plot", *run_args]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
                "R2VPO_DEVICE": "cpu", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def metrics_by_step(out: Path, numeric_only: bool = False) -> dict[int, dict]:
    """`<out>/metrics.jsonl` as {step: row}, without the `perf/*` timings (which differ between
    runs) and, with `numeric_only`, without non-numeric values."""
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: {k: v for k, v in r.items()
                        if not k.startswith("perf/") and (not numeric_only or isinstance(v, (int, float)))}
            for r in rows}


def rollout_digest(r) -> tuple:
    """What identifies a rollout across processes (exact), for buffer/replay comparisons."""
    return (r.group_id, tuple(r.prompt_ids), tuple(r.response_ids), r.version)


# ---- a fixed global batch for the update-phase comparisons --------------------------------------


def fixed_global_batch(num: int = 14, current_version: int = 3):
    """Rollouts with varying prompt/response lengths (one empty response), fresh and stale
    (replayed) versions, non-trivial advantages and behaviour log-probs."""
    from r2vpo_ascend.replay import Rollout
    g = random.Random(1234)
    batch = []
    for i in range(num):
        prompt = [g.randrange(5, 30) for _ in range(g.randrange(2, 7))]
        response = [] if i == 5 else [g.randrange(5, 30) for _ in range(g.randrange(1, 8))]
        version = current_version - g.choice([0, 0, 0, 1, 2])
        old = torch.tensor([-3.6 + 0.4 * g.random() for _ in response], dtype=torch.float32)
        batch.append(Rollout(prompt, response, old, reward=0.0, advantage=g.uniform(-1.5, 1.5), version=version,
                             group_id=i // 4))
    return batch


def clone_rollouts(rollouts):
    from dataclasses import replace
    return [replace(r, old_log_probs=None if r.old_log_probs is None else r.old_log_probs.clone(),
                    extras=dict(r.extras)) for r in rollouts]


UPDATE_METRICS = ("loss/policy", "r2vpo/lambda", "r2vpo/ratio_var", "r2vpo/ratio_mean", "r2vpo/ratio_max",
                  "r2vpo/eff_adv_flip_frac", "entropy/mean", "kl/ref", "grad_norm")


def run_updates(engine, config, batch, positions, versions=(3, 4)):
    """`PolicyUpdater.update` once per version on (this rank's share of) `batch`; returns the
    metrics of each update, λ after each, and the final parameters (float64, CPU)."""
    from r2vpo_ascend.algos import DualController
    from r2vpo_ascend.trainer.policy_update import PolicyUpdater
    dual = DualController(config.init_lambda, config.ratio_var_target, config.dual_lr, mode=config.dual_update)
    updater = PolicyUpdater(engine, config, dual, pad_id=0)
    metrics = []
    for version in versions:
        m = updater.update(clone_rollouts(batch), current_version=version, positions=positions)
        metrics.append({k: float(m[k]) for k in UPDATE_METRICS if k in m} | {"lambda_after": dual.lam})
    return metrics


def gathered_parameters(engine) -> dict[str, torch.Tensor]:
    """Full parameters of the engine's model on every rank (ZeRO-3 gathers them)."""
    params = list(engine.model.parameters())
    if getattr(engine, "zero_stage", 0) == 3:
        import deepspeed
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().double().cpu().clone() for k, v in engine.model.named_parameters()}
    return {k: v.detach().double().cpu().clone() for k, v in engine.model.named_parameters()}


def write_json(path, obj) -> None:
    Path(path).write_text(json.dumps(obj))


# ---- the one-process vs two-process comparison (test_multiprocess.py) ---------------------------

UPDATE_SHARES = {0: list(range(0, 8)), 1: list(range(8, 14))}  # contiguous and uneven: 8 and 6 samples


def update_config(output_dir: str):
    from r2vpo_ascend.trainer.config import R2VPOConfig
    # micro-batches smaller than a rank's share, two optimiser steps per update, clipping that
    # engages (so a mean instead of a sum over ranks would show), KL and entropy terms on.
    # Two passes (ppo_epochs) and the winsorised dual V̂: both must all-reduce like the rest.
    return R2VPOConfig(model="tiny", updates_per_step=2, ppo_epochs=2, dual_variance="winsorized",
                       micro_batch_size=2, lr=1e-2, max_grad_norm=0.05,
                       kl_coef=0.05, entropy_coef=0.01, init_lambda=1.0, ratio_var_target=0.01, dual_lr=0.5,
                       steps=2, output_dir=output_dir)


def trainer_config(output_dir: str):
    from r2vpo_ascend.trainer.config import R2VPOConfig
    # replay_ratio 0.4 of 16 fresh → 11 replayed: an odd global sample, shares of 6 and 5.
    return R2VPOConfig(model="tiny", dataset="arithmetic", dataset_size=32, eval_every=0, steps=3,
                       prompts_per_step=4, num_generations=4, max_new_tokens=5, sft_steps=0, lr=1e-3,
                       replay_ratio=0.4, max_staleness=2, updates_per_step=2, micro_batch_size=3, num_threads=1,
                       progress_bar="off", log_every=0, output_dir=output_dir)


def equivalence_worker(index: int, port: int, out_dir: str) -> None:
    """Processes 0 and 1 form a 2-rank gloo group; process 2 is the single-process reference.
    Each runs the same three cases and saves what it saw to `<out_dir>/proc<index>.pt`."""
    torch.set_num_threads(1)
    import device
    multi = index < 2
    if multi:
        join_group(index, 2, port)
    rank = index if multi else None
    out = Path(out_dir)
    result = {"update": _update_case(rank, out),
              "advantages": _advantage_case(rank, out),
              "trainer": _trainer_case(rank, out)}
    torch.save(result, out / f"proc{index}.pt")
    if multi:
        device.barrier()
        device.destroy_distributed()


def _update_case(rank, out: Path) -> dict:
    import device
    from r2vpo_ascend.models.tiny import build_tiny_model
    from r2vpo_ascend.models.tokenizer import build_char_tokenizer
    from r2vpo_ascend.engines import NativeEngine
    config = update_config(str(out / "unused"))
    model = build_tiny_model(build_char_tokenizer(), seed=0)
    dist = device.dist_info() if rank is not None else None
    engine = NativeEngine(model, config, device.get_backend("cpu"), torch.float64, dist)
    batch = fixed_global_batch()
    positions = UPDATE_SHARES[rank] if rank is not None else list(range(len(batch)))
    metrics = run_updates(engine, config, [batch[p] for p in positions], positions)
    return {"metrics": metrics, "params": gathered_parameters(engine)}


def _make_trainer(rank, output_dir: Path, trainer_cls=None):
    import device
    from r2vpo_ascend.api import R2VPOTrainer
    from r2vpo_ascend.models.tiny import build_tiny_model
    from r2vpo_ascend.models.tokenizer import build_char_tokenizer
    config = trainer_config(str(output_dir))
    tok = build_char_tokenizer()
    return (trainer_cls or R2VPOTrainer)(
        model=build_tiny_model(tok, seed=0), tokenizer=tok, reward_fn=text_reward, config=config,
        backend=device.get_backend("cpu"), rollout_engine=ScriptedRolloutEngine(tok, config.max_new_tokens))


def _advantage_case(rank, out: Path) -> list:
    """`assign_advantages` on this rank's fresh rollouts (rewards a function of the global prompt
    and response index; prompt 1's group all equal) → (group_id, index in group, advantage)."""
    from r2vpo_ascend.replay import Rollout
    trainer = _make_trainer(rank, out / ("adv_multi" if rank is not None else "adv_single"))
    G, world, r = trainer.config.num_generations, trainer.dist.world_size, trainer.dist.rank
    fresh = []
    for i in range(trainer.config.prompts_per_step // world * G):
        prompt = r + (i // G) * world  # the trainer deals whole prompts round-robin
        reward = 1.0 if prompt == 1 else float((prompt * 7 + (i % G) * 3) % 5)
        fresh.append(Rollout([5], [6], None, reward=reward, advantage=0.0, version=0, group_id=prompt))
    trainer.assign_advantages(fresh)
    return [(x.group_id, i % G, x.reward, x.advantage) for i, x in enumerate(fresh)]


def _trainer_case(rank, out: Path) -> dict:
    from r2vpo_ascend.api import R2VPOTrainer

    class Recording(R2VPOTrainer):
        def rollout(self, records):
            fresh = super().rollout(records)
            self.fresh_log.append([x.group_id for x in fresh])
            return fresh

        def replayed_share(self, num_fresh):
            share = super().replayed_share(num_fresh)
            self.share_log.append([rollout_digest(x) for x in share])
            return share

    trainer = _make_trainer(rank, out / ("run_multi" if rank is not None else "run_single"), Recording)
    trainer.fresh_log, trainer.share_log = [], []
    trainer.train()
    buffer = [(*rollout_digest(x), x.reward, x.advantage, x.old_log_probs.tolist()) for x in trainer.buffer]
    return {"buffer": buffer, "shares": trainer.share_log, "fresh_groups": trainer.fresh_log,
            "lambda": trainer.dual.lam, "params": gathered_parameters(trainer.engine),
            "output_dir": str(trainer.output_dir)}


# ---- DeepSpeed ZeRO vs the native engine (test_deepspeed.py) ----------------------------------


def zero_configs(out_dir: Path) -> dict[int, str]:
    """ZeRO-1/2/3 JSON files derived from the shipped configs/deepspeed/zero{2,3}.json; ZeRO-3
    with a parameter persistence threshold of 0, so that even the tiny model is partitioned."""
    root = ROOT / "configs" / "deepspeed"
    paths = {}
    for stage in (1, 2, 3):
        config = json.loads((root / ("zero3.json" if stage == 3 else "zero2.json")).read_text())
        config["zero_optimization"]["stage"] = stage
        if stage == 3:
            config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        paths[stage] = str(out_dir / f"zero{stage}.json")
        write_json(paths[stage], config)
    return paths


def deepspeed_worker(rank: int, port: int, out_dir: str) -> None:
    """The update-phase comparison of `_update_case` with the native engine and with ZeRO-1/2/3,
    float32, lr 1e-3; saves {engine: {"metrics", "params"}} to `<out_dir>/ds<rank>.pt`."""
    torch.set_num_threads(1)
    import device
    from r2vpo_ascend.models.tiny import build_tiny_model
    from r2vpo_ascend.models.tokenizer import build_char_tokenizer
    from r2vpo_ascend.engines.deepspeed import DeepSpeedEngine
    from r2vpo_ascend.engines import NativeEngine
    join_group(rank, 2, port)
    out = Path(out_dir)
    paths = zero_configs(out)
    batch = fixed_global_batch()
    positions = UPDATE_SHARES[rank]
    results = {}
    for name in ("native", 1, 2, 3):
        config = update_config(str(out / f"run_{name}")).replace(
            lr=1e-3, engine="native" if name == "native" else "deepspeed",
            deepspeed_config=None if name == "native" else paths[name])
        model = build_tiny_model(build_char_tokenizer(), seed=0)
        cls = NativeEngine if name == "native" else DeepSpeedEngine
        engine = cls(model, config, device.get_backend("cpu"), torch.float32, device.dist_info())
        metrics = run_updates(engine, config, [batch[p] for p in positions], positions)
        results[name] = {"metrics": metrics, "params": gathered_parameters(engine)}
    torch.save(results, out / f"ds{rank}.pt")
    device.barrier()
    device.destroy_distributed()

"""Where our trainer's RL step spends its time, per phase (`python benchmarks/bench_vs_trl.py
--profile PxGxL`): the callables that implement each phase are wrapped with wall and CPU timers."""

from __future__ import annotations

import tempfile
import time

from benchmarks._vs_trl_setup import LR, _model, _records


# Phases of our step, timed by wrapping the callables that implement them (nested phases are
# subtracted from their parent, so the rows add up to the step).
_PHASES = (
    ("generate: model forward (decode steps)", "rollout: HF generate"),
    ("rollout: HF generate", None),
    ("rewards: decode + reward fn", None),
    ("update: policy forward (decoder + log-prob head)", None),
    ("update: loss + metrics", None),
    ("update: backward", None),
    ("update: grad clip + AdamW step", None),
    ("update: replay diagnostics", None),
)


def profile_ours(loss: str, prompts: int, gens: int, length: int, warmup: int, steps: int, threads: int, seed: int,
                 cprofile_top: int) -> dict:
    """Where our step's time goes: wall and CPU seconds per phase (and, with cprofile_top > 0,
    a cProfile listing of a second run of the same steps)."""
    import cProfile
    import io
    import pstats

    import torch

    import r2vpo_ascend.trainer.policy_update as policy_update
    from r2vpo_ascend import R2VPOConfig, R2VPOTrainer
    from r2vpo_ascend.trainer.loggers import MetricsLogger

    torch.set_num_threads(threads)
    model, tokenizer = _model(seed)
    model.generation_config.min_new_tokens = length
    config = R2VPOConfig(loss=loss, prompts_per_step=prompts, num_generations=gens, max_new_tokens=length,
                         micro_batch_size=prompts * gens, lr=LR, sft_steps=0, eval_every=0, save_every=0, log_every=0,
                         progress_bar="off", resume="never", num_threads=threads, seed=seed,
                         steps=warmup + 2 * steps + 1, output_dir=tempfile.mkdtemp(prefix="bench_prof_"))
    trainer = R2VPOTrainer(model=model, tokenizer=tokenizer, train_dataset=_records(seed), config=config)
    trainer.logger = MetricsLogger(trainer.output_dir, config=config.to_dict(), progress_bar="off")
    for step in range(1, warmup + 1):
        trainer._run_step(step)

    totals = {name: [0.0, 0.0] for name, _ in _PHASES}
    parents = dict(_PHASES)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dw, dc = time.perf_counter() - wall, time.process_time() - cpu
                totals[name][0] += dw
                totals[name][1] += dc
                if parents[name]:
                    totals[parents[name]][0] -= dw
                    totals[parents[name]][1] -= dc
        return wrapper

    engine = trainer.engine
    model.forward = timed("generate: model forward (decode steps)", model.forward)
    trainer.rollout_engine.generate = timed("rollout: HF generate", trainer.rollout_engine.generate)
    trainer.score = timed("rewards: decode + reward fn", trainer.score)
    engine.log_probs = timed("update: policy forward (decoder + log-prob head)", engine.log_probs)
    engine.backward = timed("update: backward", engine.backward)
    engine.step = timed("update: grad clip + AdamW step", engine.step)
    saved = policy_update.compute_policy_loss, policy_update.replay_metrics
    policy_update.compute_policy_loss = timed("update: loss + metrics", saved[0])
    policy_update.replay_metrics = timed("update: replay diagnostics", saved[1])
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(warmup + 1, warmup + steps + 1):
        trainer._run_step(step)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    policy_update.compute_policy_loss, policy_update.replay_metrics = saved
    phases = [{"phase": name, "wall_s": w / steps, "cpu_s": c / steps} for name, (w, c) in totals.items()]
    phases.append({"phase": "rest of the step (tokenise, advantages, replay buffer, metrics, log line)",
                   "wall_s": (wall - sum(w for w, _ in totals.values())) / steps,
                   "cpu_s": (cpu - sum(c for _, c in totals.values())) / steps})
    result = {"setting": f"{prompts}x{gens}x{length}", "loss": loss, "threads": threads, "steps": steps,
              "step_wall_s": wall / steps, "step_cpu_s": cpu / steps, "phases": phases}
    if cprofile_top > 0:
        profiler = cProfile.Profile()
        profiler.enable()
        for step in range(warmup + steps + 1, warmup + 2 * steps + 1):
            trainer._run_step(step)
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(cprofile_top)
        stats.sort_stats("tottime").print_stats(cprofile_top)
        result["cprofile"] = text.getvalue()
    trainer.logger.close()
    return result


def phase_table(result: dict) -> str:
    """The per-phase result of :func:`profile_ours` as a markdown table."""
    out = [f"our step at {result['setting']}, loss={result['loss']}, {result['threads']} thread(s), "
           f"{result['steps']} steps: {result['step_wall_s']:.4f} s wall, {result['step_cpu_s']:.4f} s CPU per step",
           "| phase | wall s/step | CPU s/step | share of CPU |", "|---|---|---|---|"]
    for p in result["phases"]:
        out.append(f"| {p['phase']} | {p['wall_s']:.4f} | {p['cpu_s']:.4f} | {p['cpu_s'] / result['step_cpu_s']:.1%} |")
    return "\n".join(out)

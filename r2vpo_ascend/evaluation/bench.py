"""`r2vpo eval`: a model on math benchmarks, scored by the training verifier.

    r2vpo eval --model <dir|tiny|pangu-tiny> --bench gsm8k,math500,aime24,aime25 --n 16 --out results.json

Per benchmark: avg@n (accuracy; greedy decoding when n = 1) and pass@n, with the reward the
trainer uses (`math_verify` for the math sets, the exact-integer `arithmetic` reward for the
built-in `arithmetic` set). Generation goes through vLLM when it is installed and the vLLM
rollout engine can be built, otherwise through transformers' `generate`; the engine that
actually ran is reported. Results: a table on screen and JSON on disk with every completion.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import device
from r2vpo_ascend.algos.errors import ConfigError
from r2vpo_ascend.data import ArithmeticSplits, prompt_records
from r2vpo_ascend.evaluation.scoring import generate_and_score, summarize
from r2vpo_ascend.models.dtypes import resolve_dtype
from r2vpo_ascend.models.loading import load_model_and_tokenizer
from r2vpo_ascend.rewards import resolve_reward_fn
from r2vpo_ascend.rollout import HFGenerateEngine, SamplingConfig

ENGINES = ("auto", "vllm", "hf")


@dataclass
class EvalSettings:
    model: str
    benches: list[str]
    n: int = 1
    limit: int | None = None
    max_new_tokens: int = 1024
    temperature: float = 0.6          # used when n > 1 (n = 1 is greedy)
    top_p: float = 0.95
    max_prompt_length: int = 4096
    engine: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    batch_size: int = 64              # prompts x n per generate call (HF engine)
    tokenizer: str | None = None
    trust_remote_code: bool = False
    prompt_template: str | None = None
    system_prompt: str | None = None
    verify_timeout_s: float = 5.0
    out: str | None = None
    vllm_kwargs: dict | None = None   # extra VLLMEngine arguments (e.g. gpu_memory_utilization)

    def validate(self) -> None:
        if self.n < 1:
            raise ConfigError(f"--n must be >= 1, got {self.n}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if not self.benches:
            raise ConfigError("--bench needs at least one benchmark")


# ---- pieces ---------------------------------------------------------------------------------
def bench_records(bench: str, tokenizer, settings: EvalSettings) -> list[dict]:
    """Prompt records for `bench`: a built-in benchmark, `arithmetic`, or a data file/directory."""
    # `arithmetic`: the held-out split of a default training run, so scores compare with eval/accuracy
    splits = ArithmeticSplits(eval_size=settings.limit or ArithmeticSplits.eval_size, seed=settings.seed)
    return prompt_records(bench, tokenizer, split="eval", template=settings.prompt_template,
                          system_prompt=settings.system_prompt, arithmetic=splits, limit=settings.limit)


def make_engine(kind: str, model, tokenizer, *, batch_size: int, seed: int = 0,
                max_model_len: int | None = None, vllm_kwargs: dict | None = None) -> tuple[Any, str, str]:
    """(engine, name, note): vLLM when asked or (`auto`) available, else HF `generate`.

    The vLLM engine (r2vpo_ascend/rollout/vllm.py) serves the loaded model object itself, so
    whatever the loader did (e.g. the openPangu → Llama mapping) is what vLLM runs.
    """
    note = ""
    if kind in ("auto", "vllm"):
        if importlib.util.find_spec("vllm") is None:
            if kind == "vllm":
                raise ConfigError("--engine vllm: vLLM is not installed; install vLLM (plus vllm-ascend on Ascend, "
                                  "see docs/deployment.md) or use --engine hf")
            note = "vLLM is not installed"
        else:
            from r2vpo_ascend.rollout.vllm import VLLMEngine
            try:
                engine = VLLMEngine(model, tokenizer, seed=seed, max_model_len=max_model_len, **(vllm_kwargs or {}))
                return engine, "vllm", ""
            except (ImportError, RuntimeError) as e:
                # `auto` falls back to HF only where vLLM cannot run here (a missing platform
                # plugin, no supported device); asked-for vLLM, or explicit --vllm-arg settings,
                # fail with the cause, as does any other error (a bad argument, a bug).
                if kind == "vllm" or vllm_kwargs:
                    raise
                note = f"vLLM engine unavailable ({type(e).__name__}: {e})"
    return HFGenerateEngine(model, tokenizer, batch_size=batch_size), "hf", note


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a run's numbers depend on (None: not installed)."""
    out = {}
    for dist in ("r2vpo-ascend", "torch", "transformers", "math-verify", "deepspeed", "vllm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ---- the run --------------------------------------------------------------------------------
def run_eval(settings: EvalSettings) -> dict:
    """Evaluate `settings.model` on every benchmark; return the results (what the JSON holds)."""
    settings.validate()
    backend = device.current()
    device.init_distributed(backend)
    backend.manual_seed(settings.seed)
    dtype = resolve_dtype(settings.dtype, backend)
    model, tokenizer = load_model_and_tokenizer(settings.model, tokenizer=settings.tokenizer,
                                                trust_remote_code=settings.trust_remote_code,
                                                dtype=dtype, seed=settings.seed)
    model = model.to(device=backend.device, dtype=dtype).eval()
    patched = device.apply_fused_patches(backend)  # fused layers on Ascend; [] elsewhere
    max_positions = getattr(model.config, "max_position_embeddings", None)
    max_prompt = settings.max_prompt_length
    if max_positions:
        max_prompt = max(1, min(max_prompt, max_positions - settings.max_new_tokens))
    engine, engine_name, engine_note = make_engine(settings.engine, model, tokenizer, batch_size=settings.batch_size,
                                                   seed=settings.seed,
                                                   max_model_len=max_prompt + settings.max_new_tokens,
                                                   vllm_kwargs=settings.vllm_kwargs)
    sampling = SamplingConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                              top_p=settings.top_p, greedy=(settings.n == 1))
    results = {
        "model": settings.model, "engine": engine_name, "engine_note": engine_note, "n": settings.n,
        "greedy": settings.n == 1,
        "sampling": {"max_new_tokens": settings.max_new_tokens, "max_prompt_length": max_prompt,
                     "temperature": None if settings.n == 1 else settings.temperature,
                     "top_p": None if settings.n == 1 else settings.top_p},
        "backend": backend.name, "dtype": str(dtype).replace("torch.", ""), "fused_patches": patched,
        "seed": settings.seed, "limit": settings.limit, "created": datetime.now(timezone.utc).isoformat(),
        "python": platform.python_version(), "versions": package_versions(), "benchmarks": {},
    }
    verifiers: dict[str, Any] = {}  # one per kind, shared by the benchmarks (math_verify's workers start once)
    try:
        for bench in settings.benches:
            records = bench_records(bench, tokenizer, settings)
            kind = "arithmetic" if bench == "arithmetic" else "math_verify"
            if kind not in verifiers:
                verifiers[kind] = resolve_reward_fn("auto", dataset=bench, verify_timeout_s=settings.verify_timeout_s)
            started = time.perf_counter()
            scored = generate_and_score(engine, tokenizer, records, verifiers[kind], sampling=sampling, n=settings.n,
                                        max_prompt_length=max_prompt)
            results["benchmarks"][bench] = _bench_result(scored, kind, time.perf_counter() - started)
    finally:
        for closable in (*verifiers.values(), engine):
            close = getattr(closable, "close", None)
            if close is not None:
                close()
    return results


def _bench_result(scored, verifier: str, seconds: float) -> dict:
    return {
        "verifier": verifier,
        "metrics": summarize(scored),
        "seconds": seconds,
        "records": [{"id": p.record.get("id", i), "problem": p.record.get("problem"),
                     "answer": p.record.get("answer"), "prompt": p.record["prompt"],
                     "completions": p.completions, "rewards": p.rewards, "correct": p.correct,
                     "response_lengths": p.response_lengths, "finished": p.finished}
                    for i, p in enumerate(scored)],
    }


def format_table(results: dict) -> str:
    """The results as a fixed-width table, one row per benchmark."""
    n = results["n"]
    sampling = results["sampling"]
    mode = "greedy" if results["greedy"] else f"T={sampling['temperature']}, top_p={sampling['top_p']}"
    engine = results["engine"] + (f" ({results['engine_note']})" if results.get("engine_note") else "")
    head = (f"model: {results['model']} | engine: {engine} | backend: {results['backend']} | n={n} ({mode}) | "
            f"max_new_tokens={results['sampling']['max_new_tokens']}")
    cols = ["bench", "verifier", "problems", f"avg@{n}", f"pass@{n}", "reward", "resp_len", "trunc", "time_s"]
    rows = [cols]
    for bench, b in results["benchmarks"].items():
        m = b["metrics"]
        rows.append([bench, b["verifier"], str(m["num_problems"]), f"{m[f'avg@{n}']:.4f}", f"{m[f'pass@{n}']:.4f}",
                     f"{m['reward_mean']:.4f}", f"{m['response_length']:.1f}", f"{m['truncated_frac']:.2f}",
                     f"{b['seconds']:.1f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    return "\n".join([head, lines[0], "-" * len(lines[0]), *lines[1:]])


def write_results(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return path


__all__ = ["ENGINES", "EvalSettings", "bench_records", "format_table", "make_engine", "package_versions", "run_eval",
           "write_results"]

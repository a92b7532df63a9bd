"""Rollout with vLLM, colocated with the trainer: fast batched sampling, weights pushed after each update.

The same code runs wherever vLLM runs: on GPUs, on Ascend through the vllm-ascend plugin (vLLM
picks its platform itself), and on the CPU build of vLLM (tests; scripts/setup_vllm_cpu.sh).

Weight sync uses vLLM's documented reload API (docs.vllm.ai, "Layerwise (Re)loading",
"Mid Level `reload_weights` API"):

    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": ...})   # in memory
    llm.collective_rpc("reload_weights", kwargs={"weights_path": dir})       # from disk

`Worker.reload_weights` feeds the tensors through the model's own `load_weights`, so Hugging
Face (checkpoint) names such as `model.layers.0.self_attn.q_proj.weight` are mapped, fused
(qkv, gate_up) and sharded by vLLM itself. The in-memory form needs the worker in this process
(the worker gets the iterator object itself): the engine asks vLLM to run in-process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`; TRL's and verl's colocated modes also keep vLLM in the
trainer's process, through `distributed_executor_backend="external_launcher"`, which this engine
accepts in `llm_kwargs` for multi-rank trainers). When the worker lives in another process
(multiprocessing left on, or tensor parallelism with the `mp` executor), weights go through a
safetensors file in the engine's work directory instead: collective_rpc is meant for control
messages, not gigabytes of tensors.

A model object is served by saving only its config and tokenizer, starting vLLM with
`load_format="dummy"` (no weights read; verl and vLLM's RLHF examples do the same) and pushing
the weights from memory right away.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch

from r2vpo_ascend.rollout.base import Generation, RolloutError, SamplingConfig, find_eos_ids

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
_INSTALL_HINT = (
    "the vLLM rollout engine needs vLLM: on NVIDIA GPUs `pip install 'r2vpo-ascend[cuda]'`; "  # hw-ok
    "on Ascend, vllm together with the matching vllm-ascend release (docs/vllm.md); "
    "on CPU, for testing, scripts/setup_vllm_cpu.sh builds a separate environment (.venv-vllm)"
)


def _import_vllm():
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.platforms import current_platform
    except ImportError as e:
        raise ImportError(f"{_INSTALL_HINT} ({e})") from e
    return LLM, SamplingParams, TokensPrompt, current_platform


def _request_errors() -> tuple[type[Exception], ...]:
    """What vLLM raises for a request it rejects (a ValueError before vLLM 0.2x, its own class since)."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:
        return (ValueError,)
    return (ValueError, VLLMClientError)


class VLLMEngine:
    """The `RolloutEngine` protocol on a `vllm.LLM`.

    model: the policy as a Hugging Face `PreTrainedModel` (served from memory) or the path of a
        checkpoint directory.
    tokenizer: the tokenizer object, or a path (default: `model` when it is a path).
    dtype: vLLM's compute dtype; "auto" follows the model object's parameters (the checkpoint's
        config for a path). fp32 gives log-probs that match the trainer's to ~1e-6.
    gpu_memory_utilization: the fraction of device memory vLLM may take for weights + KV cache
        (colocated with the trainer: leave room for it). On CPU vLLM reads it as a fraction of RAM.
    kv_cache_memory_bytes: a fixed KV-cache size instead (default 1 GiB on CPU, where vLLM would
        otherwise reserve `gpu_memory_utilization` × RAM).
    enable_sleep_mode: release weights and KV cache between rollouts (`sleep`/`wake`), where the
        platform supports it (GPUs, Ascend); elsewhere ignored with a debug note.
    sleep_level: 2 (default) drops the weights, which the next `sync_weights` refills anyway (or,
        if none came, a re-sync from the last model synced): the RL flow vLLM and vllm-ascend
        document (sleep(2) → wake_up(["weights"]) → reload_weights → wake_up(["kv_cache"])).
        1 keeps a host copy of the weights instead.
    weight_sync: "auto" (memory when vLLM's worker runs in this process, else disk), "memory", "disk".
    in_process: ask vLLM to run its engine in this process (needed for in-memory weight sync);
        an explicit `VLLM_ENABLE_V1_MULTIPROCESSING` in the environment wins.
    enforce_eager: default True on CPU (no torch.compile at start-up), False elsewhere.
    work_dir: where the config, tokenizer and (disk sync) weights are written; a temporary
        directory, removed by `close()`, by default.
    llm_kwargs: passed to `vllm.LLM` as is (e.g. `logprobs_mode`, `enable_prefix_caching`).
    """

    def __init__(self, model: torch.nn.Module | str | os.PathLike, tokenizer: Any = None, *,
                 dtype: str = "auto", max_model_len: int | None = None, gpu_memory_utilization: float = 0.5,
                 kv_cache_memory_bytes: int | None = None, enable_sleep_mode: bool = False,
                 sleep_level: int = 2, seed: int = 0, tensor_parallel_size: int = 1,
                 enforce_eager: bool | None = None, weight_sync: str = "auto", in_process: bool = True,
                 work_dir: str | os.PathLike | None = None, **llm_kwargs):
        if in_process:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        LLM, _, _, platform = _import_vllm()
        if weight_sync not in ("auto", "memory", "disk"):
            raise ValueError(f"VLLMEngine: weight_sync must be 'auto', 'memory' or 'disk', got {weight_sync!r}")
        if sleep_level not in (1, 2):
            raise ValueError(f"VLLMEngine: sleep_level must be 1 or 2, got {sleep_level!r}")
        if enable_sleep_mode and not platform.is_sleep_mode_available():
            logger.debug("vLLM sleep mode is not available on %s: sleep()/wake() do nothing", platform.device_name)
            enable_sleep_mode = False
        if enforce_eager is None:
            enforce_eager = platform.is_cpu()
        if kv_cache_memory_bytes is None and platform.is_cpu():
            kv_cache_memory_bytes = 1 << 30
        if weight_sync == "auto":  # checked against where the worker really runs once it is up
            weight_sync = "memory" if _expect_in_process(tensor_parallel_size, llm_kwargs) else "disk"

        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="r2vpo-vllm-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.work_dir), True) if work_dir is None else None

        from_memory = isinstance(model, torch.nn.Module)
        if from_memory:
            if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
                raise ValueError("VLLMEngine: pass the tokenizer object together with a model object")
            model.config.save_pretrained(self.work_dir)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(self.work_dir)
            tokenizer.save_pretrained(self.work_dir)
            model_path, tokenizer_path = str(self.work_dir), str(self.work_dir)
            if dtype == "auto":
                dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
            # Weights come from memory right after start-up (memory sync) or from one file (disk sync).
            if weight_sync == "disk":
                _write_weights(model, self.work_dir)
            else:
                llm_kwargs.setdefault("load_format", "dummy")
        else:
            model_path = str(model)
            if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
                tokenizer_path = str(tokenizer or model)
            else:
                tokenizer.save_pretrained(self.work_dir)
                tokenizer_path = str(self.work_dir)

        try:
            llm = LLM(model=model_path, tokenizer=tokenizer_path, dtype=dtype, seed=seed,
                      max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                      kv_cache_memory_bytes=kv_cache_memory_bytes, enable_sleep_mode=enable_sleep_mode,
                      tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager, **llm_kwargs)
        except Exception:
            self.close()
            raise
        tokenizer_obj = tokenizer if hasattr(tokenizer, "eos_token_id") else llm.get_tokenizer()
        self._attach(llm, eos_ids=find_eos_ids(model if from_memory else model_path, tokenizer_obj),
                     sleep_level=sleep_level if enable_sleep_mode else None, weight_sync=weight_sync)
        if from_memory and llm_kwargs.get("load_format") == "dummy":
            self.sync_weights(model)

    @classmethod
    def from_llm(cls, llm, tokenizer, *, eos_ids: list[int] | None = None, sleep_level: int | None = None,
                 weight_sync: str = "auto", work_dir: str | os.PathLike | None = None) -> "VLLMEngine":
        """Wrap a `vllm.LLM` built elsewhere (sleep mode on only if `sleep_level` is given)."""
        engine = cls.__new__(cls)
        engine.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="r2vpo-vllm-"))
        engine._cleanup = weakref.finalize(engine, shutil.rmtree, str(engine.work_dir), True) \
            if work_dir is None else None
        engine._attach(llm, eos_ids=eos_ids or find_eos_ids(None, tokenizer), sleep_level=sleep_level,
                       weight_sync=weight_sync)
        return engine

    def _attach(self, llm, *, eos_ids: list[int], sleep_level: int | None, weight_sync: str) -> None:
        self.llm = llm
        self.eos_ids = eos_ids
        self.sleep_level = sleep_level               # None: sleep mode off
        self._asleep: set[str] = set()              # memory tags vLLM holds released ("weights", "kv_cache")
        self._last_model: weakref.ref | None = None  # re-sync source after a level-2 sleep
        in_process = _workers_in_this_process(llm.llm_engine.vllm_config.parallel_config)
        if weight_sync == "memory" and not in_process:
            raise ValueError("VLLMEngine: weight_sync='memory' needs vLLM's worker in this process "
                             "(VLLM_ENABLE_V1_MULTIPROCESSING=0, tensor_parallel_size=1); use 'disk' or 'auto'")
        self.weight_sync = weight_sync if weight_sync != "auto" else ("memory" if in_process else "disk")
        hf_config = getattr(getattr(llm.llm_engine.vllm_config, "model_config", None), "hf_config", None)
        self._tied_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))

    def _retie_output_embeddings(self) -> None:
        """Point vLLM's output layer back at the input embeddings after a reload (tied models).

        vLLM's layerwise reload (0.32) loads a tied weight once, through `embed_tokens`; the
        `lm_head` layer then counts as "not loaded" ("ParallelLMHead: Failed to load weights")
        and gets its previous tensor back: the dummy weights of start-up, so every token was
        sampled from random logits (measured on SmolLM2-135M-Instruct, whose embeddings are tied).
        """
        try:
            self.llm.apply_model(_retie_output_embeddings)
        except Exception as e:  # a worker in another process: vLLM refuses to pickle the function
            raise RolloutError(
                "VLLMEngine: the model ties its output layer to its input embeddings, and re-tying them in "
                f"vLLM's worker after a weight sync failed ({type(e).__name__}: {e}). Run vLLM's worker in this "
                "process (VLLM_ENABLE_V1_MULTIPROCESSING=0, tensor_parallel_size=1), or allow callables to reach "
                "its workers with VLLM_ALLOW_INSECURE_SERIALIZATION=1") from e

    # ---- the protocol ---------------------------------------------------------------------
    def sampling_params(self, sampling: SamplingConfig, n: int = 1, **overrides):
        """vLLM `SamplingParams` for `sampling` (greedy → temperature 0); `overrides` win (e.g. logprobs=0).

        No per-request seed: one seed shared by a batch would give every prompt the same random
        stream. Sampling is seeded once, by the engine's `seed`.
        """
        _, SamplingParams, _, _ = _import_vllm()
        kwargs: dict[str, Any] = dict(n=n, max_tokens=sampling.max_new_tokens, stop_token_ids=list(self.eos_ids),
                                      detokenize=False)  # the trainer decodes what it needs itself
        if sampling.greedy:
            kwargs.update(temperature=0.0, top_p=1.0, top_k=0)
        else:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or 0)
        kwargs.update(overrides)
        return SamplingParams(**kwargs)

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, n: int = 1) -> list[list[Generation]]:
        if not prompts:
            raise RolloutError("generate() got no prompts")
        if any(len(p) == 0 for p in prompts):
            raise RolloutError("generate() got an empty prompt (0 tokens)")
        if self._asleep:
            self.wake()  # e.g. an evaluation between the update and the next rollout
        _, _, TokensPrompt, _ = _import_vllm()
        try:
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                                        self.sampling_params(sampling, n), use_tqdm=False)
        except _request_errors() as e:  # vLLM's message names the limit (e.g. prompt longer than max_model_len)
            raise RolloutError(f"vLLM rejected the rollout request: {e}") from e
        eos = set(self.eos_ids)
        result = []
        for prompt, out in zip(prompts, outputs):
            group = []
            for completion in sorted(out.outputs, key=lambda c: c.index):
                tokens = list(completion.token_ids)
                finished = completion.finish_reason == "stop" and bool(tokens) and tokens[-1] in eos
                group.append(Generation(list(prompt), tokens, finished))  # EOS kept, as in HFGenerateEngine
            result.append(group)
        return result

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push `model`'s current parameters (Hugging Face names) into vLLM's copy."""
        if "weights" in self._asleep:  # the weights' memory must be back before it is written
            self.llm.wake_up(tags=["weights"])
            self._asleep.discard("weights")
        if self.weight_sync == "memory":
            weights = ((name, p.detach()) for name, p in model.named_parameters())  # layer order: little buffering
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        else:
            _write_weights(model, self.work_dir)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(self.work_dir)})
        if self._tied_embeddings:
            self._retie_output_embeddings()
        # Prefix-cached KV blocks were computed with the old weights.
        if not self.llm.reset_prefix_cache():
            raise RolloutError("vLLM could not reset its prefix cache after the weight sync (requests in flight?)")
        self._last_model = weakref.ref(model)

    def sleep(self) -> None:
        """Release weights (level 1: to host memory; level 2: dropped) and KV cache."""
        if self.sleep_level is None or self._asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self._asleep = {"weights", "kv_cache"}

    def wake(self) -> None:
        if not self._asleep:
            return
        resync = self.sleep_level == 2 and "weights" in self._asleep
        if resync:  # level 2 dropped the weights and no sync refilled them
            model = self._last_model() if self._last_model is not None else None
            if model is None:
                raise RolloutError("VLLMEngine.wake(): the weights were dropped by a level-2 sleep and no model "
                                   "is left to re-sync from; call sync_weights(model) before wake()")
            self.sync_weights(model)
        self.llm.wake_up(tags=sorted(self._asleep))
        self._asleep = set()

    def close(self) -> None:
        """Drop the vLLM instance and remove the temporary work directory."""
        self.llm = None
        if getattr(self, "_cleanup", None) is not None:
            self._cleanup()


def _multiprocessing_on() -> bool:
    """vLLM's own switch (vllm.envs reads it the same way; on by default)."""
    return bool(int(os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1")))


def _expect_in_process(tensor_parallel_size: int, llm_kwargs: dict) -> bool:
    """Will vLLM's workers run in this process? (Predicted from the arguments, before start-up.)"""
    if llm_kwargs.get("distributed_executor_backend") == "external_launcher":  # one worker per trainer rank
        return True  # (vLLM turns multiprocessing off itself for this backend)
    if _multiprocessing_on():  # the engine core, and so its workers, in a child process
        return False
    return tensor_parallel_size * llm_kwargs.get("pipeline_parallel_size", 1) == 1


def _workers_in_this_process(parallel_config) -> bool:
    """Do vLLM's workers run in this process? (Read from the running engine's parallel config.)

    A function sent through collective_rpc would tell directly, but vLLM refuses to serialise
    callables to other processes unless VLLM_ALLOW_INSECURE_SERIALIZATION=1.
    """
    if _multiprocessing_on():
        return False
    backend = parallel_config.distributed_executor_backend
    return backend == "external_launcher" or (backend in ("uni", None) and parallel_config.world_size == 1)


def _retie_output_embeddings(model: torch.nn.Module) -> bool:
    """In a vLLM worker: `lm_head.weight` is `model.embed_tokens.weight` again, and the output
    layer's weight processing (the CPU build packs it for its GEMM) reruns. False if the model
    has no such pair (nothing to do)."""
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if getattr(lm_head, "weight", None) is None or getattr(embed, "weight", None) is None:
        return False
    if lm_head.weight is not embed.weight:
        lm_head.weight = embed.weight
    method = getattr(lm_head, "quant_method", None)
    if method is not None:
        method.process_weights_after_loading(lm_head)
    return True


def _write_weights(model: torch.nn.Module, directory: Path) -> None:
    """The parameters as one safetensors file under their Hugging Face names (tied ones once)."""
    from safetensors.torch import save_file

    tensors = {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters()}
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / WEIGHTS_FILE)  # vLLM never sees a half-written file

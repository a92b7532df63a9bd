"""DeepSpeed ZeRO (stage 1, 2 or 3) behind the `TrainingEngine` protocol: `engine=deepspeed`.

Gradient semantics. Our losses reach `backward` already normalised by GLOBAL token and
sequence counts (`algos.LossReduction`), so the gradient of one optimiser step is the SUM of
the micro-batch gradients over micro-batches and ranks. DeepSpeed differs twice:
- it divides each loss by `gradient_accumulation_steps` and owns the accumulation boundary
  through a micro-step counter. We run it in unmanaged mode
  (`managed_gradient_accumulation: false`, DeepSpeed >= 0.19.8): `backward` only
  accumulates (ZeRO-2/3 still reduce-scatter every backward, which is linear), and our
  `step` is the boundary, however many micro-batches came before it. `backward` passes
  `scale_wrt_gas=False`, so nothing is divided by the accumulation count.
- its data-parallel reduction AVERAGES over ranks. `backward` multiplies the loss by the
  world size, so the average DeepSpeed forms is the sum we want (exact for powers of two).
  Gradient clipping (`gradient_clipping` = `config.max_grad_norm`) and the reported norm then
  act on the summed gradient, as in `NativeEngine`.

Optimiser and schedule are ours (engines/base.py: AdamW with `lr`, `adam_betas`,
`weight_decay`, and `make_lr_schedule`), handed to DeepSpeed as client objects; DeepSpeed steps the schedule
inside `step()` (skipping it when it skips a non-finite step, like `NativeEngine`).

Checkpoints are DeepSpeed's own (`save_checkpoint`: every rank writes its ZeRO partition of
the optimiser state; nothing is gathered on one rank), under
`<output_dir>/checkpoints/deepspeed/<tag>/`. The trainer's atomic `state.pt` holds only the
tag; the shards are complete (written under a temporary tag, then renamed) before `state.pt`
names them, so a kill at any moment leaves the previous checkpoint loadable. Resume restores
weights, fp32 master weights, optimiser moments, the schedule and DeepSpeed's step counters:
it continues exactly, with the same number of processes and ZeRO stage.

ZeRO-3 partitions the weights: log-prob forwards go through the DeepSpeed engine (a small
wrapper module that also registers the LM head weight, read directly by the chunked
log-prob kernel, as an external parameter); `generate` runs on the module with
`synced_gpus` (transformers turns it on while a ZeRO-3 `HfDeepSpeedConfig` is alive), every
rank taking part; the final model is gathered on rank 0 (`save_pretrained`).

DeepSpeed picks the accelerator through its own abstraction (`deepspeed.accelerator`: Ascend,
NVIDIA or the CPU, see docs/distributed.md); the process group is the one
`device.init_distributed` created (reused by `deepspeed.init_distributed`).
"""

from __future__ import annotations

import atexit
import copy
import json
import math
import os
import shutil
from pathlib import Path

import torch

import device
from r2vpo_ascend.algos.errors import CheckpointError, ConfigError, MissingExtraError
from r2vpo_ascend.engines.base import build_optimizer, config_lr_schedule, sum_over_ranks
from r2vpo_ascend.trainer.batch import TokenBatch
from r2vpo_ascend.trainer.config import R2VPOConfig
from r2vpo_ascend.trainer.logprobs import response_log_probs

INSTALL_HINT = "pip install 'r2vpo-ascend[deepspeed]'"
CHECKPOINT_SUBDIR = "deepspeed"  # under <output_dir>/checkpoints/, next to the step_* directories


def _import_deepspeed():
    try:
        import deepspeed
        from deepspeed.runtime import constants
    except ImportError as e:
        raise MissingExtraError(f"engine=deepspeed needs DeepSpeed: {INSTALL_HINT} ({e})") from None
    if not hasattr(constants, "MANAGED_GRADIENT_ACCUMULATION"):
        raise MissingExtraError(f"engine=deepspeed needs DeepSpeed >= 0.19.8 (unmanaged gradient accumulation); "
                                f"found {deepspeed.__version__}: {INSTALL_HINT}")
    return deepspeed


class _PolicyLogProbs(torch.nn.Module):
    """The module DeepSpeed wraps: its forward is our per-token log-prob computation, so that
    ZeRO-3 gathers every weight it touches (including the LM head, read outside its forward)."""

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, input_ids, attention_mask, position_ids, response_ids, response_mask, *,
                prompt_width: int, temperature: float, with_entropy: bool):
        batch = TokenBatch(input_ids, attention_mask, position_ids, response_ids, response_mask, prompt_width)
        return response_log_probs(self.policy, batch, temperature=temperature, with_entropy=with_entropy)


def build_deepspeed_config(config: R2VPOConfig, dtype: torch.dtype, *, announce=print) -> dict:
    """`config.deepspeed_config` (JSON) with the fields our engine owns filled in.

    Ours: micro batch size (informational: we feed micro-batches ourselves), accumulation
    (1, unmanaged: our `step` is the boundary), clipping (`max_grad_norm`) and precision (the
    run's `dtype`; a JSON that says otherwise is overridden, with a note). The JSON keeps the
    ZeRO block and everything else. It must not define `optimizer` or `scheduler`.
    """
    path = config.deepspeed_config
    if not path:
        raise ConfigError("engine=deepspeed needs config field `deepspeed_config` (a DeepSpeed JSON file, e.g. "
                          "configs/deepspeed/zero2.json)")
    try:
        ds = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"config field `deepspeed_config`: cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config field `deepspeed_config`: {path} is not valid JSON: {e}") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"config field `deepspeed_config`: {path} must hold a JSON object")
    for owned in ("optimizer", "scheduler"):
        if owned in ds:
            raise ConfigError(f"{path}: remove the `{owned}` block; engine=deepspeed builds AdamW and the learning-"
                              f"rate schedule from the config fields lr, adam_betas, weight_decay, lr_scheduler, "
                              f"warmup_steps")
    zero = ds.setdefault("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    if stage not in (1, 2, 3):
        raise ConfigError(f"{path}: zero_optimization.stage must be 1, 2 or 3 for engine=deepspeed, got {stage}")
    if stage == 1 and zero.get("overlap_comm"):
        zero["overlap_comm"] = False  # ZeRO-1 reduces at step() in unmanaged mode: nothing to overlap
    ds.pop("train_batch_size", None)
    ds["train_micro_batch_size_per_gpu"] = config.micro_batch_size
    ds["gradient_accumulation_steps"] = 1
    ds["managed_gradient_accumulation"] = False
    ds["gradient_clipping"] = float(config.max_grad_norm)
    ds.setdefault("zero_allow_untested_optimizer", True)  # our client AdamW
    ds.setdefault("steps_per_print", 10**9)
    wanted = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)
    for key in ("bf16", "fp16"):
        enabled = bool(ds.get(key, {}).get("enabled", False))
        if enabled != (key == wanted):
            if enabled:
                announce(f"[deepspeed] {path} enables {key} but the run's dtype is {str(dtype).replace('torch.', '')}: "
                         f"{key} off (set the config field `dtype` to change precision)")
            ds.setdefault(key, {})["enabled"] = key == wanted
    return ds


class DeepSpeedEngine:
    """`TrainingEngine` on DeepSpeed ZeRO. `model` is the Hugging Face module (generation,
    weight sync, saving); forwards for training go through the DeepSpeed engine `self.ds`."""

    compute_dtype = None  # DeepSpeed's own bf16 section does mixed precision (config refuses `mixed_precision`)

    def __init__(self, model: torch.nn.Module, config: R2VPOConfig, backend, dtype: torch.dtype,
                 dist: device.DistInfo | None = None):
        deepspeed = _import_deepspeed()
        self.backend, self.config = backend, config
        self.rank = dist.rank if dist else 0
        self.world_size = dist.world_size if dist else 1
        ds_config = build_deepspeed_config(config, dtype, announce=print if self.rank == 0 else (lambda *_: None))
        self.zero_stage = int(ds_config["zero_optimization"]["stage"])
        if config.sft_steps > 0:
            raise ConfigError("engine=deepspeed does not run the supervised warm start (config field `sft_steps` > 0): "
                              "run it with engine=native, then start RL from its `final/` model with sft_steps=0")
        if self.zero_stage == 3 and config.rollout_engine == "vllm":
            raise ConfigError("rollout_engine=vllm with ZeRO-3 is not supported (vLLM would receive partitioned "
                              "weights): use ZeRO-1/2 (configs/deepspeed/zero2.json) or rollout_engine=hf")
        _ensure_process_group(backend, config)
        deepspeed.init_distributed(dist_backend=backend.dist_backend)

        model = model.to(device=backend.device, dtype=dtype)
        model.train()
        # A frozen full copy for the KL reference, taken before ZeRO-3 partitions the weights.
        self._reference = copy.deepcopy(model).eval().requires_grad_(False) if config.kl_coef > 0 else None
        self._hf_ds_config = None
        if self.zero_stage == 3:
            self._hf_ds_config = _hf_zero3_marker(ds_config)  # kept alive: generate() then syncs ranks
        self.model = model
        self._wrapper = _PolicyLogProbs(model)
        optimizer = build_optimizer(model, config)  # torch's default kernel: DeepSpeed steps it on its partitions
        scheduler = config_lr_schedule(optimizer, config)
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self._wrapper, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        if self.zero_stage == 3:
            head = model.get_output_embeddings()
            for param in (head.weight, getattr(head, "bias", None)):
                if param is not None:
                    deepspeed.zero.register_external_parameter(self._wrapper, param)
        self._saved_tags: list[str] = []
        if not _shutdown.registered:
            atexit.register(_shutdown)
            _shutdown.registered = True

    # ---- the protocol ---------------------------------------------------------------------
    def log_probs(self, batch: TokenBatch, *, temperature: float, with_entropy: bool = False):
        b = batch.to(self.backend.device)
        return self.ds(b.input_ids, b.attention_mask, b.position_ids, b.response_ids, b.response_mask,
                       prompt_width=b.prompt_width, temperature=temperature, with_entropy=with_entropy)

    def backward(self, loss: torch.Tensor) -> None:
        # × world size: DeepSpeed's data-parallel reduction averages, our global normalisation wants the sum.
        self.ds.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self) -> float:
        """Reduce, clip, step (the accumulation boundary), advance the schedule; the pre-clip norm
        of the summed gradient, NaN when DeepSpeed skipped a non-finite step."""
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return norm if math.isfinite(norm) else float("nan")

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return sum_over_ranks(values, self.backend, self.world_size)

    @property
    def lr(self) -> float:
        return float(self.ds.get_lr()[0])

    def frozen_copy(self) -> torch.nn.Module:
        """The KL reference policy: a frozen full copy of the initial weights (taken before ZeRO)."""
        if self._reference is None:
            raise RuntimeError("DeepSpeedEngine was built with kl_coef == 0: no reference copy was kept")
        reference, self._reference = self._reference, None
        return reference

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Collective: every rank writes its ZeRO shards; returns the small dict `state.pt` keeps."""
        root = Path(self.config.output_dir) / "checkpoints" / CHECKPOINT_SUBDIR
        token = device.all_gather_objects(os.urandom(4).hex())[0]  # one unique tag for all ranks
        tag = f"global_step{self.ds.global_steps}-{token}"
        self.ds.save_checkpoint(str(root), tag=f"{tag}.partial", save_latest=False)
        device.barrier()  # every rank's shards are on disk
        if self.rank == 0:
            os.replace(root / f"{tag}.partial", root / tag)
            self._saved_tags.append(tag)
            self._prune(root)
        device.barrier()
        return {"deepspeed_tag": tag, "deepspeed_dir": str(root.resolve()), "zero_stage": self.zero_stage,
                "world_size": self.world_size, "saved_tags": list(self._saved_tags)}

    def load_state_dict(self, state: dict) -> None:
        if "deepspeed_tag" not in state:
            raise CheckpointError("this checkpoint was written by engine=native; resume it with engine=native (or "
                                  "start a new run from its weights with `model=<run>/final`)")
        if (state["zero_stage"], state["world_size"]) != (self.zero_stage, self.world_size):
            raise CheckpointError(f"checkpoint written with ZeRO-{state['zero_stage']} on {state['world_size']} "
                                  f"process(es); this run has ZeRO-{self.zero_stage} on {self.world_size}: resume "
                                  f"with the same stage and number of processes")
        root = Path(state["deepspeed_dir"])
        if not (root / state["deepspeed_tag"]).is_dir():  # the run directory was moved: look next to it
            root = Path(self.config.output_dir) / "checkpoints" / CHECKPOINT_SUBDIR
        if not (root / state["deepspeed_tag"]).is_dir():
            raise CheckpointError(f"DeepSpeed shards {state['deepspeed_tag']} not found under {root}")
        load_path, _ = self.ds.load_checkpoint(str(root), tag=state["deepspeed_tag"], load_optimizer_states=True,
                                               load_lr_scheduler_states=True)
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load {root / state['deepspeed_tag']}")
        self._saved_tags = list(state.get("saved_tags", []))

    def _prune(self, root: Path) -> None:
        """Keep the shards of the newest `keep_checkpoints` saves of this run's lineage (the ones
        the kept step_* checkpoints name); drop the rest, including orphans of killed saves."""
        keep = self.config.keep_checkpoints
        if keep <= 0:
            return
        self._saved_tags = self._saved_tags[-keep:]
        for entry in root.iterdir():
            if entry.is_dir() and entry.name not in self._saved_tags:
                shutil.rmtree(entry, ignore_errors=True)

    # ---- final model --------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Collective: the full weights in Hugging Face format; rank 0 writes."""
        if self.zero_stage == 3:
            state = self.ds._zero3_consolidated_16bit_state_dict()  # gathered on rank 0, None elsewhere
            if self.rank == 0:
                prefix = "policy."
                state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
                self.model.save_pretrained(directory, state_dict=state)
        elif self.rank == 0:
            self.model.save_pretrained(directory)
        device.barrier()


def _hf_zero3_marker(ds_config: dict):
    """transformers' `HfDeepSpeedConfig`: while it lives, `generate` runs with `synced_gpus`
    (ranks keep stepping until all are done: ZeRO-3 gathers weights collectively)."""
    from importlib.metadata import PackageNotFoundError
    from transformers.integrations import HfDeepSpeedConfig
    try:
        return HfDeepSpeedConfig(ds_config)
    except (ImportError, PackageNotFoundError) as e:  # it requires `accelerate`
        raise MissingExtraError(f"ZeRO-3 generation needs transformers' DeepSpeed integration: {INSTALL_HINT} "
                                f"({e})") from None


def _ensure_process_group(backend, config: R2VPOConfig) -> None:
    """DeepSpeed needs a process group even in one process: a single-member one on a local store."""
    import torch.distributed as dist
    from datetime import timedelta
    if dist.is_initialized():
        return
    for name in ("RANK", "LOCAL_RANK"):  # what torchrun would set; DeepSpeed checks LOCAL_RANK
        os.environ.setdefault(name, "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    timeout = timedelta(seconds=config.collective_timeout_s)
    dist.init_process_group(backend=backend.dist_backend, store=dist.HashStore(), rank=0, world_size=1,
                            timeout=timeout)


def _shutdown() -> None:
    # Leaving the process group explicitly before interpreter teardown avoids an abort at exit
    # seen with ZeRO-2 when the group is destroyed while DeepSpeed's objects are collected.
    device.destroy_distributed()


_shutdown.registered = False

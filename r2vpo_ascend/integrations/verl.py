"""R²VPO as a verl 0.9.1 policy loss (extra ``verl``): ``policy_loss.loss_mode=r2vpo``.

``import verl`` loads every entry point of the group ``verl.plugins`` (also in Ray workers);
this package declares one (setup.py), so installing it registers the loss ``r2vpo`` in
``verl.trainer.ppo.core_algos``, no fork needed. The extra settings (λ, δ, the dual step, c,
where λ is saved) are the fields of :class:`R2VPOPolicyLossConfig`, a subclass of verl's
``PolicyLossConfig``, selected with ``actor_rollout_ref.actor.policy_loss._target_``.

verl calls the loss once per micro-batch as ``fn(old_log_prob, log_prob, advantages,
response_mask, loss_agg_mode, config, rollout_is_weights)`` and has no hook for state across
steps nor in its checkpoints, so:

- λ lives in this module (one :class:`~r2vpo_ascend.algos.dual.DualController` per process:
  one actor per process) and is held constant within a mini-batch (one optimiser step);
- mini-batch boundaries are found by counting calls: every rank runs
  global_batch_size / dp_size / ppo_micro_batch_size_per_gpu micro-batches per mini-batch
  (verl gives all dp ranks the same number). With ``use_dynamic_bsz`` that count changes from
  one mini-batch to the next and the loss cannot see it: refused;
- on the last call of a mini-batch the merged (Σm, Σm(ρ−1), Σm(ρ−1)²) of its micro-batches are
  all-reduced over the default process group and ONE dual step is taken on the global V̂.
  Ranks that hold the same data (sequence parallelism) scale every sum alike: V̂ is unchanged;
- λ is saved to ``dual_state_path`` (JSON, by rank 0, after every dual step) and read from it
  when the first loss call of a process finds the file: point it beside verl's checkpoints,
  e.g. ``${trainer.default_local_dir}/r2vpo_dual.json``. The file holds the latest λ, not the
  λ of the checkpoint verl resumes from (verl does not tell the loss which one that is);
- ``center=mean``: c is the mean ρ of the micro-batch (the exact global c needs a pre-pass
  over the mini-batch that verl does not have). Within a micro-batch the penalty's gradient is
  then exact; across micro-batches each is centred on its own mean, which ignores the spread
  of the micro-batch means (a smaller V̂ in the loss than the global one when they differ). The
  dual step uses the exact global V̂. ``center=one`` (c = 1) is exact everywhere.

Global normalisation follows verl's ``agg_loss``: ``config.global_batch_info`` gives
``batch_num_tokens`` (tokens of the global mini-batch), ``global_batch_size`` (its sequences),
``dp_size`` (FSDP averages gradients over dp ranks, so each rank's loss is the global sum × dp
/ count, i.e. our global denominators ÷ dp) and ``loss_scale_factor`` (L of
``seq-mean-token-sum-norm``; verl falls back to the micro-batch's padded width, which changes
between micro-batches: refused, set ``actor.loss_scale_factor``). The Megatron backend's loss
scaling was not checked.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from r2vpo_ascend.algos.aggregation import LossReduction
from r2vpo_ascend.algos.dual import DualController
from r2vpo_ascend.algos.dual_settings import R2VPO_SETTINGS, check_settings, dual_controller
from r2vpo_ascend.algos.errors import ConfigError, MissingExtraError
from r2vpo_ascend.algos.losses import r2vpo_loss
from r2vpo_ascend.algos.ratio import RatioStats

try:
    from verl.trainer.ppo.core_algos import register_policy_loss
    from verl.workers.config import PolicyLossConfig
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("r2vpo_ascend.integrations.verl needs verl: pip install 'r2vpo-ascend[verl]' "
                            f"(verl==0.9.1, in its own environment); import failed with: {exc}") from exc

LOSS_NAME = "r2vpo"
SUPPORTED_LOSS_AGG = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def _post_init(self) -> None:
    check_settings(self)  # ConfigError naming the field


# verl's PolicyLossConfig + the shared R²VPO fields (same names, defaults and help as R2VPOConfig)
# + where λ is saved. verl's BaseConfig freezes fields after construction, as for its own configs.
R2VPOPolicyLossConfig = dataclasses.make_dataclass(
    "R2VPOPolicyLossConfig",
    [("loss_mode", str, dataclasses.field(default=LOSS_NAME))]
    + [(s.name, s.type, dataclasses.field(default=s.default, metadata={"help": s.help})) for s in R2VPO_SETTINGS]
    + [("dual_state_path", str | None, dataclasses.field(default=None, metadata={
        "help": "JSON file λ is saved to after every dual step and restored from at start-up (None: not saved)."}))],
    bases=(PolicyLossConfig,),
    namespace={"__post_init__": _post_init,
               "__doc__": "verl's PolicyLossConfig plus the R²VPO settings (r2vpo_ascend.algos.dual_settings)."},
)
R2VPOPolicyLossConfig.__module__ = __name__  # so that hydra's _target_ and pickling find it


@dataclass
class DualState:
    """λ of this process and the statistics of the mini-batch in progress."""

    controller: DualController
    micro_batches_per_step: int
    calls: int = 0                     # loss calls in the current mini-batch
    window: RatioStats | None = None   # merged statistics of those calls
    state_path: str | None = None
    dual_steps: int = 0                # dual steps taken (= optimiser steps), saved with λ
    last_ratio_var: float | None = None  # the global V̂ of the last dual step


_STATE: DualState | None = None


def dual_state() -> DualState | None:
    """The process's λ state (None before the first loss call)."""
    return _STATE


def reset_dual_state() -> None:
    """Forget λ (the next loss call starts from the config, or from ``dual_state_path``)."""
    global _STATE
    _STATE = None


def micro_batches_per_mini_batch(config: Any) -> int:
    """Loss calls per optimiser step on each rank (see the module doc), from verl's actor config."""
    if config.use_dynamic_bsz:
        raise ConfigError("loss_mode=r2vpo does not support actor.use_dynamic_bsz=True: the number of micro-batches "
                          "per mini-batch then changes between mini-batches and the loss cannot find the optimiser "
                          "step, where the dual step must happen; set use_dynamic_bsz=False and "
                          "ppo_micro_batch_size_per_gpu")
    info = config.global_batch_info
    dp_size = int(info.get("dp_size") or 1)
    global_seqs = info.get("global_batch_size") or config.ppo_mini_batch_size * config.rollout_n
    per_rank, rest = divmod(int(global_seqs), dp_size * int(config.ppo_micro_batch_size_per_gpu))
    if rest or per_rank < 1:
        raise ConfigError(f"loss_mode=r2vpo needs the mini-batch ({global_seqs} sequences) to split into whole "
                          f"micro-batches of ppo_micro_batch_size_per_gpu={config.ppo_micro_batch_size_per_gpu} "
                          f"on each of {dp_size} ranks")
    return per_rank


def _state_for(config: Any) -> DualState:
    global _STATE
    if _STATE is None:
        settings = config.policy_loss
        path = settings.get("dual_state_path")
        state = DualState(dual_controller(settings), micro_batches_per_mini_batch(config), state_path=path)
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            state.controller.load_state_dict(saved["dual"])
            state.dual_steps = int(saved["dual_steps"])
        _STATE = state
    return _STATE


def _reduction(config: Any, loss_agg_mode: str) -> tuple[LossReduction | None, int | None]:
    """verl's global_batch_info as our global denominators (each dp rank's share, see the module doc)."""
    info = config.global_batch_info
    dp_size = int(info.get("dp_size") or 1)
    tokens, seqs = info.get("batch_num_tokens"), info.get("global_batch_size")
    length = info.get("loss_scale_factor", config.get("loss_scale_factor"))
    if loss_agg_mode == "seq-mean-token-sum-norm" and length is None:
        raise ConfigError("loss_mode=r2vpo with loss_agg_mode=seq-mean-token-sum-norm needs actor.loss_scale_factor "
                          "(e.g. data.max_response_length): verl's fallback, the micro-batch's padded width, changes "
                          "between micro-batches")
    if dp_size > 1 and (tokens is None or seqs is None):
        raise ConfigError("loss_mode=r2vpo with dp_size > 1 needs global_batch_info's batch_num_tokens and "
                          "global_batch_size (set by verl's ppo_loss)")
    if tokens is None and seqs is None:
        return None, length
    return LossReduction(global_tokens=None if tokens is None else float(tokens) / dp_size,
                         global_seqs=None if seqs is None else float(seqs) / dp_size), length


def _world_reduction(device: torch.device) -> LossReduction:
    """Sums over the default process group, on ``device`` (the loss's: the collective backend of
    an accelerator may not take host tensors); no collective in one process."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return LossReduction()

    def all_reduce(values: torch.Tensor) -> torch.Tensor:
        on_device = values.to(device)
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
        return on_device.to(values.device)
    return LossReduction(all_reduce=all_reduce, world_size=dist.get_world_size(), rank=dist.get_rank())


def _dual_step(state: DualState, device: torch.device) -> None:
    """One dual step on the V̂ of the mini-batch's micro-batches, summed over all ranks."""
    window, state.window, state.calls = state.window, None, 0
    reduction = _world_reduction(device)
    state.last_ratio_var = window.all_reduce(reduction).ratio_var()
    state.controller.update(state.last_ratio_var)
    state.dual_steps += 1
    if state.state_path and reduction.rank == 0:
        temporary = f"{state.state_path}.tmp"
        os.makedirs(os.path.dirname(os.path.abspath(state.state_path)), exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump({"dual": state.controller.state_dict(), "dual_steps": state.dual_steps}, f, indent=1)
        os.replace(temporary, state.state_path)  # atomic: a crash never leaves half a file


@register_policy_loss(LOSS_NAME)
def compute_policy_loss_r2vpo(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                              response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                              rollout_is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl's policy-loss signature around our :func:`~r2vpo_ascend.algos.losses.r2vpo_loss`
    (all tensors ``[batch, response_length]``); returns ``(loss, metrics)`` like verl's losses."""
    if config is None:
        raise ConfigError("loss_mode=r2vpo needs verl's actor config (config=...)")
    if rollout_is_weights is not None:
        raise ConfigError("loss_mode=r2vpo does not support rollout correction weights "
                          "(policy_loss.rollout_correction): R²VPO's variance penalty is its off-policy control")
    if loss_agg_mode not in SUPPORTED_LOSS_AGG:
        raise ConfigError(f"loss_mode=r2vpo supports loss_agg_mode in {list(SUPPORTED_LOSS_AGG)}, "
                          f"got {loss_agg_mode!r}")
    state = _state_for(config)
    per_step = micro_batches_per_mini_batch(config)
    if per_step != state.micro_batches_per_step:
        if state.calls:  # the mini-batch size changed inside a mini-batch: its boundary is lost
            raise ConfigError(f"loss_mode=r2vpo: the micro-batches per mini-batch changed from "
                              f"{state.micro_batches_per_step} to {per_step} within a mini-batch")
        state.micro_batches_per_step = per_step
    reduction, length = _reduction(config, loss_agg_mode)
    lam = state.controller.lam
    output = r2vpo_loss(log_prob, old_log_prob, advantages, response_mask, lam,
                        ratio_level="token",  # verl's ratios are per token (GSPO is a loss of its own)
                        center=config.policy_loss.center, loss_agg=loss_agg_mode,
                        max_response_length=None if length is None else int(length), reduction=reduction)
    state.window = output.stats if state.window is None else state.window.merge(output.stats)
    state.calls += 1
    if state.calls == state.micro_batches_per_step:  # the last micro-batch of the optimiser step
        _dual_step(state, log_prob.device)
    metrics = output.metrics()
    return output.loss, {"actor/r2vpo_lambda": lam, "actor/r2vpo_ratio_var": metrics["r2vpo/ratio_var"],
                  "actor/r2vpo_ratio_mean": metrics["r2vpo/ratio_mean"],
                  "actor/r2vpo_ratio_max": metrics["r2vpo/ratio_max"],
                  "actor/ppo_kl": -_masked_mean(log_prob.detach() - old_log_prob, response_mask)}


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.bool()
    count = int(mask.sum())
    return float(torch.where(mask, values, torch.zeros_like(values)).sum() / count) if count else 0.0


__all__ = ["LOSS_NAME", "R2VPOPolicyLossConfig", "compute_policy_loss_r2vpo", "dual_state",
           "micro_batches_per_mini_batch", "reset_dual_state"]

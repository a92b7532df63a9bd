"""R²VPO in TRL 1.16: ``R2VPOGRPOConfig`` and ``R2VPOGRPOTrainer`` (extra ``trl``).

A TRL user changes two imports::

    from r2vpo_ascend.integrations.trl import R2VPOGRPOConfig as GRPOConfig
    from r2vpo_ascend.integrations.trl import R2VPOGRPOTrainer as GRPOTrainer

What maps onto what (TRL's own fields are used where TRL has one):

- ``importance_sampling_level`` = our ``ratio_level`` (``token`` / ``sequence``);
- ``loss_type`` = our ``loss_agg``: ``dapo`` → ``token-mean``, ``grpo`` → ``seq-mean-token-mean``,
  ``dr_grpo`` → ``seq-mean-token-sum-norm`` with L = ``max_completion_length``, each with TRL's
  own normaliser (so the policy term is TRL's unclipped surrogate);
- ``beta`` = the KL coefficient (k3 estimator, as TRL's), aggregated like the policy term, weighted
  by ρ when ``use_bias_correction_kl`` (TRL's default);
- the fields of :data:`~r2vpo_ascend.algos.dual_settings.R2VPO_SETTINGS` (λ, δ, the dual step, c)
  are added with R2VPOConfig's names, defaults and help. ``epsilon``/``epsilon_high`` are ignored:
  R²VPO does not clip.

λ is held constant within an optimiser step. The (Σm, Σmρ, Σmρ²) sums of every micro-batch are
merged; on the last micro-batch of the step (``accelerator.sync_gradients``) they are summed over
processes and ONE dual step is taken on the global V̂, so every process holds the same λ (the
pattern of TRL's adaptive entropy controller). λ is saved as ``r2vpo_dual.json`` in each TRL
checkpoint and restored by ``trainer.train(resume_from_checkpoint=...)``.

``center="mean"``: c is the mean ρ of each micro-batch (the exact c of the whole step needs a
pre-pass TRL does not make); the dual step's V̂ is exact (centred on the step's mean), and
``center="one"`` is exact everywhere (tests/test_integration_trl.py checks the summed
micro-batch gradients against the whole step's).

With ``num_iterations=1`` and on-policy generation (``steps_per_generation <=
gradient_accumulation_steps``, no vLLM) TRL passes no ``old_per_token_logps``: ρ ≡ 1, V̂ = 0 and
R²VPO reduces to the plain policy gradient (λ then only decays towards ``lambda_min``). R²VPO
acts with ``num_iterations > 1`` or ``steps_per_generation > gradient_accumulation_steps``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from typing import Any

import torch

from r2vpo_ascend.algos.aggregation import LossReduction, aggregate
from r2vpo_ascend.algos.dual_settings import R2VPO_SETTINGS, check_settings, dual_controller
from r2vpo_ascend.algos.errors import CheckpointError, ConfigError, MissingExtraError
from r2vpo_ascend.algos.kl import kl_penalty
from r2vpo_ascend.algos.losses import r2vpo_loss
from r2vpo_ascend.algos.ratio import RatioStats, policy_ratio

try:
    from trl import GRPOConfig, GRPOTrainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("r2vpo_ascend.integrations.trl needs TRL: pip install 'r2vpo-ascend[trl]' "
                            f"(trl==1.16.0); import failed with: {exc}") from exc

# TRL loss_type → our loss_agg. The other TRL loss types (bnpo, cispo, sapo, luspo, vespo) are
# different objectives, not aggregations of ρ·A: they are refused.
LOSS_TYPES = {"dapo": "token-mean", "grpo": "seq-mean-token-mean", "dr_grpo": "seq-mean-token-sum-norm"}
DUAL_STATE_FILE = "r2vpo_dual.json"
# Keys of TRL's inputs that go to the model's forward (vision models), passed through as TRL does.
_MODEL_INPUT_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                     "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


def unsupported_options(args: Any) -> list[str]:
    """The TRL options set in ``args`` that R2VPOGRPOTrainer's loss does not implement, each with
    why. TRL implements them inline in ``_compute_loss``, which this trainer replaces."""
    problems = []
    if args.loss_type not in LOSS_TYPES:
        problems.append(f"loss_type={args.loss_type!r} (supported: {sorted(LOSS_TYPES)})")
    if args.top_entropy_quantile < 1.0:
        problems.append(f"top_entropy_quantile={args.top_entropy_quantile} (entropy masking; use 1.0)")
    if args.off_policy_mask_threshold is not None:
        problems.append(f"off_policy_mask_threshold={args.off_policy_mask_threshold} (off-policy sequence mask; "
                        "R²VPO's variance penalty is its way to handle off-policy tokens)")
    if args.use_vllm and args.vllm_importance_sampling_correction:
        problems.append("use_vllm=True with vllm_importance_sampling_correction=True (vLLM importance-sampling "
                        "correction; set vllm_importance_sampling_correction=False)")
    if args.delta is not None:
        problems.append(f"delta={args.delta} (two-sided clipping; R²VPO does not clip)")
    if args.entropy_coef != 0.0 or args.use_adaptive_entropy:
        problems.append(f"entropy_coef={args.entropy_coef} / use_adaptive_entropy={args.use_adaptive_entropy} "
                        "(entropy bonus)")
    return problems


def _check_args(args: Any) -> None:
    problems = unsupported_options(args)
    if problems:
        raise ConfigError("R2VPOGRPOTrainer does not support: " + "; ".join(problems))
    check_settings(args)


def _post_init(self) -> None:
    GRPOConfig.__post_init__(self)
    _check_args(self)


# The R²VPO fields are generated from the shared table, so names, types, defaults and help are
# those of R2VPOConfig (tests/test_integration_trl.py checks both against the table).
R2VPOGRPOConfig = dataclasses.make_dataclass(
    "R2VPOGRPOConfig",
    [(s.name, s.type, dataclasses.field(default=s.default, metadata={"help": s.help}))
     for s in R2VPO_SETTINGS],
    bases=(GRPOConfig,),
    namespace={"__post_init__": _post_init,
               "__doc__": "TRL's GRPOConfig plus the R²VPO settings (see r2vpo_ascend.algos.dual_settings)."},
)
R2VPOGRPOConfig.__module__ = __name__  # so that checkpoints (torch.save of the args) unpickle it


class R2VPOGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with the R²VPO loss −agg(ρ·A) + λ·V̂ and its dual step. Same constructor;
    ``args`` must be an :data:`R2VPOGRPOConfig` (default: one named like TRL's default)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = inspect.signature(GRPOTrainer.__init__).bind(None, *args, **kwargs)
        config = bound.arguments.get("args")
        if config is None:
            model = bound.arguments["model"]
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            config = R2VPOGRPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-R2VPO")
        elif not isinstance(config, R2VPOGRPOConfig):
            raise ConfigError("R2VPOGRPOTrainer needs args=R2VPOGRPOConfig(...) (TRL's GRPOConfig has no λ "
                              f"settings), got {type(config).__name__}")
        _check_args(config)  # the config may have been changed since its __post_init__
        bound.arguments["args"] = config
        super().__init__(*bound.args[1:], **bound.kwargs)
        if self.aux_loss_enabled:
            raise ConfigError("R2VPOGRPOTrainer does not support the router auxiliary loss "
                              "(model.config.output_router_logits=True)")
        self.r2vpo_dual = dual_controller(self.args)
        self.r2vpo_dual_steps = 0  # dual steps taken (= optimiser steps), saved with λ
        self._r2vpo_window: RatioStats | None = None  # merged stats of this optimiser step's micro-batches

    # ---- the loss ---------------------------------------------------------------------------------
    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        per_token_logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True,
            **{key: inputs.get(key) for key in _MODEL_INPUT_KEYS})
        # None when generation is on-policy (num_iterations=1): then ρ ≡ 1 (see the module doc).
        old_per_token_logps = inputs.get("old_per_token_logps")
        if old_per_token_logps is None:
            old_per_token_logps = per_token_logps.detach()
        training = self.model.training
        lam = self.r2vpo_dual.lam
        loss, stats = self._primal_loss(per_token_logps, old_per_token_logps, inputs["advantages"], mask,
                                        inputs.get("ref_per_token_logps"), lam, self._reduction(inputs, training))
        mode = "train" if training else "eval"
        self._metrics[mode]["entropy"].append(self._global_mean(entropies, mask))
        if training:
            self._accumulate(stats)
            if self.accelerator.sync_gradients:  # last micro-batch of the optimiser step
                self._dual_step(lam)
        return loss

    def _primal_loss(self, log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                     mask: torch.Tensor, ref_log_probs: torch.Tensor | None, lam: float,
                     reduction: LossReduction) -> tuple[torch.Tensor, RatioStats]:
        """Our r2vpo_loss, plus β·KL (k3, as TRL's) aggregated like the policy term; returns the
        loss and this micro-batch's ratio statistics."""
        loss_agg = LOSS_TYPES[self.loss_type]
        length = self.max_completion_length if self.loss_type == "dr_grpo" else None
        output = r2vpo_loss(log_probs, old_log_probs, advantages, mask, lam,
                            ratio_level=self.importance_sampling_level, center=self.args.center,
                            loss_agg=loss_agg, max_response_length=length, reduction=reduction)
        loss = output.loss
        if self.beta != 0.0:
            per_token_kl = kl_penalty(log_probs, ref_log_probs, "k3")
            if self.args.use_bias_correction_kl:  # TRL's default: KL weighted by the (differentiable) ρ
                per_token_kl = per_token_kl * policy_ratio(log_probs, old_log_probs, mask.bool(),
                                                           self.importance_sampling_level)
            loss = loss + self.beta * aggregate(per_token_kl, mask.bool(), loss_agg, reduction,
                                                max_response_length=length)
            self._metrics["train" if self.model.training else "eval"]["kl"].append(
                self._global_mean(per_token_kl, mask))
        return loss, output.stats

    def _reduction(self, inputs: dict[str, Any], training: bool) -> LossReduction:
        """TRL's normalisers as global denominators, so the loss is TRL's partial sum.

        Each process's share: DDP averages gradients over processes, and the Trainer sums the
        micro-batches of a step. Tokens (V̂, ``dapo``): TRL's ``dapo`` normaliser, the step's
        token count from the generation batch's (``num_items_in_batch``) / processes. Sequences
        (``grpo``, ``dr_grpo``): micro-batch size × accumulation steps, as TRL divides.
        """
        accumulation = self.current_gradient_accumulation_steps if training else 1
        tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if training:
            tokens = tokens * accumulation / self.args.steps_per_generation
        seqs = float(inputs["completion_ids"].size(0) * accumulation)
        return LossReduction(global_tokens=tokens.to(torch.float32), global_seqs=seqs)

    # ---- the dual step ----------------------------------------------------------------------------
    def _accumulate(self, stats: RatioStats) -> None:
        self._r2vpo_window = stats if self._r2vpo_window is None else self._r2vpo_window.merge(stats)

    def _dual_step(self, lam: float) -> None:
        """One dual step on the V̂ of all micro-batches of the step, summed over processes."""
        window, self._r2vpo_window = self._r2vpo_window, None
        stats = window.all_reduce(self._process_reduction())
        ratio_var = stats.ratio_var()
        self.r2vpo_dual.update(ratio_var)
        self.r2vpo_dual_steps += 1
        logged = {"r2vpo/lambda": lam, "r2vpo/lambda_next": self.r2vpo_dual.lam, "r2vpo/ratio_var": ratio_var,
                  "r2vpo/ratio_mean": stats.mean(), "r2vpo/ratio_max": stats.ratio_max if stats.num_tokens else 0.0,
                  "r2vpo/eff_adv_flip_frac": stats.to_metrics()["r2vpo/eff_adv_flip_frac"]}
        for name, value in logged.items():
            self._metrics["train"][name].append(float(value))

    def _process_reduction(self) -> LossReduction:
        """Sums over TRL's processes, through accelerate (on the accelerator's device, which the
        collective backend may require)."""
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            return LossReduction()
        return LossReduction(
            all_reduce=lambda t: accelerator.reduce(t.to(accelerator.device), reduction="sum").to(t.device),
            world_size=accelerator.num_processes, rank=accelerator.process_index)

    def _global_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        totals = torch.stack([(values.detach() * mask).sum(), mask.sum().to(values.dtype)])
        totals = self.accelerator.reduce(totals, reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    # ---- checkpoints -------------------------------------------------------------------------------
    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:  # λ is the same on every process: the main one writes it
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, DUAL_STATE_FILE), "w", encoding="utf-8") as f:
                json.dump({"dual": self.r2vpo_dual.state_dict(), "dual_steps": self.r2vpo_dual_steps}, f, indent=1)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, DUAL_STATE_FILE)
        if not os.path.isfile(path):
            raise CheckpointError(f"{checkpoint} has no {DUAL_STATE_FILE}: it was not written by R2VPOGRPOTrainer, "
                                  "so λ cannot be restored (resuming would silently restart λ at init_lambda)")
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        self.r2vpo_dual.load_state_dict(saved["dual"])
        self.r2vpo_dual_steps = int(saved["dual_steps"])
        self._r2vpo_window = None

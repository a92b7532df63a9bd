"""`R2VPOConfig`: every knob of a training run, documented, typed, loadable from YAML.

One dataclass, one field per knob; each field's `help` says what it does, its default and
where it comes from (R2VPO_SPEC.md section or paper). `r2vpo train --help-config` prints
them all. YAML files map one-to-one onto the fields; `key=value` overrides on the command
line are parsed as YAML scalars and type-checked like the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from r2vpo_ascend.algos.aggregation import LOSS_AGG_MODES
from r2vpo_ascend.algos.dual import check_dual_settings
from r2vpo_ascend.algos.dual_settings import R2VPO_SETTINGS
from r2vpo_ascend.algos.errors import ConfigError  # noqa: F401  (re-exported)
from r2vpo_ascend.algos.losses import PolicyLossConfig
from r2vpo_ascend.algos.ratio import RATIO_LEVELS
from r2vpo_ascend.algos.robust import DUAL_VARIANCES, PENALTIES
from r2vpo_ascend.trainer.loss_defaults import describe as describe_loss_default
from r2vpo_ascend.trainer.loss_defaults import resolve_loss_defaults


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: only true/false are booleans (`progress_bar: off` stays a string) and
    `1e-4` is a float (YAML 1.1 wants a dot)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def load_yaml(text: str):
    return yaml.load(text, Loader=_Yaml12Loader)


from r2vpo_ascend.trainer.config_checks import FIXED, MAY_CHANGE, check_ranges, check_resume_config  # noqa: E402,F401


def _f(default: Any, help: str, choices: tuple | None = None, *, on_resume: str = FIXED, **kw):
    meta = {"help": help, "on_resume": on_resume}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


SETTINGS_BY_NAME = {setting.name: setting for setting in R2VPO_SETTINGS}


def _shared(name: str):
    """A field defined in :data:`~r2vpo_ascend.algos.dual_settings.R2VPO_SETTINGS`."""
    setting = SETTINGS_BY_NAME[name]
    return _f(setting.default, setting.help, setting.choices)


@dataclass
class R2VPOConfig:
    # ---- model and data -------------------------------------------------------------
    model: str = _f("tiny", "Model to train: `tiny` (the embedded default: a small Llama-architecture model with "
                    "random weights and an in-process tokenizer, no downloads), a preset name (see `r2vpo info`), "
                    "or a local checkpoint directory.", on_resume=MAY_CHANGE)
    tokenizer: str | None = _f(None, "Tokenizer directory; default: the model's own.")
    trust_remote_code: bool = _f(False, "Run a checkpoint's own modeling/tokenizer code. Off unless you turn it on.",
                                 on_resume=MAY_CHANGE)
    dtype: str = _f("auto", "Training dtype: `auto` (the backend's default: bf16 on accelerators, fp32 on CPU), "
                    "`float32`, `bfloat16`, `float16`.", ("auto", "float32", "bfloat16", "float16"))
    mixed_precision: str = _f("no", "`bf16`: the decoder's forward (training, behaviour log-probs, the KL reference and "
                              "HF generate) runs under torch.autocast in bf16 while the weights, gradients and AdamW "
                              "state stay float32 (`dtype: auto` then means float32 on every backend); the LM head's "
                              "log-probs stay float32. Measured on SmolLM2-135M, one CPU core with AMX: forward + "
                              "backward 2.2x, generation 1.5x faster (slower on a CPU without bf16 units), but after "
                              "one AdamW step at lr 2e-6 the ratio variance V̂ reads 0.29 in bf16 against 0.0014 in "
                              "float32: bf16 rounding, not the policy, then drives R²VPO's λ and PPO's clip on "
                              "replayed samples and later passes (docs/performance.md). `no`: everything in `dtype`. "
                              "Native engine only (DeepSpeed has its own bf16 section).", ("no", "bf16"),
                              on_resume=MAY_CHANGE)
    dataset: str = _f("arithmetic", "Training prompts: `arithmetic` (built-in task), `sequence` (built-in task with "
                      "responses of ≥ 16 tokens: each of `sequence_length` digits plus one, see docs/data.md), a "
                      "built-in benchmark name, a "
                      ".jsonl/.json/.parquet file or directory, or a Hugging Face dataset name.")
    dataset_split: str = _f("train", "Split of `dataset` to train on (built-in benchmarks ship only `test`, and "
                            "gsm8k also `train_sample`; training on a test split must be asked for by name).")
    dataset_size: int = _f(2000, "Number of problems generated for the built-in `arithmetic` task.")
    arithmetic_ops: list = _f(["+", "-"], "Operators of the built-in `arithmetic` task (subset of + - *).")
    arithmetic_terms: int = _f(2, "Operands per problem of the built-in `arithmetic` task.")
    arithmetic_max_digits: int = _f(2, "Largest operand size (digits) for the built-in `arithmetic` task.")
    sequence_length: int = _f(8, "Digits per problem of the built-in `sequence` task (8: answers of 15 characters + EOS = 16 tokens).")
    data_seed: int | None = _f(None, "Seed of the built-in `arithmetic` task's problem pool and of its train / test / "
                               "validation split, and of the held-out rows carved from a local file; default: `seed`. "
                               "Fix it to compare seeds on the same split.")
    problem_key: str = _f("problem", "Dataset column holding the problem text.")
    answer_key: str = _f("answer", "Dataset column holding the reference answer.")
    prompt_template: str | None = _f(None, "Prompt template containing `{problem}`; default: the tokenizer's chat "
                                     "template if it has one, else a plain template (see docs/data.md).")
    system_prompt: str | None = _f(None, "System message used with a chat template.")
    reward: str = _f("auto", "Reward function: `auto` (`arithmetic` for the built-in task, `math_verify` otherwise), "
                     "`arithmetic`, `math_verify`, or `python:module:function`.")
    format_reward_weight: float = _f(0.0, "Weight of the optional \\boxed{} format reward added to math_verify.")
    verify_timeout_s: float = _f(5.0, "Per-completion time limit for math verification (a timeout scores 0).",
                                 on_resume=MAY_CHANGE)
    eval_dataset: str | None = _f(None, "Held-out prompts for periodic evaluation (same forms as `dataset`); "
                                  "when unset: for `arithmetic` a disjoint generated split; for a local file (or a "
                                  "directory without a test file) `eval_size` rows carved from it, seeded by "
                                  "`data_seed`, and left out of training (even with eval_every=0, so that "
                                  "the training rows never depend on it); otherwise the dataset's `test` split.",
                                  on_resume=MAY_CHANGE)
    eval_size: int = _f(128, "Number of held-out problems evaluated (greedy decoding).", on_resume=MAY_CHANGE)
    eval_every: int = _f(10, "Evaluate every N RL steps (0 disables; step 0 and the last step always run if > 0).",
                         on_resume=MAY_CHANGE)
    eval_split: str = _f("test", "Which held-out slice of the built-in `arithmetic` task the evaluation uses: `test` "
                         "(the held-out split) or `validation` (a third slice of the same pool, disjoint from train "
                         "and test, `eval_size` problems; for tuning hyperparameters without touching the test "
                         "split). Other datasets: point `eval_dataset` at a validation set instead.",
                         ("test", "validation"), on_resume=MAY_CHANGE)

    # ---- rollout ------------------------------------------------------------------------
    rollout_engine: str = _f("hf", "Rollout engine: `hf` (transformers generate, always available) or `vllm`.",
                             ("hf", "vllm"), on_resume=MAY_CHANGE)
    vllm_gpu_memory_utilization: float = _f(0.5, "Share of accelerator memory vLLM may take (rollout_engine=vllm).",
                                            on_resume=MAY_CHANGE)
    vllm_sleep_mode: bool = _f(True, "Let vLLM free its memory while the trainer updates (rollout_engine=vllm; "
                               "no-op on CPU).", on_resume=MAY_CHANGE)
    prompts_per_step: int = _f(8, "Prompts sampled per RL step.")
    num_generations: int = _f(8, "Responses per prompt (G, the GRPO group size).")
    max_prompt_length: int = _f(512, "Prompts longer than this (tokens) are truncated from the left.")
    max_new_tokens: int = _f(16, "Maximum response length in tokens.")
    temperature: float = _f(1.0, "Sampling temperature; log-probs for training use the same temperature.")
    top_p: float = _f(1.0, "Nucleus sampling threshold (1.0 = off).")
    top_k: int = _f(0, "Top-k sampling (0 = off).")

    # ---- loss ---------------------------------------------------------------------------
    loss: str = _f("r2vpo", "Policy loss from the registry: `r2vpo`, `ppo_clip` (GRPO), `clip_higher` (DAPO), "
                   "`gspo`, or any name added with `register_policy_loss`.")
    advantage: str = _f("grpo", "Advantage estimator: `grpo`, `dr_grpo`, `rloo`.", ("grpo", "dr_grpo", "rloo"))
    ratio_level: str = _f("token", "R²VPO ratio: per `token`, or per `sequence` (geometric mean, as GSPO).",
                          RATIO_LEVELS)
    center: str = _shared("center")
    loss_agg: str = _f("token-mean", "Loss aggregation: `token-mean` (DAPO), `seq-mean-token-mean` (GRPO), "
                       "`seq-mean-token-sum`, `seq-mean-token-sum-norm` (Dr. GRPO).",
                       LOSS_AGG_MODES)
    # λ and its dual step: one table shared with the TRL and verl integrations (algos/dual_settings.py).
    init_lambda: float = _shared("init_lambda")
    ratio_var_target: float = _shared("ratio_var_target")
    dual_lr: float = _shared("dual_lr")
    dual_update: str = _shared("dual_update")
    lambda_max: float = _shared("lambda_max")
    lambda_min: float = _shared("lambda_min")
    dual_step_max: float | None = _shared("dual_step_max")
    dual_kp: float = _shared("dual_kp")
    dual_kd: float = _shared("dual_kd")
    # Remedies read by this trainer's loss and dual step (docs/algorithms.md "Remedies").
    dual_variance: str = _f("spec", "V̂ the dual step reads: `spec` (the loss's Σm(ρ − c)²/n), `winsorized` (each "
                            "(ρ − c) clipped to ±dual_variance_clip first, so a few outlier tokens cannot make one "
                            "step's V̂ 10⁴× its usual value), or `log_ratio` (M2PO's second moment Σm(log ρ)²/n, "
                            "Zheng et al. 2025). The loss's penalty is unchanged.", DUAL_VARIANCES)
    dual_variance_clip: float = _f(1.0, "κ of `dual_variance: winsorized`: the largest |ρ − c| one token counts with.")
    variance_penalty: str = _f("quadratic", "Penalty of the primal loss on each (ρ − c): `quadratic` (the spec, "
                               "λ·(ρ − c)², gradient grows with the deviation) or `huber` (quadratic for |ρ − c| ≤ "
                               "penalty_huber_kappa, linear beyond, so one outlier's pull is bounded by 2λκ·ρ).",
                               PENALTIES)
    penalty_huber_kappa: float = _f(0.5, "κ of `variance_penalty: huber`.")
    ratio_grad_cap: float | None = _f(None, "Truncated importance weight C (TIS, Yao et al. 2025; V-trace's ρ̄, "
                                      "Espeholt et al. 2018): a token's gradient weight is min(ρ, C) instead of ρ "
                                      "(values unchanged), which bounds what stale tokens with ρ ≫ 1 contribute. None: "
                                      "off (the spec).")
    clip_eps_low: float | None = _f(None, "ε (lower) of the clipping baselines; default per loss: 0.2 for "
                                    "`ppo_clip` and `clip_higher`, 3e-4 for `gspo` (GSPO paper).")
    clip_eps_high: float | None = _f(None, "ε (upper); default per loss: 0.2 for `ppo_clip`, 0.28 for "
                                     "`clip_higher` (DAPO), 4e-4 for `gspo`.")
    max_response_length: int | None = _f(None, "L, the constant length normaliser of `loss_agg: "
                                         "seq-mean-token-sum-norm` (Dr. GRPO); default: `max_new_tokens`.")
    dual_clip: float | None = _f(None, "Dual-clip bound c > 1 of the clipping baselines: the loss of an A < 0 "
                                 "token is capped at −c·A (tokens with ρ > c get no gradient). None: off.")
    grad_split_every: int = _f(0, "Every N RL steps, log the split of the R²VPO gradient in parameter space "
                               "(grad_param/*: advantage vs variance term, their cosine, the top-1% tokens' share; "
                               "one more forward and three backwards of a mini-batch). 0: off. The per-token split "
                               "(grad/*) is logged every step.")
    kl_coef: float = _f(0.0, "β of the KL(π_θ‖π_ref) penalty (0 disables the reference model).")
    kl_estimator: str = _f("k3", "KL estimator: `k1`, `k2` or `k3`.", ("k1", "k2", "k3"))
    entropy_coef: float = _f(0.0, "Entropy bonus coefficient (subtracted from the loss).")

    # ---- optimisation -------------------------------------------------------------------
    steps: int = _f(100, "Number of RL steps (one rollout batch each); 0 runs only the SFT warm start and the "
                    "step-0 evaluation, then saves the model to `<output_dir>/final` (a warm start to share).",
                    on_resume=MAY_CHANGE)
    updates_per_step: int = _f(1, "Mini-batches per pass over the update batch: the batch is split into this many "
                               "mini-batches, one optimiser step each (>1 makes later mini-batches off-policy; verl's "
                               "`ppo_mini_batch_size` = batch / updates_per_step).")
    ppo_epochs: int | None = _f(None, "Passes over each update batch (verl's `ppo_epochs`, TRL's `num_iterations`): "
                                "every pass reshuffles the batch and takes `updates_per_step` optimiser steps, so one "
                                "RL step takes ppo_epochs × updates_per_step optimiser steps on the same samples "
                                "(behaviour log-probs fixed at sampling time); " + describe_loss_default("ppo_epochs")
                                + " (trainer/loss_defaults.py).")
    micro_batch_size: int = _f(64, "Sequences per forward/backward (gradient accumulation inside a mini-batch).",
                               on_resume=MAY_CHANGE)
    gradient_checkpointing: bool = _f(False, "Recompute each decoder layer's activations in the backward instead of "
                                      "keeping them (about 1/3 more compute, activation memory ~1 layer's worth): for "
                                      "long responses or big models. Generation is unaffected.", on_resume=MAY_CHANGE)
    lr: float = _f(1e-5, "Learning rate (AdamW).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    adam_betas: list = _f([0.9, 0.999], "AdamW betas.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).")
    lr_scheduler: str = _f("constant", "Learning-rate schedule: `constant`, `linear`, `cosine` (after warm-up).",
                           ("constant", "linear", "cosine"))
    warmup_steps: int = _f(0, "Linear learning-rate warm-up, in optimiser steps.")
    sft_steps: int = _f(0, "Supervised warm-start steps on (prompt, answer) pairs before RL (the embedded default "
                        "uses this; 0 disables).")
    sft_lr: float = _f(1e-3, "Learning rate of the supervised warm start.")
    sft_batch_size: int = _f(32, "Batch size of the supervised warm start.")

    # ---- replay -------------------------------------------------------------------------
    replay_ratio: float | None = _f(None, "Fraction of each update batch drawn from the replay buffer (0 = "
                                    "on-policy; 0.5 = as many replayed as fresh samples); "
                                    + describe_loss_default("replay_ratio") + " (trainer/loss_defaults.py).")
    max_staleness: int = _f(4, "Replayed samples older than this many policy versions are evicted.")
    replay_capacity: int = _f(4096, "Replay buffer capacity in responses (oldest evicted first).")

    # ---- run ----------------------------------------------------------------------------
    seed: int = _f(0, "Random seed (data order, sampling, model init).")
    output_dir: str = _f("runs/r2vpo", "Where metrics.jsonl, checkpoints, plots and the final model go.",
                         on_resume=MAY_CHANGE)
    save_every: int = _f(0, "Checkpoint every N RL steps (0: only at the end).", on_resume=MAY_CHANGE)
    keep_checkpoints: int = _f(2, "Number of checkpoints kept on disk.", on_resume=MAY_CHANGE)
    resume: str = _f("auto", "`auto` (resume from the newest checkpoint in output_dir if any), `never`, or a path.",
                     on_resume=MAY_CHANGE)
    engine: str = _f("native", "Training engine: `native` (plain PyTorch: one process on the CPU or one device, or "
                     "data parallel over torchrun processes with gradients summed by all-reduce) or `deepspeed` "
                     "(ZeRO stage from `deepspeed_config`).", ("native", "deepspeed"))
    deepspeed_config: str | None = _f(None, "DeepSpeed JSON config (ZeRO stage etc.) for engine=deepspeed; the "
                                      "engine fills in batch size, accumulation, clipping and precision (see "
                                      "docs/distributed.md).")
    collective_timeout_s: float = _f(1800.0, "Process-group timeout in seconds with several processes: a collective "
                                     "that waits longer (a rank died or hangs) fails the job instead of hanging it. "
                                     "Keep it above the longest step (generation + update + checkpoint).",
                                     on_resume=MAY_CHANGE)
    report_to: list = _f(["jsonl"], "Loggers: any of `jsonl` (always on), `tensorboard`, `wandb`.",
                         on_resume=MAY_CHANGE)
    wandb_project: str = _f("r2vpo-ascend", "W&B project name when report_to has `wandb`.", on_resume=MAY_CHANGE)
    progress_bar: str = _f("auto", "Progress bar: `auto` (only on a terminal), `on`, `off`.", ("auto", "on", "off"),
                           on_resume=MAY_CHANGE)
    log_every: int = _f(1, "Print a one-line summary every N steps (metrics.jsonl gets every step).",
                        on_resume=MAY_CHANGE)
    num_threads: int = _f(0, "CPU threads for torch (0: leave torch's default).", on_resume=MAY_CHANGE)
    max_bad_steps: int = _f(0, "RL steps with a non-finite loss or gradient (their optimiser step is skipped) "
                            "tolerated before the run stops with an error; counted in metrics as "
                            "nonfinite/skipped_steps (docs/reliability.md).", on_resume=MAY_CHANGE)

    # ------------------------------------------------------------------------------------
    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            setattr(self, f.name, _coerce(f.name, value, hints[f.name]))
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"config field `{f.name}`: {getattr(self, f.name)!r} is not one of {list(choices)}")
        # per-loss defaults of the reuse knobs (None: not set by the user); remembered for replace()
        self._loss_defaulted = resolve_loss_defaults(self) | getattr(self, "_loss_defaulted", frozenset())
        check_ranges(self)
        if self.eval_split == "validation" and (self.eval_dataset or self.dataset) not in ("arithmetic", "sequence"):
            raise ConfigError("config field `eval_split: validation` is built in only for the `arithmetic` and "
                              "`sequence` tasks; "
                              "for other datasets set `eval_dataset` to a validation set")
        if not 0.0 <= self.replay_ratio < 1.0:
            raise ConfigError(f"config field `replay_ratio` must be in [0, 1), got {self.replay_ratio}")
        if self.collective_timeout_s <= 0:
            raise ConfigError(f"config field `collective_timeout_s` must be > 0 seconds, got {self.collective_timeout_s}")
        if self.temperature <= 0:
            raise ConfigError(f"config field `temperature` must be > 0, got {self.temperature}")
        if self.mixed_precision != "no" and self.dtype in ("bfloat16", "float16"):
            raise ConfigError(f"config field `mixed_precision: {self.mixed_precision}` keeps float32 weights under a "
                              f"bf16 compute dtype; `dtype: {self.dtype}` already trains in half precision: set "
                              "`dtype: float32` (or `auto`) or `mixed_precision: no`")
        if self.mixed_precision != "no" and self.engine == "deepspeed":
            raise ConfigError("config field `mixed_precision` is for the native engine; with `engine: deepspeed` "
                              "set bf16 in `deepspeed_config` (DeepSpeed keeps float32 master weights itself)")
        self.policy_loss_config()  # the loss and dual settings are validated where they are used
        check_dual_settings(self.init_lambda, self.ratio_var_target, self.dual_lr, self.dual_update,
                            self.lambda_max, self.lambda_min, self.dual_step_max, kp=self.dual_kp, kd=self.dual_kd)
        if self.lambda_max < self.lambda_min:
            raise ConfigError(f"config fields `lambda_min`/`lambda_max` need 0 <= lambda_min <= lambda_max, "
                              f"got {self.lambda_min}/{self.lambda_max}")
        if not self.lambda_min <= self.init_lambda <= self.lambda_max:
            raise ConfigError(f"config field `init_lambda` ({self.init_lambda}) must be within [lambda_min, "
                              f"lambda_max] = [{self.lambda_min}, {self.lambda_max}]")
        if len(self.adam_betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                                and 0.0 <= b < 1.0 for b in self.adam_betas):
            raise ConfigError(f"config field `adam_betas` must be two numbers in [0, 1), got {self.adam_betas!r}")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ConfigError(f"config field `output_dir`: {self.output_dir} is a file, not a directory")
        if self.resume not in ("auto", "never") and not Path(self.resume).exists():
            raise ConfigError(f"config field `resume`: checkpoint path {self.resume!r} does not exist")
        unknown = set(self.report_to) - {"jsonl", "tensorboard", "wandb"}
        if unknown:
            raise ConfigError(f"config field `report_to`: unknown logger(s) {sorted(unknown)}; "
                              "choose from jsonl, tensorboard, wandb")

    def policy_loss_config(self) -> PolicyLossConfig:
        """The loss contract of this run (validated on construction); L of Dr. GRPO defaults to
        `max_new_tokens`, the longest response, so it is the same for every micro-batch."""
        return PolicyLossConfig(
            ratio_level=self.ratio_level, center=self.center, loss_agg=self.loss_agg,
            clip_eps_low=self.clip_eps_low, clip_eps_high=self.clip_eps_high, dual_clip=self.dual_clip,
            max_response_length=self.max_new_tokens if self.max_response_length is None else self.max_response_length,
            variance_penalty=self.variance_penalty, penalty_huber_kappa=self.penalty_huber_kappa,
            ratio_grad_cap=self.ratio_grad_cap)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> "R2VPOConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"{source}: unknown config key `{key}`{hint}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "R2VPOConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        try:
            values = load_yaml(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of key: value, got {type(values).__name__}")
        values.update(parse_overrides(overrides or []))
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes) -> "R2VPOConfig":
        if "loss" in changes:  # fields that took the old loss's default take the new loss's
            changes = {**{n: None for n in getattr(self, "_loss_defaulted", ())}, **changes}
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls) -> str:
        """Every field with its type, default and help text (for `r2vpo train --help-config`)."""
        hints = typing.get_type_hints(cls)
        lines = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            resume = "may change on resume" if f.metadata.get("on_resume") == MAY_CHANGE else "fixed on resume"
            lines.append(f"{f.name} ({_type_name(hints[f.name])}, default {default!r}, {resume})\n"
                         f"    {f.metadata['help']}")
        return "\n".join(lines)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["lr=1e-5", "report_to=[jsonl,tensorboard]"]` → dict, values parsed as YAML scalars."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            out[key.strip()] = load_yaml(raw) if raw != "" else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(name: str, value: Any, tp) -> Any:
    """Check `value` against the annotation `tp`; accept int for float and str paths; else ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    expected = origin or tp
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is list and isinstance(value, tuple):
        return list(value)
    if expected is list and isinstance(value, str):
        return [value]
    if expected is str and isinstance(value, Path):
        return str(value)
    if expected is bool and isinstance(value, bool):
        return value
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config field `{name}` expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")

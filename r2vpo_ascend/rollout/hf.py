"""Rollout with transformers' `generate`: batched, left-padded, with KV cache. Always available.

The engine shares the training module itself, so `sync_weights` has nothing to copy: the
next `generate` already samples from the updated weights. With a `compute_dtype` (config
`mixed_precision: bf16`) it samples under torch.autocast in that dtype, as the training forward runs.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import device
from r2vpo_ascend.rollout.base import Generation, RolloutEngine, RolloutError, SamplingConfig, find_eos_ids


class HFGenerateEngine(RolloutEngine):  # sleep/wake: nothing held outside the model
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, batch_size: int = 256,
                 compute_dtype: torch.dtype | None = None):
        if tokenizer.pad_token_id is None:
            raise RolloutError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its EOS token)")
        self.model = model
        self.pad_id = tokenizer.pad_token_id
        self.eos_ids = find_eos_ids(model, tokenizer)
        self.batch_size = batch_size  # prompts × n per generate call, bounds activation memory
        self.compute_dtype = compute_dtype

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, n: int = 1) -> list[list[Generation]]:
        if not prompts:
            raise RolloutError("generate() got no prompts")
        if any(len(p) == 0 for p in prompts):
            raise RolloutError("generate() got an empty prompt (0 tokens)")
        was_training = self.model.training
        self.model.eval()
        try:
            # inference_mode rather than no_grad: no autograd bookkeeping (version counters, view
            # tracking) on the thousands of small ops of a decode loop (~10% of it on CPU). Under
            # autocast no_grad instead: measured on SmolLM2, bf16 generation was 1.49x float32's
            # speed under no_grad and 0.90x under inference_mode, where the weights' bf16 casts
            # were evidently not reused from one decoded token to the next (docs/performance.md).
            grad_off = torch.no_grad() if self.compute_dtype is not None else torch.inference_mode()
            with grad_off, device.autocast(next(self.model.parameters()).device, self.compute_dtype):
                per_call = max(1, self.batch_size // n)
                out: list[list[Generation]] = []
                for start in range(0, len(prompts), per_call):
                    out.extend(self._generate_chunk(prompts[start:start + per_call], sampling, n))
        finally:
            self.model.train(was_training)
            _replace_inference_tensors(self.model)
        return out

    def _generate_chunk(self, prompts, sampling: SamplingConfig, n: int) -> list[list[Generation]]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, p in enumerate(prompts):  # left padding: the last prompt token sits at the same column
            input_ids[i, width - len(p):] = torch.tensor(p)
            attention_mask[i, width - len(p):] = 1
        kwargs = dict(max_new_tokens=sampling.max_new_tokens, num_return_sequences=n, use_cache=True,
                      pad_token_id=self.pad_id, eos_token_id=self.eos_ids)
        if sampling.greedy:
            kwargs.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature,
                          top_p=sampling.top_p, top_k=sampling.top_k or None)
        sequences = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs
        )
        responses = sequences[:, width:].tolist()
        eos = set(self.eos_ids)
        result = []
        for i, prompt in enumerate(prompts):
            group = []
            for tokens in responses[i * n:(i + 1) * n]:
                cut = next((k for k, t in enumerate(tokens) if t in eos), None)
                finished = cut is not None
                group.append(Generation(list(prompt), tokens[:cut + 1] if finished else tokens, finished))
            result.append(group)
        return result

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())


def _replace_inference_tensors(model: torch.nn.Module) -> None:
    """Swap any tensor a module cached during `generate` (a RoPE table grown on the fly, as some
    checkpoints' own modeling code does) for a normal copy: autograd refuses to save an
    inference-mode tensor for backward, so the next training forward would fail on it."""
    for module in model.modules():
        for store in (module._buffers, module.__dict__):
            for name, value in list(store.items()):
                if isinstance(value, torch.Tensor) and value.is_inference():
                    store[name] = value.clone()

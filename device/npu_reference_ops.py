"""`ReferenceNpuOps`: a plain-PyTorch stand-in for the four torch_npu fused ops we call.

It implements each op's *documented* semantics (Ascend Extension for PyTorch API reference,
links in docs/ascend.md), so that tests/test_npu_patches.py can check on CPU that our glue in
device/npu_patches.py passes the right arguments in the right layout. It says nothing about
the real kernels' numerics or speed: that needs an NPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ReferenceNpuOps:
    """Drop-in for the `torch_npu` module in `apply_npu_patches(ops_module=...)`.

    Arguments the glue never passes (pse, prefix, varlen lengths, dropout) are rejected
    rather than silently ignored, so a change in the glue shows up in the tests.
    """

    @staticmethod
    def npu_rms_norm(x: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, rstd): y = x / sqrt(mean(x^2, last dim) + eps) * gamma, rstd kept for backward."""
        if gamma.dtype != x.dtype:
            raise TypeError(f"npu_rms_norm: gamma dtype {gamma.dtype} must match x dtype {x.dtype}")
        x32 = x.float()
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + epsilon)
        return (x32 * rstd * gamma.float()).to(x.dtype), rstd

    @staticmethod
    def npu_rotary_mul(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, rotary_mode: str = "half") -> torch.Tensor:
        """r1 * x + r2 * rotate(x); "half": rotate(x) = cat(-x2, x1) with x1, x2 = chunk(x, 2, -1)."""
        if x.dim() != 4 or r1.dim() != 4 or r2.dim() != 4:
            raise ValueError("npu_rotary_mul: x, r1 and r2 must be 4-D")
        if rotary_mode == "half":
            x1, x2 = torch.chunk(x, 2, dim=-1)
            rotated = torch.cat((-x2, x1), dim=-1)
        elif rotary_mode == "interleave":
            rotated = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
        else:
            raise ValueError(f"npu_rotary_mul: rotary_mode must be 'half' or 'interleave', got {rotary_mode!r}")
        return r1 * x + r2 * rotated

    @staticmethod
    def npu_swiglu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """silu(A) * B with A, B the first and second halves of x along `dim`."""
        if x.shape[dim] % 2:
            raise ValueError(f"npu_swiglu: size {x.shape[dim]} of dim {dim} must be even")
        a, b = torch.chunk(x, 2, dim=dim)
        return F.silu(a) * b

    @staticmethod
    def npu_fusion_attention(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        head_num: int,
        input_layout: str,
        pse=None,
        padding_mask=None,
        atten_mask: torch.Tensor | None = None,
        scale: float = 1.0,
        keep_prob: float = 1.0,
        pre_tockens: int = 2147483647,
        next_tockens: int = 2147483647,
        inner_precise: int = 0,
        prefix=None,
        actual_seq_qlen=None,
        actual_seq_kvlen=None,
        sparse_mode: int = 0,
        gen_mask_parallel: bool = True,
        sync: bool = False,
    ) -> tuple:
        """softmax(scale * q k^T, masked where atten_mask is True) v, for BNSD / BSND layouts.

        sparse_mode 0: `atten_mask` as given (shape SS, 11SS, B1SS or BNSS); 2: causal aligned
        top-left; 3: causal aligned bottom-right (for 2 and 3 `atten_mask` must be the
        compressed 2048x2048 upper-triangular mask). Key/value may have fewer heads (GQA).
        Rows with nothing to attend to give 0. Returns the op's 7-tuple; only [0] is real.
        """
        if pse is not None or padding_mask is not None or prefix is not None or actual_seq_qlen or actual_seq_kvlen:
            raise ValueError("npu_fusion_attention stand-in: pse, padding_mask, prefix and varlen are not modelled")
        if keep_prob != 1.0:
            raise ValueError("npu_fusion_attention stand-in: dropout (keep_prob < 1) is not modelled")
        if input_layout not in ("BNSD", "BSND"):
            raise ValueError(f"npu_fusion_attention stand-in: layout {input_layout!r} is not modelled")
        if input_layout == "BSND":
            query, key, value = (t.transpose(1, 2) for t in (query, key, value))
        batch, heads, q_len, _ = query.shape
        kv_heads, kv_len = key.shape[1], key.shape[2]
        if head_num != heads or heads % kv_heads:
            raise ValueError(f"head_num={head_num}: query has {heads} heads, key/value {kv_heads} (must divide)")

        if sparse_mode == 0:
            masked = atten_mask
        elif sparse_mode in (2, 3):
            if atten_mask is None or tuple(atten_mask.shape) != (2048, 2048):
                raise ValueError("sparse_mode 2/3 expect the compressed 2048x2048 causal atten_mask")
            shift = 0 if sparse_mode == 2 else kv_len - q_len
            rows = torch.arange(q_len, device=query.device)[:, None]
            masked = torch.arange(kv_len, device=query.device)[None, :] > rows + shift
        else:
            raise ValueError(f"npu_fusion_attention stand-in: sparse_mode {sparse_mode} is not modelled")
        if masked is not None and masked.dtype != torch.bool:
            raise TypeError("atten_mask must be bool (True = masked out)")

        group = heads // kv_heads
        key = key.repeat_interleave(group, dim=1)
        value = value.repeat_interleave(group, dim=1)
        scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
        if masked is not None:
            scores = scores.masked_fill(masked, float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked rows -> 0
        out = torch.matmul(probs, value.float()).to(query.dtype)
        if input_layout == "BSND":
            out = out.transpose(1, 2)
        return out, None, None, None, 0, 0, 0

"""Block-diagonal self-attention over the packed token sequence: a token attends only to its own crop.

Backends (resolved once per device type, and logged):
- "xformers": one `memory_efficient_attention` call over the whole packed sequence with a
  `BlockDiagonalMask` built from the crops' lengths (CUDA only).
- "sdpa": PyTorch `scaled_dot_product_attention` once per size group, batched over that group's crops.
- "auto": xformers on CUDA tensors when it imports, sdpa otherwise.
xformers warns at import on machines without CUDA, so it is imported only when a CUDA tensor asks for it.

xformers runs only fp16/bf16 attention (`attention_kernel`): an xformers wheel built for torch 2.11 / CUDA 13 may
carry only its flash operator, which has no fp32 path, so fp32 attention (an fp32 run) takes the sdpa path.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from timm.layers import Attention

from .packing import PackedLayout, cls_rows

ATTN_BACKENDS = ("auto", "xformers", "sdpa")
HALF_DTYPES = (torch.float16, torch.bfloat16)

_logger = logging.getLogger("fastdino.models")


@functools.cache
def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return False
    return True


def check_attn_backend(backend: str) -> str:
    if backend not in ATTN_BACKENDS:
        raise ValueError(f"attn_backend must be one of {ATTN_BACKENDS}, got {backend!r}")
    return backend


_resolved: dict[tuple[str, str], str] = {}


@torch.compiler.assume_constant_result  # torch.compile evaluates it while tracing instead of tracing it
def resolve_attn_backend(backend: str, device_type: str) -> str:
    """'auto' -> 'xformers' on CUDA when xformers imports, else 'sdpa'. A forced 'xformers' needs CUDA and
    xformers. The choice is made and logged once per (request, device type)."""
    key = (backend, device_type)
    if key not in _resolved:
        _resolved[key] = _resolve(backend, device_type)
        note = " for fp16/bf16 attention, sdpa for fp32" if _resolved[key] == "xformers" else ""
        _logger.info("packed attention backend on %s: %s%s (requested %r)", device_type, _resolved[key], note, backend)
    return _resolved[key]


def _resolve(backend: str, device_type: str) -> str:
    check_attn_backend(backend)
    if backend == "xformers":
        if device_type != "cuda":
            raise RuntimeError(
                f"attn_backend='xformers' needs CUDA tensors, got {device_type} tensors; "
                "use attn_backend='sdpa' (or 'auto') on this device"
            )
        if not xformers_available():
            raise RuntimeError("attn_backend='xformers' but xformers does not import; pip install xformers, "
                               "or use attn_backend='sdpa'")
        return "xformers"
    if backend == "auto":
        return "xformers" if device_type == "cuda" and xformers_available() else "sdpa"
    return backend


def attention_kernel(backend: str, dtype: torch.dtype) -> str:
    """The kernel one packed attention call runs, from the resolved backend and the dtype of q/k/v: "xformers" only
    for fp16/bf16 (an xformers wheel may have only its flash operator, fp16/bf16 only), "sdpa" for other dtypes."""
    if backend == "xformers" and dtype not in HALF_DTYPES:
        return "sdpa"
    return backend


_masks: dict = {}


def block_diagonal_mask(layout: PackedLayout, device: torch.device, cls_queries: bool = False):
    """xformers' `BlockDiagonalMask` for the layout, built once per (layout, device): it holds the crops' start
    offsets. Every query attends to the keys of its own crop only. cls_queries (the CLS-only last block): one query
    per crop, its CLS token, against all of the crop's keys: `BlockDiagonalMask.from_seqlens([1] * crops, seqlens)`."""
    key = (layout, device, cls_queries)
    if key not in _masks:
        from xformers.ops import fmha

        q_seqlen = [1] * layout.n_crops if cls_queries else None
        _masks[key] = fmha.attn_bias.BlockDiagonalMask.from_seqlens(q_seqlen or layout.seqlens, layout.seqlens,
                                                                    device=device)
    return _masks[key]


def block_diagonal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, *, dropout_p: float,
                             scale: float) -> torch.Tensor:
    """Attention over the packed sequence: q [1, Nq, heads, head_dim], k and v [1, N, heads, head_dim] ->
    [1, Nq, heads, head_dim], by xformers' `memory_efficient_attention` with the mask (CUDA). The tests run this
    path on CPU with a dense stand-in for the kernel (tests/_attention_dense.py)."""
    from xformers.ops import memory_efficient_attention

    return memory_efficient_attention(q, k, v, attn_bias=mask, p=dropout_p, scale=scale)


def _attn_dim(attn: Attention) -> int:
    """heads * head_dim. timm's Attention has `attn_dim` from 1.0.23 on; computed on older timm."""
    return getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)


def packed_attention(attn: Attention, x: torch.Tensor, layout: PackedLayout, backend: str,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
    """timm's `Attention.forward` for a packed [N, D] sequence, with its own qkv / norms / proj modules, so the
    weights (and the state dict) stay timm's. rows: the output at these rows only, [len(rows), D] (every query is
    still attended; the output norm and projection, per token, run on these rows only)."""
    n, attn_dim = x.shape[0], _attn_dim(attn)
    qkv = attn.qkv(x).view(n, 3, attn.num_heads, attn.head_dim)
    dropout_p = attn.attn_drop.p if attn.training else 0.0
    kernel = attention_kernel(backend, qkv.dtype)
    if kernel == "xformers":
        q, k, v = qkv.unsqueeze(0).unbind(2)  # [1, N, heads, head_dim]
        q, k = attn.q_norm(q), attn.k_norm(k)
        out = block_diagonal_attention(q, k, v, block_diagonal_mask(layout, x.device), dropout_p=dropout_p,
                                       scale=attn.scale)
        out = out.reshape(n, attn_dim)
    else:
        outs = []
        for g, qkv_g in zip(layout.groups, qkv.split(layout.group_tokens), strict=True):
            qkv_g = qkv_g.view(g.crops, g.seq_len, 3, attn.num_heads, attn.head_dim)
            q, k, v = qkv_g.permute(2, 0, 3, 1, 4).unbind(0)  # [crops, heads, seq_len, head_dim]
            q, k = attn.q_norm(q), attn.k_norm(k)
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=attn.scale)
            outs.append(o.transpose(1, 2).reshape(g.crops * g.seq_len, attn_dim))
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
    if rows is not None:
        out = out.index_select(0, rows)
    out = attn.norm(out)
    out = attn.proj(out)
    return attn.proj_drop(out)


def packed_cls_attention(attn: Attention, x: torch.Tensor, layout: PackedLayout, backend: str) -> torch.Tensor:
    """`packed_attention`'s output at the CLS rows only, [n_crops, D]: keys and values from every token, but
    queries (and the output projection) for one token per crop. DINO reads only the CLS token after the last
    block, so there this is the same result for about a twelfth of the block's work on the other tokens."""
    n, dim = x.shape[0], _attn_dim(attn)
    w_q, w_kv = attn.qkv.weight.split([dim, 2 * dim])
    b_q, b_kv = attn.qkv.bias.split([dim, 2 * dim]) if attn.qkv.bias is not None else (None, None)
    kv = F.linear(x, w_kv, b_kv).view(n, 2, attn.num_heads, attn.head_dim)
    q = F.linear(cls_rows(x, layout), w_q, b_q).view(layout.n_crops, attn.num_heads, attn.head_dim)
    dropout_p = attn.attn_drop.p if attn.training else 0.0
    kernel = attention_kernel(backend, q.dtype)
    if kernel == "xformers":
        k, v = kv.unsqueeze(0).unbind(2)  # [1, N, heads, head_dim]
        q, k = attn.q_norm(q.unsqueeze(0)), attn.k_norm(k)
        out = block_diagonal_attention(q, k, v, block_diagonal_mask(layout, x.device, cls_queries=True),
                                       dropout_p=dropout_p, scale=attn.scale)
        out = out.reshape(layout.n_crops, dim)
    else:
        outs = []
        cls_groups = zip(layout.groups, q.split([g.crops for g in layout.groups]), kv.split(layout.group_tokens),
                         strict=True)
        for g, q_g, kv_g in cls_groups:
            k, v = kv_g.view(g.crops, g.seq_len, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            q_g, k = attn.q_norm(q_g.unsqueeze(2)), attn.k_norm(k)  # q_g: [crops, heads, 1, head_dim]
            o = F.scaled_dot_product_attention(q_g, k, v, dropout_p=dropout_p, scale=attn.scale)
            outs.append(o.reshape(g.crops, dim))
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return attn.proj_drop(attn.proj(attn.norm(out)))


def cls_attention_map(attn: Attention, x: torch.Tensor, grid: tuple[int, int], n_prefix: int = 1) -> torch.Tensor:
    """Softmax attention of the CLS token to every patch, per head: x [B, 1 + h*w, D] -> [B, heads, h, w]."""
    b, n, _ = x.shape
    q, k, _ = attn.qkv(x).view(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    probs = (q[:, :, :1] * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, heads, 1, N]
    return probs[:, :, 0, n_prefix:].reshape(b, attn.num_heads, *grid)

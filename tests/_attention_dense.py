"""A stand-in for xformers' kernel, for the tests only: it lets CPU tests run the packed ViT's CUDA xformers path.

`run_xformers_path_densely(monkeypatch)` makes attn_backend="xformers" run on CPU tensors of any dtype through the
code of the CUDA path (the same `block_diagonal_mask`, the same pack and unpack of q/k/v and of the output), with
only xformers' `memory_efficient_attention` replaced by `dense_block_diagonal_attention`: SDPA over the mask that
xformers itself materialises to a dense [queries, keys] bias (0 inside a crop, -inf elsewhere). Memory grows with
the square of the packed length, so it is for small test inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastdino.models import attention as attn_mod


def dense_block_diagonal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, *, dropout_p: float,
                                   scale: float) -> torch.Tensor:
    """`attention.block_diagonal_attention` (q [1, Nq, heads, head_dim], k and v [1, N, heads, head_dim] ->
    [1, Nq, heads, head_dim]) on any device: the xformers mask materialised by xformers, then SDPA."""
    bias = mask.materialize((q.shape[1], k.shape[1]), dtype=q.dtype, device=q.device)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias,
                                         dropout_p=dropout_p, scale=scale)
    return out.transpose(1, 2)


def run_xformers_path_densely(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Until the test ends, backend "xformers" on CPU tensors of every dtype takes the xformers code path with the
    dense kernel. Returns the list that records (queries, keys) of each attention call."""
    calls = []

    def dense(q, k, v, mask, *, dropout_p, scale):
        calls.append((q.shape[1], k.shape[1]))
        return dense_block_diagonal_attention(q, k, v, mask, dropout_p=dropout_p, scale=scale)

    monkeypatch.setattr(attn_mod, "block_diagonal_attention", dense)
    # the dense kernel has no operator limits (it is SDPA): the xformers path for fp32 too, as for fp16/bf16
    monkeypatch.setattr(attn_mod, "attention_kernel", lambda backend, dtype: backend)
    # the backend the product resolves only for CUDA tensors, resolved for CPU ones (the entry goes with the test)
    monkeypatch.setitem(attn_mod._resolved, ("xformers", "cpu"), "xformers")
    return calls

"""The CUDA code paths of the packed ViT, proven on CPU: the xformers path all but its kernel, and older timm.

`run_xformers_path_densely` (tests/_attention_dense.py) runs the code of the CUDA xformers path (the same
`block_diagonal_mask`, the same pack and unpack of q/k/v and of the output) on CPU and replaces only
`memory_efficient_attention` by SDPA over the mask xformers itself materialises. Compared with the per-size
reference, values and gradients, on several view sets (odd sizes, unequal batches, repeated sizes), train and eval;
plus the fp16/bf16-only selection of xformers.
"""

import pytest
import torch
from _attention_dense import dense_block_diagonal_attention, run_xformers_path_densely
from test_models import VIEW_SETS, assert_close_scaled, features_and_grads, make_views, tiny_vit

from fastdino.models import PackedViT, reference_forward_views
from fastdino.models import attention as attn_mod
from fastdino.models.attention import (
    attention_kernel,
    block_diagonal_mask,
    packed_attention,
    packed_cls_attention,
    xformers_available,
)
from fastdino.models.packing import packed_layout

pytestmark = pytest.mark.skipif(not xformers_available(), reason="xformers is not installed")

# The view sets of test_models plus one with unequal batches and a size that repeats after another size.
CASES = {**{k: (p, [(b, s) for s in sizes]) for k, (p, sizes, b) in VIEW_SETS.items()},
         "p8-unequal": (8, [(3, 64), (1, 40), (2, 64), (2, 40), (2, 40), (1, 23)])}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def views_of(spec, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, s, s, generator=g) for b, s in spec]


def expected_mask(layout, cls_queries=False):
    """The block-diagonal mask written from the layout alone: 0 where query and key belong to one crop."""
    key_crop = torch.repeat_interleave(torch.arange(layout.n_crops), torch.tensor(layout.seqlens))
    query_crop = torch.arange(layout.n_crops) if cls_queries else key_crop
    same = query_crop[:, None] == key_crop[None, :]
    return torch.zeros(same.shape).masked_fill_(~same, float("-inf"))


@pytest.mark.parametrize("case", list(CASES))
def test_block_diagonal_masks_match_the_layout(case):
    patch, spec = CASES[case]
    layout = packed_layout(tuple((b, 3, s, s) for b, s in spec), patch)
    full = block_diagonal_mask(layout, torch.device("cpu"))
    cls = block_diagonal_mask(layout, torch.device("cpu"), cls_queries=True)
    assert block_diagonal_mask(layout, torch.device("cpu")) is full  # built once per layout
    n = layout.n_tokens
    torch.testing.assert_close(full.materialize((n, n)), expected_mask(layout), rtol=0, atol=0)
    torch.testing.assert_close(cls.materialize((layout.n_crops, n)), expected_mask(layout, cls_queries=True),
                               rtol=0, atol=0)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("train", [False, True])
def test_xformers_path_with_materialized_masks_matches_per_size_reference(case, train, monkeypatch):
    patch, spec = CASES[case]
    model = tiny_vit(patch, attn_backend="xformers").train(train)
    views = views_of(spec)
    calls = run_xformers_path_densely(monkeypatch)
    out, grads = features_and_grads(model, views, model.forward_views)
    ref, ref_grads = features_and_grads(model, views, lambda v: reference_forward_views(model, v))
    layout = packed_layout(tuple(tuple(v.shape) for v in views), patch)
    # Every block went through the xformers code path: the full mask, then the CLS-only mask in the last block.
    assert calls == [(layout.n_tokens, layout.n_tokens), (layout.n_crops, layout.n_tokens)]
    assert out.shape == (sum(b for b, _ in spec), model.embed_dim)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    assert grads.keys() == ref_grads.keys() == {n for n, _ in model.named_parameters()}
    for name in grads:
        assert_close_scaled(grads[name], ref_grads[name], msg=name)


def test_dense_and_sdpa_paths_agree_on_one_block(monkeypatch):
    """The two packed paths of one attention module, full and CLS-only, on the same packed input."""
    model = tiny_vit(8).eval()
    attn = model.timm_model.blocks[0].attn
    views = make_views([64, 64, 44, 28, 17], 2)
    layout = packed_layout(tuple(tuple(v.shape) for v in views), 8)
    x = torch.randn(layout.n_tokens, model.embed_dim)
    calls = run_xformers_path_densely(monkeypatch)
    with torch.no_grad():
        for fn in (packed_attention, packed_cls_attention):
            torch.testing.assert_close(fn(attn, x, layout, "xformers"), fn(attn, x, layout, "sdpa"), atol=1e-5,
                                       rtol=1e-4)
    assert calls == [(layout.n_tokens, layout.n_tokens), (layout.n_crops, layout.n_tokens)]


def test_xformers_kernel_only_for_half_precision(monkeypatch):
    for dtype in (torch.float16, torch.bfloat16):
        assert attention_kernel("xformers", dtype) == "xformers"
    for dtype in (torch.float32, torch.float64):
        assert attention_kernel("xformers", dtype) == "sdpa"
    for dtype in (torch.float32, torch.bfloat16):
        assert attention_kernel("sdpa", dtype) == "sdpa"
    run_xformers_path_densely(monkeypatch)
    for dtype in (torch.float32, torch.bfloat16):
        assert attn_mod.attention_kernel("xformers", dtype) == "xformers"  # the dense stand-in: no operator limits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resolved_xformers_backend_picks_the_kernel_by_dtype(dtype, monkeypatch):
    """Backend "xformers" (what "auto" resolves to on CUDA) with fp32 inputs runs SDPA and never reaches xformers'
    kernel; with bf16 it calls xformers' kernel (stood in for here by the dense path, which needs no CUDA)."""
    model = tiny_vit(8).eval().to(dtype)
    views = make_views([64, 64, 44, 28], 2)
    layout = packed_layout(tuple(tuple(v.shape) for v in views), 8)
    x = torch.randn(layout.n_tokens, model.embed_dim, dtype=dtype)
    attn = model.timm_model.blocks[0].attn
    reached = []

    def stand_in(q, k, v, mask, **kw):
        reached.append(q.dtype)
        return dense_block_diagonal_attention(q, k, v, mask, **kw)

    monkeypatch.setattr(attn_mod, "block_diagonal_attention", stand_in)
    with torch.no_grad():
        for fn in (packed_attention, packed_cls_attention):
            out = fn(attn, x, layout, "xformers")
            torch.testing.assert_close(out, fn(attn, x, layout, "sdpa"), atol=1e-5 if dtype == torch.float32 else 3e-2,
                                       rtol=1e-4 if dtype == torch.float32 else 3e-2)
    assert reached == ([] if dtype == torch.float32 else [torch.bfloat16, torch.bfloat16])


def test_packed_vit_runs_without_the_attention_attributes_of_recent_timm():
    """timm < 1.0.23 has no `Attention.attn_dim`, timm < 1.0.28 no `Attention.gate`: the packed path and the check
    of supported models must not need them."""
    from fastdino.models.vit import _check_supported

    model = tiny_vit(8).eval()
    views = make_views([64, 64, 44, 17], 2)
    with torch.no_grad():
        before = model.forward_views(views)
        for blk in model.timm_model.blocks:
            for name in ("attn_dim", "gate"):
                if name in vars(blk.attn):
                    delattr(blk.attn, name)
            assert not hasattr(blk.attn, "attn_dim") and not hasattr(blk.attn, "gate")
        _check_supported(model.timm_model, "vit_tiny")
        torch.testing.assert_close(model.forward_views(views), before, rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_xformers_kernel_matches_the_materialized_masks_and_fp32_takes_sdpa(monkeypatch):
    """On a GPU: xformers' kernel against the dense path on the same masks (bf16), and fp32 never reaching it."""
    torch.manual_seed(0)
    model = PackedViT("vit_small_patch8_224", img_size=224, depth=2, attn_backend="xformers").cuda().eval()
    views = [v.cuda() for v in make_views([224, 224, 184, 164, 84, 47], 4)]
    kernels = []
    original = attn_mod.block_diagonal_attention

    def spy(kernel, name):
        def spied(q, k, v, mask, **kw):
            kernels.append((q.dtype, name))
            return kernel(q, k, v, mask, **kw)
        return spied

    monkeypatch.setattr(attn_mod, "block_diagonal_attention", spy(original, "xformers"))
    with torch.no_grad():
        fp32 = model.forward_views(views)
        assert kernels == []  # fp32: sdpa
        torch.testing.assert_close(fp32, reference_forward_views(model, views), atol=1e-3, rtol=1e-3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast = model.forward_views(views)
            monkeypatch.setattr(attn_mod, "block_diagonal_attention", spy(dense_block_diagonal_attention, "dense"))
            dense = model.forward_views(views)
    assert kernels == [(torch.bfloat16, "xformers")] * 2 + [(torch.bfloat16, "dense")] * 2
    assert (fast.float() - dense.float()).norm() <= 2e-2 * dense.float().norm()

"""fastdino.models: the packed multi-crop ViT against the per-size reference, backbones by name, export."""

import copy

import pytest
import timm
import torch
from _dino_reference import DinoVisionTransformer, randomize_
from _eval_fixtures import make_checkpoint
from fastdino.dataloading import AugmentationSpec
from timm.layers import resample_abs_pos_embed

from fastdino.config import backbone_kwargs
from fastdino.finetune.backbones import load_backbone as load_for_finetune
from fastdino.models import (
    ATTN_BACKENDS,
    MultiCropOutput,
    MultiCropWrapper,
    PackedViT,
    create_backbone,
    list_backbones,
    reference_forward_views,
    resolve_attn_backend,
)
from fastdino.models.attention import xformers_available
from fastdino.models.convert import load_backbone
from fastdino.models.export import export_teacher
from fastdino.models.head import DINOHead
from fastdino.models.packing import drop_path_per_crop, packed_layout
from fastdino.models.pos_embed import PosEmbedInterpolator
from fastdino.run_config import load_config

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# DINO-MC-like view sets, scaled down: 2 globals then locals of several sizes, some not multiples of the patch.
VIEW_SETS = {
    "p8-mc": (8, [64, 64, 48, 44, 36, 28], 2),
    "p8-odd": (8, [56, 56, 47, 30, 17], 3),
    "p16-mc": (16, [64, 64, 52, 40, 33], 2),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU OpenMP threads that spin-wait for each other
    make every small op many times slower; run this module single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vit(patch_size=8, img_size=64, **kw):
    torch.manual_seed(0)
    return PackedViT("vit_tiny_patch16_224", patch_size=patch_size, img_size=img_size, depth=2, **kw)


def make_views(sizes, batch, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, s, s, generator=g).to(device) for s in sizes]


def assert_close_scaled(actual, expected, rel=1e-5, msg=""):
    """Max error relative to the tensor's largest entry: gradients of summed features reach the hundreds, so
    elementwise tolerances would mostly measure float32 summation order."""
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= rel * expected.float().abs().max().item() + 1e-7, f"{msg}: max error {err:.3g}"


def features_and_grads(model, views, forward):
    model.zero_grad(set_to_none=True)
    out = forward(views)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out.device)
    (out.float() * weights).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


@pytest.mark.parametrize("case", list(VIEW_SETS))
@pytest.mark.parametrize("train", [False, True])
def test_packed_matches_per_size_reference(case, train):
    patch, sizes, batch = VIEW_SETS[case]
    model = tiny_vit(patch).train(train)
    views = make_views(sizes, batch)
    out, grads = features_and_grads(model, views, model.forward_views)
    ref, ref_grads = features_and_grads(model, views, lambda v: reference_forward_views(model, v))
    assert out.shape == (batch * len(sizes), model.embed_dim)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    assert grads.keys() == ref_grads.keys() == {n for n, _ in model.named_parameters()}
    for name in grads:
        assert_close_scaled(grads[name], ref_grads[name], msg=name)


def test_packed_views_with_unequal_batches_and_repeated_sizes():
    model = tiny_vit().eval()
    views = [torch.randn(b, 3, s, s) for b, s in [(3, 64), (1, 40), (2, 64), (2, 40), (2, 40)]]
    torch.testing.assert_close(model.forward_views(views), reference_forward_views(model, views), atol=2e-5,
                               rtol=1e-4)


def test_sizes_are_floored_to_the_patch():
    model = tiny_vit(8).eval()
    x = torch.randn(2, 3, 44, 47)
    torch.testing.assert_close(model.forward_views([x]), model.forward_views([x[..., :40, :40]]))
    assert model.last_cls_attention(x).shape == (2, 3, 5, 5)


def test_layout_groups_consecutive_sizes():
    layout = packed_layout(((2, 3, 64, 64), (2, 3, 64, 64), (2, 3, 44, 44), (1, 3, 64, 64)), 8)
    assert [(g.crops, g.grid, g.seq_len) for g in layout.groups] == [(4, (8, 8), 65), (2, (5, 5), 26), (1, (8, 8), 65)]
    assert layout.seqlens == [65] * 4 + [26] * 2 + [65]
    assert layout.n_tokens == 4 * 65 + 2 * 26 + 65
    with pytest.raises(ValueError, match="smaller than the patch"):
        packed_layout(((1, 3, 4, 4),), 8)


def test_pos_embed_identity_at_native_grid():
    model = tiny_vit(8, img_size=64)
    pos = model.timm_model.pos_embed
    assert model.pos_interp(pos, (8, 8)) is pos
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model.eval().forward_views([x]), model(x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("grid", [(5, 5), (7, 3), (11, 11)])
def test_pos_embed_matches_timm_resample(grid):
    pos = torch.randn(1, 1 + 8 * 8, 16)
    expected = resample_abs_pos_embed(pos, new_size=grid, old_size=(8, 8), num_prefix_tokens=1)
    interp = PosEmbedInterpolator((8, 8))
    torch.testing.assert_close(interp(pos, grid), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(interp(pos, grid), expected, atol=1e-5, rtol=1e-5)  # from the cached matrix


def test_drop_path_keeps_or_drops_whole_crops():
    layout = packed_layout(((4, 3, 64, 64), (6, 3, 40, 40)), 8)
    torch.manual_seed(0)
    out = drop_path_per_crop(torch.ones(layout.n_tokens, 5), layout, 0.5, training=True)
    per_crop = [out[g.start : g.end].view(g.crops, -1) for g in layout.groups]
    for crops in per_crop:
        for tokens in crops:
            assert tokens.unique().tolist() in ([0.0], [2.0])
    kept = torch.cat([c[:, 0] for c in per_crop])
    assert 0 < (kept > 0).sum() < layout.n_crops
    assert drop_path_per_crop(torch.ones(3, 2), layout, 0.5, training=False).eq(1).all()


def test_model_drop_path_is_per_crop():
    """In the packed forward of a block with drop-path, the MLP branch's increment is the same for every token
    of a crop: 0 (dropped) or 1/keep_prob (kept) when the branch outputs ones."""
    torch.manual_seed(0)
    model = PackedViT("vit_tiny_patch16_224", patch_size=8, img_size=64, depth=3, drop_path_rate=0.5).train()
    blk = model.timm_model.blocks[1]  # rate 0.25 (0, 0.25, 0.5 over the depth); the last block sees CLS rows only
    seen = {}
    blk.norm2.register_forward_pre_hook(lambda m, a: seen.__setitem__("before", a[0].detach()))
    blk.mlp.register_forward_hook(lambda m, a, out: torch.ones_like(out))
    model.timm_model.blocks[2].norm1.register_forward_pre_hook(lambda m, a: seen.__setitem__("after", a[0].detach()))
    views = make_views([64, 64, 40, 28], 3)
    torch.manual_seed(0)
    model.forward_views(views)
    delta = seen["after"] - seen["before"]
    layout = packed_layout(tuple(tuple(v.shape) for v in views), 8)
    kept = []
    for g in layout.groups:
        for crop in delta[g.start : g.end].view(g.crops, -1):
            assert torch.allclose(crop, crop[0].expand_as(crop))
            assert crop[0].item() == pytest.approx(0.0) or crop[0].item() == pytest.approx(1 / 0.75)
            kept.append(crop[0].item() > 1)
    assert 0 < sum(kept) < len(kept)


def test_last_block_runs_only_the_cls_rows():
    """After the last block's attention (keys and values from every token), its norms and MLP see one row per
    crop; the features still equal timm's own forward."""
    model = tiny_vit(8).eval()
    rows = []
    model.timm_model.blocks[-1].mlp.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    views = make_views([64, 64, 40], 3)
    out = model.forward_views(views)
    assert rows == [9]
    torch.testing.assert_close(out, torch.cat([model(v) for v in views]), atol=2e-5, rtol=1e-4)


def test_grad_checkpointing_gives_the_same_result():
    views = make_views([64, 64, 44, 28], 2)
    plain = tiny_vit()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    out, grads = features_and_grads(plain, views, plain.forward_views)
    out_c, grads_c = features_and_grads(ckpt, views, ckpt.forward_views)
    torch.testing.assert_close(out_c, out)
    for name in grads:
        assert_close_scaled(grads_c[name], grads[name], msg=name)


def test_timm_round_trip_of_packed_vit():
    model = tiny_vit(8, img_size=64).eval()
    timm_model = timm.create_model(model.timm_name, pretrained=False, num_classes=0, **model.timm_kwargs).eval()
    timm_model.load_state_dict(model.timm_model.state_dict())  # strict
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(timm_model(x), model(x))
        torch.testing.assert_close(timm_model(x), model.forward_views([x]), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,patch", [("vit_tiny", 8), ("vit_small", 16), ("resnet50", None), ("swin_tiny", None)])
def test_timm_round_trip_by_name(arch, patch):
    backbone = create_backbone(arch, patch_size=patch, img_size=64).eval()
    exported = timm.create_model(backbone.timm_name, pretrained=False, num_classes=0, **backbone.timm_kwargs).eval()
    exported.load_state_dict(backbone.timm_model.state_dict())  # strict
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = backbone(x)
        assert features.shape == (1, backbone.embed_dim)
        torch.testing.assert_close(exported(x), features)


@pytest.mark.parametrize("arch", ["resnet50", "wide_resnet50_2", "swin_tiny"])
def test_per_size_backbones(arch):
    backbone = create_backbone(arch).eval()
    views = make_views([48, 48, 38, 30], 1)  # 38 and 30 are not multiples of Swin's 4 px patch
    with torch.no_grad():
        out = backbone.forward_views(views)
        per_view = torch.cat([backbone(v) for v in views])
    assert out.shape == (4, backbone.embed_dim)
    # relative to the features' scale: untrained ResNets with torchvision's init (no zeroed last BatchNorm) give
    # features up to ~30, and a batch of 2 takes other conv kernels than a batch of 1 (differences ~1e-6 of that)
    scale = per_view.abs().max()
    torch.testing.assert_close(out / scale, per_view / scale, rtol=0, atol=1e-5)


def test_depth_sets_the_vit_blocks_and_round_trips_through_timm():
    shallow = create_backbone("vit_tiny", patch_size=16, img_size=64, depth=5).eval()
    assert len(shallow.timm_model.blocks) == 5 and shallow.timm_kwargs["depth"] == 5
    assert len(create_backbone("vit_tiny", patch_size=16, img_size=64).timm_model.blocks) == 12
    assert "depth" not in create_backbone("vit_tiny", patch_size=16, img_size=64).timm_kwargs
    exported = timm.create_model(shallow.timm_name, pretrained=False, num_classes=0, **shallow.timm_kwargs).eval()
    exported.load_state_dict(shallow.timm_model.state_dict())  # strict: the same 5 blocks
    views = make_views([64, 64, 48, 32], 2)
    with torch.no_grad():
        torch.testing.assert_close(shallow.forward_views(views), torch.cat([exported(v) for v in views]),
                                   atol=2e-5, rtol=1e-4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="depth"):
            create_backbone("vit_tiny", depth=bad)
    with pytest.raises(ValueError, match="depth"):
        create_backbone("resnet50", depth=4)


def test_factory_names_and_errors():
    assert list_backbones() == ["vit_tiny", "vit_small", "vit_base", "resnet50", "wide_resnet50_2", "swin_tiny"]
    with pytest.raises(ValueError, match="vit_small.*resnet50.*swin_tiny"):
        create_backbone("vit_huge")
    with pytest.raises(ValueError, match="patch_size"):
        create_backbone("vit_tiny", patch_size=14)
    with pytest.raises(ValueError, match="patch_size"):
        create_backbone("resnet50", patch_size=8)
    with pytest.raises(ValueError, match="attn_backend"):
        create_backbone("vit_tiny", attn_backend="flash")
    vit = create_backbone("vit_small", patch_size=8, drop_path_rate=0.1, img_size=96)
    assert (vit.timm_name, vit.embed_dim, vit.patch_size) == ("vit_small_patch8_224", 384, 8)
    assert vit.timm_model.pos_embed.shape == (1, 1 + 12 * 12, 384)
    assert "drop_path_rate" not in vit.timm_kwargs


def test_backend_list_offers_no_test_only_backend():
    """The dense stand-in for xformers' kernel lives in the tests (tests/_attention_dense.py), not in the product."""
    assert ATTN_BACKENDS == ("auto", "xformers", "sdpa")
    with pytest.raises(ValueError, match="attn_backend must be one of"):
        create_backbone("vit_tiny", attn_backend="xformers-dense")


def test_attention_backend_forcing():
    assert resolve_attn_backend("auto", "cpu") == "sdpa"
    views = make_views([64, 40], 2)
    sdpa = tiny_vit(attn_backend="sdpa").eval()
    torch.testing.assert_close(sdpa.forward_views(views), reference_forward_views(sdpa, views), atol=2e-5, rtol=1e-4)
    forced = tiny_vit(attn_backend="xformers")  # building is fine anywhere (checkpoints travel)...
    with pytest.raises(RuntimeError, match="xformers.*CUDA.*sdpa"):
        forced.forward_views(views)  # ...running it on CPU tensors is not


def test_last_cls_attention_matches_timm_tokens():
    model = tiny_vit(8).eval()
    x = torch.randn(2, 3, 48, 48)
    maps = model.last_cls_attention(x)
    assert maps.shape == (2, 3, 6, 6)
    # Recompute from timm's own embedding path and the last block's qkv.
    m = model.timm_model
    with torch.no_grad():
        t = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        t = m.blocks[0](t)
        attn = m.blocks[1].attn
        q, k, _ = attn.qkv(m.blocks[1].norm1(t)).view(2, 37, 3, 3, 64).permute(2, 0, 3, 1, 4)
        probs = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1)[:, :, 0, 1:].reshape(2, 3, 6, 6)
    torch.testing.assert_close(maps, probs, atol=1e-5, rtol=1e-4)
    assert (maps.sum((-2, -1)) < 1).all()


def test_multicrop_wrapper_returns_named_outputs():
    """One output type for every call, by field name; the fields a call does not produce are None."""
    backbone = tiny_vit(8).eval()
    head = DINOHead(backbone.embed_dim, out_dim=32, hidden_dim=16, bottleneck_dim=8)
    views = make_views([64, 64, 44], 2)
    out = MultiCropWrapper(backbone, head)(views)
    assert isinstance(out, MultiCropOutput)
    assert out.logits.shape == (6, 32) and out.features.shape == (6, backbone.embed_dim)
    assert out.patch_logits is None and out.patch_logit_means is None
    torch.testing.assert_close(out.features, backbone.forward_views(views), rtol=0, atol=0)
    torch.testing.assert_close(out.logits, head(out.features), rtol=0, atol=0)


def test_multicrop_wrapper_one_head_call():
    backbone = tiny_vit(8).eval()
    head = DINOHead(backbone.embed_dim, out_dim=32, hidden_dim=16, bottleneck_dim=8)
    calls = []
    head.register_forward_hook(lambda *a: calls.append(1))
    views = make_views([64, 64, 44, 28], 2)
    logits = MultiCropWrapper(backbone, head)(views).logits
    assert logits.shape == (8, 32) and len(calls) == 1
    torch.testing.assert_close(logits, head(reference_forward_views(backbone, views)), atol=1e-5, rtol=1e-4)
    teacher_logits = MultiCropWrapper(backbone, head)(views[:2]).logits
    torch.testing.assert_close(teacher_logits, logits[:4], atol=1e-5, rtol=1e-4)


def test_compiles_with_fixed_crop_sizes():
    model = tiny_vit(8).eval()
    views = make_views([64, 64, 44, 28], 2)
    compiled = torch.compile(model.forward_views, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(views), model.forward_views(views), atol=2e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiles_with_inductor_forward_backward():
    model = tiny_vit(8).train()
    views = make_views([64, 64, 44, 28], 2)
    compiled = torch.compile(model.forward_views)
    out, grads = features_and_grads(model, views, compiled)
    ref, ref_grads = features_and_grads(model, views, lambda v: reference_forward_views(model, v))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-3)
    for name in grads:
        assert_close_scaled(grads[name], ref_grads[name], rel=1e-4, msg=name)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("backend", ["auto", "xformers", "sdpa"])
def test_cuda_packed_matches_reference_bf16(backend):
    if backend == "xformers" and not xformers_available():
        pytest.skip("xformers is not installed")
    torch.manual_seed(0)
    model = PackedViT("vit_small_patch8_224", img_size=224, depth=4, attn_backend=backend).cuda().train()
    views = make_views([224, 224, 184, 164, 144, 124, 104, 84], 4, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, grads = features_and_grads(model, views, model.forward_views)
        ref, ref_grads = features_and_grads(model, views, lambda v: reference_forward_views(model, v))
    torch.testing.assert_close(out.float(), ref.float(), atol=5e-2, rtol=5e-2)
    for name in grads:
        g, r = grads[name].float(), ref_grads[name].float()
        assert (g - r).norm() <= 5e-2 * r.norm() + 1e-6, name


DINO_VIT_PRESETS = ["dino-mc-vits8", "dino-mc-vits16", "dino-tp-vits8", "dino-vits16"]


@pytest.mark.parametrize("preset", DINO_VIT_PRESETS)
def test_vit_presets_give_the_original_vits_features_at_every_view_size(preset):
    """DINO and DINO-MC run every crop through interpolate_pos_encoding (facebookresearch/dino vision_transformer.py
    L174-194): a ViT preset's packed forward gives the original ViT's CLS features at each of its view sizes."""
    config = load_config(preset, overrides={"model": {"depth": 1, "drop_path_rate": 0.0}})
    backbone = create_backbone(**backbone_kwargs(config.model)).eval()
    ref = randomize_(DinoVisionTransformer(config.model.arch, config.model.patch_size, depth=1), 3).eval()
    backbone.timm_model.load_state_dict(ref.state_dict())
    sizes = sorted(set(AugmentationSpec.from_dict(config.augment).view_sizes), reverse=True)
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(1, 3, s, s, generator=gen) for s in sizes]
    with torch.no_grad():
        got, want = backbone.forward_views(views), torch.cat([ref(v) for v in views])
    for size, g, w in zip(sizes, got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=lambda m, size=size: f"{size} px: {m}")


def test_a_runs_dino_interpolation_travels_with_its_checkpoint_and_export(tmp_path):
    """A dino-mc run's checkpoint (its config says pos_embed_interp=dino) is evaluated, exported and fine-tuned
    with DINO's interpolation, without the user repeating the option."""
    checkpoint = make_checkpoint(tmp_path / "run", config_model={"pos_embed_interp": "dino"})
    loaded = load_backbone(checkpoint)
    assert loaded.conversion.pos_embed_interp == loaded.backbone.pos_interp.mode == "dino"
    weights, _, meta = export_teacher(checkpoint)
    assert meta["pos_embed_interp"] == "dino"
    assert load_for_finetune(weights).backbone.pos_interp.mode == "dino"

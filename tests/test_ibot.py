"""iBOT's masked-patch objective (kernels/ibot_loss.py, fastdino/models/masking.py): masks, the loss against iBOT's
own loop, the masked packed forward against a one-view-at-a-time timm forward, and the step (packed == reference,
resume, the log)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from fastdino.kernels import IBOTPatchLoss, teacher_at_masks
from test_train import build, fixed_views, loop_config, quiet_adam, scaled_config, step_losses

from fastdino import checkpoint as ckpt_io
from fastdino.config import ConfigError
from fastdino.models import MaskToken, MultiCropWrapper, create_backbone, sample_patch_masks
from fastdino.models.reference import reference_forward_masked_views
from fastdino.run_config import load_config
from fastdino.train import train


def ibot_loop_loss(student_patch: torch.Tensor, teacher_patch: torch.Tensor, masks: torch.Tensor, center,
                   n_global: int, teacher_temp: float, student_temp: float = 0.1) -> torch.Tensor:
    """The patch half of iBOT's `iBOTLoss.forward` as the original writes it: softmax over every patch, per view
    the masked mean of each crop's cross-entropy, the mean over crops, the mean over views (float64)."""
    s = (student_patch.double() / student_temp).chunk(n_global)
    t = F.softmax((teacher_patch.double() - center.double()) / teacher_temp, dim=-1).chunk(n_global)
    m = masks.chunk(n_global)
    total = 0
    for q in range(n_global):
        loss = torch.sum(-t[q] * F.log_softmax(s[q], dim=-1), dim=-1)
        loss = torch.sum(loss * m[q].float(), dim=-1) / m[q].sum(dim=-1).clamp(min=1.0)
        total = total + loss.mean()
    return total / n_global


# ---- masks ----------------------------------------------------------------------------------------------------


def test_masks_follow_ibots_recipe():
    """Half the crops whole, the others int(r x P) patches with r ~ U(0.1, 0.5), every position equally likely."""
    n, p = 20000, 16
    g = torch.Generator().manual_seed(0)
    masks = sample_patch_masks(n, p, mask_prob=0.5, ratio=(0.1, 0.5), generator=g)
    assert masks.shape == (n, p) and masks.dtype == torch.bool
    counts = masks.sum(1)
    masked = counts > 0
    frac = masked.float().mean().item()
    assert abs(frac - 0.5) < 4 * math.sqrt(0.25 / n), frac
    # int(r x 16) with r in [0.1, 0.5): 1 to 7 (8 only at r = 0.5 exactly), each value's share its r-interval
    assert counts[masked].min() >= 1 and counts[masked].max() <= 8
    for k in range(1, 8):
        expected = (min((k + 1) / p, 0.5) - max(k / p, 0.1)) / 0.4
        got = (counts[masked] == k).float().mean().item()
        assert abs(got - expected) < 4 * math.sqrt(expected * (1 - expected) / masked.sum().item()), (k, got)
    per_position = masks[masked].float().mean(0)
    mean = per_position.mean().item()
    assert (per_position - mean).abs().max() < 4 * math.sqrt(mean * (1 - mean) / masked.sum().item())


def test_masks_off_and_always_on():
    g = torch.Generator().manual_seed(1)
    assert not sample_patch_masks(50, 16, mask_prob=0.0, generator=g).any()
    always = sample_patch_masks(50, 9, mask_prob=1.0, ratio=(0.3, 0.3), generator=g)
    assert (always.sum(1) == 2).all()  # int(0.3 x 9)


# ---- the loss -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_global,batch,patches,dim", [(2, 3, 16, 64), (2, 5, 9, 257), (1, 4, 4, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patch_loss_equals_ibots_loop_values_and_gradients(n_global, batch, patches, dim, dtype):
    g = torch.Generator().manual_seed(patches + dim)
    n = n_global * batch
    masks = sample_patch_masks(n, patches, mask_prob=0.7, ratio=(0.2, 0.6), generator=g)
    masks[0] = False  # a crop without masks adds 0 but still counts in the mean
    student = torch.randn(n, patches, dim, generator=g).to(dtype)
    teacher = torch.randn(n, patches, dim, generator=g).to(dtype)
    loss_fn = IBOTPatchLoss(dim)
    loss_fn.center.copy_(torch.randn(1, dim, generator=g) * 0.3)
    center = loss_fn.center.clone()

    s_rows = student[masks].clone().requires_grad_(True)  # what the wrapper gives: the masked rows only
    t_rows, t_mean = teacher_at_masks(teacher, masks)
    loss = loss_fn(s_rows, t_rows, masks, teacher_temp=0.07, teacher_patch_mean=t_mean)
    loss.backward()
    s_full = student.double().clone().requires_grad_(True)
    ref = ibot_loop_loss(s_full, teacher, masks, center, n_global, 0.07)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    # the gradient comes back in the input's dtype: bf16 holds ~3 significant digits
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    scale = s_full.grad.abs().max()
    torch.testing.assert_close(s_rows.grad.double() / scale, s_full.grad[masks] / scale, rtol=0, atol=tol)
    assert not s_full.grad[~masks].any()  # unmasked patches get no gradient in the original either
    # the centre: EMA (0.9) of the mean raw teacher patch logit
    torch.testing.assert_close(loss_fn.center, 0.9 * center + 0.1 * teacher.float().mean((0, 1))[None],
                               rtol=1e-5, atol=1e-6)


def test_patch_loss_is_zero_gradient_free_without_masks():
    loss_fn = IBOTPatchLoss(8)
    masks = torch.zeros(4, 6, dtype=torch.bool)
    rows = torch.zeros(0, 8, requires_grad=True)
    loss = loss_fn(rows, torch.zeros(0, 8), masks, teacher_temp=0.07, teacher_patch_mean=torch.randn(4, 8))
    assert loss.item() == 0.0
    loss.backward()


# ---- the masked packed forward --------------------------------------------------------------------------------


def masked_views_setup(patch: int, sizes: tuple[int, ...], depth: int, seed: int, drop_path: float = 0.0):
    """A small ViT, a random mask token, 3 images per view size and masks for the 2 global views."""
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny", patch_size=patch, img_size=sizes[0], depth=depth,
                               drop_path_rate=drop_path)
    token = MaskToken(backbone.embed_dim)
    torch.nn.init.normal_(token.weight)
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(3, 3, s, s, generator=g) for s in sizes]
    grid = (sizes[0] // patch) ** 2
    masks = [sample_patch_masks(3, grid, mask_prob=0.8, generator=g) for _ in range(2)]
    return backbone, token, views, grid, masks


@pytest.mark.parametrize("patch,sizes", [(16, (64, 64, 48, 32, 24)), (8, (40, 40, 24, 20))])
def test_masked_packed_forward_equals_timm_one_view_at_a_time(patch, sizes):
    """CLS features, global patch tokens and their gradients (mask token included) of the packed pass ==
    timm's modules run per view, for views of several sizes (odd ones floored) and random masks."""
    backbone, token, views, grid, masks = masked_views_setup(patch, sizes, depth=3, seed=1)

    outs = {}
    for name in ("packed", "reference"):
        backbone.zero_grad(set_to_none=True)
        token.zero_grad(set_to_none=True)
        if name == "packed":
            cls, patches = backbone.forward_views(views, masks=masks, mask_token=token.weight[0], patch_views=2)
        else:
            cls, patches = reference_forward_masked_views(backbone, views, masks, token.weight[0], patch_views=2)
        (cls.square().sum() + patches.sin().sum()).backward()
        outs[name] = (cls.detach(), patches.detach(), token.weight.grad.clone(),
                      backbone.timm_model.patch_embed.proj.weight.grad.clone())
    for a, b in zip(outs["packed"], outs["reference"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert patches.shape == (6, grid, backbone.embed_dim)


@pytest.mark.parametrize("patch,sizes,drop_path", [(16, (64, 64, 48, 32, 24), 0.0), (8, (40, 40, 24, 20), 0.0),
                                                   (8, (40, 40, 24), 0.3)])
def test_last_block_at_selected_patches_equals_the_full_last_block(patch, sizes, drop_path):
    """patch_select (the student's masked patches) runs the last block at the CLS and selected rows only: the
    same CLS features, the same selected patch tokens and the same gradients as the full last block, drop-path
    (one draw per crop, the same draws) included; a crop without a selected patch included."""
    backbone, token, views, grid, masks = masked_views_setup(patch, sizes, depth=2, seed=2, drop_path=drop_path)
    masks[1][0] = False
    select = torch.cat(masks)
    outs = {}
    for name in ("selected", "full"):
        backbone.zero_grad(set_to_none=True)
        token.zero_grad(set_to_none=True)
        torch.manual_seed(5)  # the drop-path draws
        cls, patches = backbone.forward_views(views, masks=masks, mask_token=token.weight[0], patch_views=2,
                                              patch_select=select if name == "selected" else None)
        if name == "full":
            patches = patches[select]
        (cls.square().sum() + patches.sin().sum()).backward()
        outs[name] = (cls.detach(), patches.detach(), token.weight.grad.clone(),
                      backbone.timm_model.blocks[-1].mlp.fc1.weight.grad.clone(),
                      backbone.timm_model.blocks[-1].attn.qkv.weight.grad.clone())
    assert outs["selected"][1].shape == (int(select.sum()), backbone.embed_dim)
    for a, b in zip(outs["selected"], outs["full"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"patch_select has shape \(6, 5\)"):
        backbone.forward_views(views, masks=masks, mask_token=token.weight[0], patch_views=2,
                               patch_select=select[:, :5])


def test_unmasked_patch_pass_gives_the_plain_cls_features():
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny", patch_size=16, img_size=64, depth=2)
    views = [torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)]
    plain = backbone.forward_views(views)
    cls, patches = backbone.forward_views(views, patch_views=2)
    torch.testing.assert_close(cls, plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="patch_views=3"):
        backbone.forward_views(views, patch_views=3)
    with pytest.raises(ValueError, match=r"mask of view 1 has shape \(2, 9\)"):
        backbone.forward_views(views, masks=[None, torch.zeros(2, 9, dtype=torch.bool)],
                               mask_token=torch.zeros(192), patch_views=2)


def test_wrapper_runs_the_head_on_the_masked_patches_only():
    torch.manual_seed(0)
    from fastdino.models import DINOHead

    backbone = create_backbone("vit_tiny", patch_size=16, img_size=64, depth=2)
    head = DINOHead(backbone.embed_dim, out_dim=32, hidden_dim=16, bottleneck_dim=8)
    wrapper = MultiCropWrapper(backbone, head, MaskToken(backbone.embed_dim))
    views = [torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)]
    masks = [sample_patch_masks(2, 16, mask_prob=1.0) for _ in range(2)]
    student = wrapper(views, masks=masks, patch_views=2)
    cls, patches = backbone.forward_views(views, masks=masks, mask_token=wrapper.mask_token.weight[0],
                                          patch_views=2)
    torch.testing.assert_close(student.logits, head(cls))
    torch.testing.assert_close(student.patch_logits, head(patches[torch.cat(masks)]))
    assert student.patch_logit_means is None  # the teacher's field
    teacher = wrapper(views[:2], patch_views=2)
    assert teacher.patch_logits.shape == (4, 16, 32) and teacher.patch_logit_means is None


@pytest.mark.parametrize("patch,size,out_dim,dtype", [(16, 64, 32, torch.float32), (8, 40, 67, torch.float32),
                                                       (8, 40, 67, torch.bfloat16)])
def test_teacher_last_layer_at_the_selected_patches_and_the_mean_equals_the_full_head(patch, size, out_dim, dtype):
    """The teacher's wrapper with patch_select: the head's last layer at the masked rows and at each crop's mean
    bottleneck == the full head at every patch, then selected and averaged (iBOT's way), for the centre too.
    bf16: under autocast, as training runs it; the mean row is averaged before the bf16 product, so it matches to
    bf16's rounding."""
    from fastdino.models import DINOHead

    torch.manual_seed(patch + out_dim)
    backbone = create_backbone("vit_tiny", patch_size=patch, img_size=size, depth=2)
    head = DINOHead(backbone.embed_dim, out_dim=out_dim, hidden_dim=24, bottleneck_dim=12)
    teacher = MultiCropWrapper(backbone, head)
    views = [torch.randn(3, 3, size, size), torch.randn(3, 3, size, size), torch.randn(3, 3, 24, 24)]
    grid = (size // patch) ** 2
    select = sample_patch_masks(6, grid, mask_prob=0.7)
    select[1] = False  # a crop without masks still has a mean
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        selected = teacher(views[:2], patch_views=2, patch_select=select)
        full = teacher(views[:2], patch_views=2)
    torch.testing.assert_close(selected.logits, full.logits)
    torch.testing.assert_close(selected.features, full.features)
    rows, means = selected.patch_logits, selected.patch_logit_means
    want_rows, want_means = teacher_at_masks(full.patch_logits, select)
    assert rows.shape == (int(select.sum()), out_dim) and means.shape == (6, out_dim)
    assert rows.dtype == want_rows.dtype == dtype
    torch.testing.assert_close(rows, want_rows)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(means.float(), want_means, **tol)


# ---- the step -------------------------------------------------------------------------------------------------


def ibot_config(*extra):
    return scaled_config("tiny", overrides=["loss.ibot_weight=1.0", "loss.koleo_weight=0", *extra])


def test_ibot_step_equals_reference_step():
    """Packed student + masked patches + fused DINO loss + flat EMA == the one-view-at-a-time reference, the
    same masks drawn from the same seed; the mask token learns, the patch centre moves the same way."""
    config = ibot_config("loss.koleo_weight=0.1")
    views = fixed_views(config, batch=3)
    fast, ref = build(config), build(config, reference=True)
    for tr in (fast, ref):
        quiet_adam(tr)
    token_before = fast.student["mask_token"].weight.detach().clone()
    for epoch in (0, 1):
        losses = []
        for tr in (fast, ref):
            torch.manual_seed(10 + epoch)  # the training loop re-seeds every step (the masks' draws)
            losses.append(tr.step(views, lr=1e-3, wd=0.04, momentum=0.99, epoch=epoch))
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
        assert len(fast.loss_terms["ibot"]) == epoch + 1 and fast.loss_terms["ibot"][-1] > 0
    for name in ("student", "teacher"):
        fs, rs = getattr(fast, name).state_dict(), getattr(ref, name).state_dict()
        for k in rs:
            torch.testing.assert_close(fs[k], rs[k], rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
    torch.testing.assert_close(fast.ibot_loss.center, ref.ibot_loss.center, rtol=1e-5, atol=1e-6)
    assert fast.ibot_loss.center.abs().sum() > 0
    assert not torch.equal(fast.student["mask_token"].weight, token_before)


def test_ibot_adds_its_weighted_term_to_the_loss():
    """Loss with weight w - loss with weight 0 == w x the logged patch term (same weights, views and masks)."""
    views = fixed_views(ibot_config(), batch=2)
    totals, terms = [], []
    for w in (1.0, 0.5):
        tr = build(ibot_config(f"loss.ibot_weight={w}"))
        torch.manual_seed(3)
        totals.append(tr.step(views, lr=0.0, wd=0.04, momentum=0.99, epoch=1))
        terms.append(tr.loss_terms["ibot"][-1])
    torch.testing.assert_close(terms[0], terms[1])
    torch.testing.assert_close(totals[0] - totals[1], 0.5 * terms[0], rtol=1e-5, atol=1e-5)


def test_ibot_run_logs_checkpoints_and_resumes_bitwise(tmp_path):
    quiet = lambda msg: None  # noqa: E731
    extra = ["loss.ibot_weight=1.0"]
    full, part = tmp_path / "full", tmp_path / "part"
    train(loop_config(tmp_path, 2, extra), full, echo=quiet)
    train(loop_config(tmp_path, 2, extra), part, echo=quiet, max_steps=2)
    train(loop_config(tmp_path, 2, extra), part, echo=quiet, resume=True)
    assert step_losses(part) == step_losses(full)  # same masks after the resume: drawn from the step's seed
    saved = ckpt_io.load_checkpoint(full)
    assert saved["ibot_loss"]["center"].abs().sum() > 0 and "mask_token.weight" in saved["student"]
    steps = [r for r in map(json.loads, (full / "metrics.jsonl").read_text().splitlines()) if r["type"] == "step"]
    assert steps and all(math.isfinite(r["ibot"]) for r in steps)
    assert "(iBOT " in (full / "train.log").read_text()


@pytest.mark.parametrize("override,match", [
    ("loss.ibot_weight=-1", "loss.ibot_weight"),
    ("loss.ibot_mask_prob=1.5", "loss.ibot_mask_prob"),
    ("loss.ibot_mask_ratio=[0.5,0.1]", "loss.ibot_mask_ratio"),
    ("loss.ibot_mask_ratio=0.3", "loss.ibot_mask_ratio"),
    ("loss.ibot_teacher_temp=0", "loss.ibot_teacher_temp"),
])
def test_ibot_options_are_validated(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", overrides=[override])


def test_ibot_needs_a_vit():
    with pytest.raises(ConfigError, match="loss.ibot_weight.*resnet50"):
        load_config("dino-mc-resnet50", overrides=["loss.ibot_weight=1"])
    assert load_config("tiny").loss.ibot_weight == 1.0  # the tiny preset's recipe (docs/eval.md, "iBOT")
    assert load_config("dino-mc-vits8").loss.ibot_weight == 0.0  # off in the papers' presets

"""run.precision=bf16 on CPU, end to end: the backbone and head run under bf16 autocast, the DINO loss computes in
fp32 from the bf16 logits, gradients, AdamW state, the EMA teacher and the loss centre stay fp32, and the step is
the fp32 step within bf16 rounding."""

from __future__ import annotations

import pytest
import torch
from fastdino.kernels.loss import dino_loss
from fastdino.kernels.reference import reference_dino_loss
from test_train import build, fixed_views, one_thread, quiet_adam, scaled_config  # noqa: F401 (autouse fixture)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_loss_on_bf16_logits_is_computed_in_fp32(backend):
    """What autocast hands the loss on CPU: bf16 logits. The loss is the fp32 loss of those same (rounded) logits,
    not a bf16 computation (which would be off by ~1e-2), and the gradient comes back in the logits' dtype."""
    gen = torch.Generator().manual_seed(0)
    s = (torch.randn(6 * 5, 1031, generator=gen) * 3).bfloat16().requires_grad_()
    t = (torch.randn(2 * 5, 1031, generator=gen) * 3).bfloat16()
    c = torch.randn(1, 1031, generator=gen) * 0.1
    loss = dino_loss(s, t, c, ncrops=6, n_global=2, backend=backend)
    s32 = s.detach().float().requires_grad_()
    want = reference_dino_loss(s32, t.float(), c, ncrops=6, n_global=2)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, s)
    (grad32,) = torch.autograd.grad(want, s32)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), grad32, rtol=1e-2, atol=1e-6)


def test_bf16_step_on_cpu_matches_the_fp32_step():
    overrides = ["model.drop_path_rate=0"]
    config32 = scaled_config("tiny", global_patches=2, overrides=overrides)
    config16 = scaled_config("tiny", global_patches=2, overrides=[*overrides, "run.precision=bf16"])
    views = fixed_views(config32, batch=4)
    fp32, bf16 = build(config32), build(config16)
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16") and not bf16.scaler.is_enabled()
    seen = {}
    loss_forward = bf16.dino_loss.forward

    def spy(student_output, teacher_output, epoch):
        seen.update(student=student_output.dtype, teacher=teacher_output.dtype)
        return loss_forward(student_output, teacher_output, epoch)

    bf16.dino_loss.forward = spy
    for tr in (fp32, bf16):
        quiet_adam(tr)
    for epoch in (0, 1):
        torch.manual_seed(epoch)  # the training loop re-seeds every step: the same iBOT masks for both
        l32 = fp32.step(views, lr=1e-3, wd=0.04, momentum=0.99, epoch=epoch)
        torch.manual_seed(epoch)
        l16 = bf16.step(views, lr=1e-3, wd=0.04, momentum=0.99, epoch=epoch)
        assert l16.dtype == torch.float32
        torch.testing.assert_close(l16, l32, rtol=2e-2, atol=2e-2)
    assert seen == dict(student=torch.bfloat16, teacher=torch.bfloat16)  # autocast reached the head
    for p in bf16.student.parameters():
        assert p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
    for state in bf16.optimizer.state.values():
        assert all(v.dtype == torch.float32 for k, v in state.items() if k != "step")
    assert bf16.dino_loss.center.dtype == torch.float32
    torch.testing.assert_close(bf16.dino_loss.center, fp32.dino_loss.center, rtol=2e-2, atol=2e-3)
    t32, t16 = fp32.teacher.state_dict(), bf16.teacher.state_dict()
    for k, v in t32.items():
        assert t16[k].dtype == v.dtype, k
        torch.testing.assert_close(t16[k], v, rtol=1e-2, atol=1e-4, msg=k)


def test_auto_precision_takes_bf16_only_where_the_cpu_has_it():
    import torch

    from fastdino.train import choose_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_precision("auto", cpu, native_bf16=True) == ("bf16", "auto: this CPU computes bf16 natively "
                                                                       "(AVX512-BF16 / AMX)")
    precision, why = choose_precision("auto", cpu, native_bf16=False)
    assert precision == "fp32" and "no native bf16" in why
    assert choose_precision("auto", cuda, native_bf16=False)[0] == "bf16"
    assert choose_precision("fp32", cpu, native_bf16=True) == ("fp32", "run.precision")  # asked for: kept
    assert choose_precision("bf16", cpu, native_bf16=False) == ("bf16", "run.precision")


def test_the_run_says_which_precision_auto_chose_and_why(tmp_path, monkeypatch):
    from fastdino.dataloading import make_synthetic_dataset

    from fastdino.run_config import load_config
    from fastdino.train import train

    monkeypatch.setenv("FASTDINO_CPU_BF16", "1")
    lines = []
    data = make_synthetic_dataset(tmp_path / "data", n_images=8, size=32)
    config = load_config("tiny", overrides=[f"data.path={data}", "run.device=cpu", "run.max_steps=1",
                                            "run.batch_size=4", "model.img_size=32", "model.out_dim=256",
                                            "augment.global_views=[{size: 32}, {size: 32}]",
                                            "augment.local_views=[{size: 16, count: 2}]"])
    train(config, tmp_path / "run", echo=lines.append)
    assert any("precision bf16 (auto: this CPU computes bf16 natively" in line for line in lines)


def test_the_capability_can_be_forced_either_way(monkeypatch):
    from fastdino.train import native_cpu_bf16

    monkeypatch.setenv("FASTDINO_CPU_BF16", "1")
    assert native_cpu_bf16()
    monkeypatch.setenv("FASTDINO_CPU_BF16", "0")
    assert not native_cpu_bf16()

"""kernels/ stands alone: a copy of it, imported under another name with `fastdino` unimportable, runs the losses
(DINO's, iBOT's, KoLeo) and the EMA with torch and triton only (so a user can vendor it into other DINO code)."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[1] / "kernels"

SCRIPT = textwrap.dedent("""
    import importlib.abc
    import sys

    class BlockFastdino(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "fastdino" or name.startswith("fastdino."):
                raise ImportError(f"the vendored kernels imported {name}")
            return None

    sys.meta_path.insert(0, BlockFastdino())
    import torch
    from torch import nn
    import vendored_dino_kernels as k
    from vendored_dino_kernels import aot  # noqa: F401  (the AOT tool is part of the package too)

    torch.manual_seed(0)
    for backend in ("torch", "triton"):
        module = k.DINOLoss(64, 4, 0.04, 0.07, 2, 3, teacher_crops_number=2, backend=backend)
        student = torch.randn(8, 64, requires_grad=True)
        teacher = torch.randn(4, 64)
        loss = module(student * 1.0, teacher, 1)
        loss.backward()
        ref = k.reference_dino_loss(student.detach(), teacher, torch.zeros(1, 64), ncrops=4,
                                    teacher_temp=float(module.teacher_temp_schedule[1]))
        assert torch.allclose(loss, ref, atol=1e-5), (backend, loss, ref)
        assert student.grad is not None and torch.isfinite(student.grad).all()

    # the objectives beside the DINO loss: iBOT's patch loss, KoLeo
    masks = torch.tensor([[True, False, True], [False, False, False]])
    teacher_patches = torch.randn(2, 3, 64)
    rows, means = k.teacher_at_masks(teacher_patches, masks)
    patch_loss = k.IBOTPatchLoss(64)(torch.randn(2, 64), rows, masks, 0.07, means)
    assert torch.isfinite(patch_loss) and torch.isfinite(k.koleo_per_view(torch.randn(8, 16), 2))

    student_net, teacher_net = nn.Linear(5, 3), nn.Linear(5, 3)
    ema = k.FlatEMA(student_net, teacher_net)
    ema.update(0.5)
    assert not any(name == "fastdino" or name.startswith("fastdino.") for name in sys.modules)
    print("standalone ok")
""")


def test_vendored_copy_runs_without_fastdino(tmp_path):
    shutil.copytree(KERNELS, tmp_path / "vendored_dino_kernels", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "run.py").write_text(SCRIPT)
    # The script's folder (tmp_path) comes first on sys.path; fastdino is installed here, so the blocker is what
    # makes it unimportable.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(tmp_path / "run.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "standalone ok" in proc.stdout

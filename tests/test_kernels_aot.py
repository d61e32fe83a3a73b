"""Every Triton kernel compiles ahead of time for real GPUs (cc 80, 90, 100) without spilling, on this CPU machine.

Triton compiles for a GPUTarget without a driver and ships ptxas, so the compile-and-register check of a GPU run
happens here (kernels/aot.py). The launch configurations are recorded from the real launchers, so what is compiled
is what a GPU run would launch. The kernels must be real JIT functions, not the interpreter's (the conftest sets
TRITON_INTERPRET=1 for this process), so the compilation runs in a subprocess without it.

The test suite compiles the representative subset (`--subset ci`: DINO-MC's views at K=65536 in fp32, bf16 and fp16,
one and three teacher views, the no-grad forward, the EMA in fp32 and bf16: about 20 kernels per target, ~10-40 s
on 2 cores, less from Triton's cache); `python -m fastdino.kernels.aot` compiles the full matrix (K 4096 and 65536,
1-3 teacher views, 6 view layouts, 3 dtypes, 2 batch sizes) and prints the table of bench/RESULTS.md.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton.backends.nvidia.compiler")

TARGETS = (80, 90, 100)
LOSS_KERNELS = {"_dino_loss_stats_kernel", "_dino_loss_fwd_kernel", "_dino_loss_bwd_kernel", "_column_sum_kernel",
                "_scale_by_grad_output_kernel"}
ALL_KERNELS = LOSS_KERNELS | {"_ema_kernel"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "fastdino.kernels.aot", "--subset", "ci", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=1200)
    if not out.exists():
        pytest.fail(f"kernels/aot.py wrote no report (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    report = json.loads(out.read_text())
    report["returncode"], report["log"] = proc.returncode, proc.stdout + proc.stderr
    return report


def test_every_kernel_compiles_for_every_target(compiled):
    failed = [(r["kernel"], r["cc"], r["configs"][0], r["error"][:300]) for r in compiled["rows"] if r["error"]]
    assert not failed
    built = {(r["kernel"], r["cc"]) for r in compiled["rows"]}
    assert built == {(k, cc) for k in ALL_KERNELS for cc in TARGETS}


def test_no_kernel_spills_registers(compiled):
    spilling = [(r["kernel"], r["cc"], r["configs"][0], r["registers"], r["spill_stores"], r["spill_loads"])
                for r in compiled["rows"] if r["spill_stores"] or r["spill_loads"] or not 0 < r["registers"] <= 255]
    assert not spilling
    assert compiled["returncode"] == 0, compiled["log"]


def test_loss_kernels_use_no_atomics(compiled):
    """Float atomics add in whatever order the GPU schedules them: the centre's column sum would change from run to
    run. The loss sums in a fixed order instead (the old statistics kernel had an atomic add here)."""
    atomic = [(r["kernel"], r["cc"], r["atomics"]) for r in compiled["rows"]
              if r["kernel"] in LOSS_KERNELS and r["atomics"] != 0]
    assert not atomic


def test_each_dtype_launches_its_own_gradient_path(compiled):
    """fp16 computes the gradient in the backward (`_dino_loss_bwd_kernel`, no scale pass); fp32 and bf16 in the
    forward, then `_scale_by_grad_output_kernel` in the backward."""
    configs = {}
    for r in compiled["rows"]:
        for label in r["configs"]:
            configs.setdefault(label, set()).add(r["kernel"])
    fp16 = configs["B=64 G=2 V=8 K=65536 float16"]
    bf16 = configs["B=64 G=2 V=8 K=65536 bfloat16"]
    assert "_dino_loss_bwd_kernel" in fp16 and "_scale_by_grad_output_kernel" not in fp16
    assert "_scale_by_grad_output_kernel" in bf16 and "_dino_loss_bwd_kernel" not in bf16
    assert configs["B=64 G=2 V=8 K=65536 bfloat16 no-grad"] == {"_dino_loss_stats_kernel", "_dino_loss_fwd_kernel",
                                                                "_column_sum_kernel"}

"""DINO loss forward + backward: fastdino against the reference pairwise loop (kernels/reference.py), same run.

Shapes of DINO-MC: 2 global + 6 local views, K = 65536; B = 64 on CUDA, 32 on CPU. Logits in fp32, bf16 (what
bf16 mixed precision feeds the loss) and fp16 (DINO's default --use_fp16: the gradient is computed in the
backward, see kernels/loss.py). CPU: fastdino = the torch backend (the default there). CUDA: fastdino = the Triton
kernels, plus the torch backend for comparison. The Triton backend is not timed on CPU: the interpreter is a test
tool, not a benchmark. fastdino runs with inplace=True (the gradient goes into the logits' memory, what the trainer
does); fastdino-copy is the same call with the default inplace=False, which allocates a gradient of the logits'
size: the two rows' peak_mem differ by that size.

Each round gets fresh logits that are an intermediate result, as a head's output is (the gradient goes in
place), made in pytest-benchmark's untimed setup (on CUDA followed by a sync, so that the copy kernel has
finished before the clock starts), and takes the gradient with torch.autograd.grad. Logit values are uniform
in [-1, 1], the range of DINO's head (cosine similarities under a weight-normalised last layer).

bytes_moved is DESIGN.md's memory-traffic floor: read S and T in the forward, read S and T again and write
dS in the backward. peak_mem is the extra memory of one call, including the student logits it is handed
(created inside the measured call, the same for every implementation). Goals: CPU >= 4x the reference with
lower peak memory; GPU >= 10x and >= 60% of the floor.
"""

import pytest
import torch
from fastdino.kernels.loss import dino_loss
from fastdino.kernels.reference import reference_dino_loss

from bench.utils import devices, peak_memory_bytes, record, sync

VIEWS, N_GLOBAL, K = 8, 2, 65536


def _cases():
    for device in devices():
        dtypes = [torch.float32, torch.bfloat16, torch.float16]
        impls = ["fastdino", "fastdino-copy", "reference"]
        if device == "cuda":
            impls.insert(2, "torch")
        for dtype in dtypes:
            for impl in impls:
                yield pytest.param(device, dtype, impl, id=f"{device}-{str(dtype)[6:]}-{impl}")


@pytest.mark.parametrize("device,dtype,impl", list(_cases()))
def test_dino_loss_fwd_bwd(benchmark, device, dtype, impl):
    batch = 64 if device == "cuda" else 32
    gen = torch.Generator().manual_seed(0)
    base = (torch.rand(VIEWS * batch, K, generator=gen) * 2 - 1).to(device, dtype).requires_grad_()
    teacher = (torch.rand(N_GLOBAL * batch, K, generator=gen) * 2 - 1).to(device, dtype)
    center = (torch.rand(1, K, generator=gen) * 0.2 - 0.1).to(device)

    if impl == "reference":
        loss_fn = lambda s: reference_dino_loss(s, teacher, center, ncrops=VIEWS, n_global=N_GLOBAL)
    else:
        backend = "torch" if impl == "torch" else "auto"
        inplace = impl != "fastdino-copy"
        loss_fn = lambda s: dino_loss(s, teacher, center, ncrops=VIEWS, n_global=N_GLOBAL, backend=backend,
                                      inplace=inplace)

    def fresh_logits():
        logits = base.clone()  # an intermediate result that owns its memory, like a head's output
        sync(device)  # the clone is asynchronous on CUDA: finish it before the timed call
        return (logits,), {}

    def step(student):
        torch.autograd.grad(loss_fn(student), student)
        sync(device)

    itemsize = base.element_size()
    floor = (3 * base.numel() + 2 * teacher.numel()) * itemsize
    peak = peak_memory_bytes(lambda: step(*fresh_logits()[0]), device)
    record(benchmark, group=f"dino_loss fwd+bwd {device} B={batch} 2+6 views K={K} {str(dtype)[6:]}", impl=impl,
           bytes_moved=floor, peak_mem=peak, device=device)
    benchmark.pedantic(step, setup=fresh_logits, rounds=10 if device == "cuda" else 5, warmup_rounds=1)

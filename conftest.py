"""Shared pytest set-up for tests/ and bench/.

Triton kernels run on the CPU through the interpreter. TRITON_INTERPRET is read when
`@triton.jit` runs, so it must be set here, before any fastdino.kernels module is imported.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# run.precision=auto takes bf16 on a CPU with native bf16 (fastdino.train.native_cpu_bf16): tests compute in fp32 on
# every CPU, subprocesses included; the tests of that rule set the capability themselves.
os.environ["FASTDINO_CPU_BF16"] = "0"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


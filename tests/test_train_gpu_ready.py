"""What would stop or skew the first GPU run, checked on CPU: the current CUDA device of a single-process run,
per-parameter gradient clipping on the multi-tensor fast path, and the pipeline's thread count on GPU machines."""

import pytest
import torch

from fastdino.config import ConfigError
from fastdino.distributed import DistInfo
from fastdino.run_config import load_config
from fastdino.train import clip_gradients, resolve_device, resolve_num_threads

# ----------------------------------------------------------------------------------------------------------
# resolve_device


@pytest.mark.parametrize("want,expected", [("cuda:1", "cuda:1"), ("cuda", "cuda:0"), ("auto", "cuda:0")])
def test_single_process_cuda_device_becomes_the_current_device(monkeypatch, want, expected):
    """Triton launches on the current device: a run on cuda:1 without torchrun must make cuda:1 current."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(str(torch.device(d))))
    config = load_config("tiny", overrides=[f"run.device={want}"])
    assert str(resolve_device(config)) == expected
    assert current == [expected]


def test_cpu_device_leaves_cuda_alone(monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device on a CPU run"))
    assert resolve_device(load_config("tiny", overrides=["run.device=cpu"])) == torch.device("cpu")


# ----------------------------------------------------------------------------------------------------------
# clip_gradients (per_param, DINO's utils.clip_gradients)


def dino_clip_reference(params, clip):
    """DINO's utils.clip_gradients, per parameter: scale a gradient whose L2 norm exceeds `clip` to norm `clip`
    (facebookresearch/dino utils.py, clip_gradients)."""
    for p in params:
        if p.grad is not None:
            clip_coef = clip / (p.grad.norm(2) + 1e-6)
            if clip_coef < 1:
                p.grad.mul_(clip_coef)


def make_params(shapes, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = []
    for i, shape in enumerate(shapes):
        p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
        # Gradient scales around the clip value: some tensors are clipped, some are not.
        p.grad = (torch.randn(shape, generator=g) * (0.02 + 0.6 * (i % 4))).to(dtype)
        params.append(p)
    return params


SHAPES = {
    "vit-like": [(1152, 48), (1152,), (48, 48), (48,), (48,), (192, 48), (192,), (48, 192), (1, 1, 48), (7, 48)],
    "odd": [(41,), (401, 3), (1271,), (1, 5, 7), (3, 3, 3, 3), (1,)],
}


@pytest.mark.parametrize("case", list(SHAPES))
@pytest.mark.parametrize("clip", [3.0, 0.5])
def test_per_param_clip_equals_dino_reference(case, clip):
    params = make_params(SHAPES[case])
    expected = make_params(SHAPES[case])
    norms_before = [p.grad.norm().item() for p in params]
    assert min(norms_before) < clip < max(norms_before)  # both branches are exercised
    clip_gradients(params, clip, "per_param")
    dino_clip_reference(expected, clip)
    for p, e in zip(params, expected, strict=True):
        assert torch.equal(p.grad, e.grad)
        assert p.grad.norm().item() <= clip * (1 + 1e-5)


def test_per_param_clip_with_mixed_dtypes_and_missing_gradients():
    params = make_params(SHAPES["odd"]) + make_params(SHAPES["vit-like"], dtype=torch.bfloat16, seed=1)
    params[2].grad = None
    expected = make_params(SHAPES["odd"]) + make_params(SHAPES["vit-like"], dtype=torch.bfloat16, seed=1)
    expected[2].grad = None
    clip_gradients(params, 1.0, "per_param")
    dino_clip_reference(expected, 1.0)
    for p, e in zip(params, expected, strict=True):
        if e.grad is None:
            assert p.grad is None
        elif e.grad.dtype == torch.float32:
            assert torch.equal(p.grad, e.grad)
        else:  # the coefficient is rounded to bf16 before the multiply (the fast path needs one dtype): 1 ulp
            torch.testing.assert_close(p.grad, e.grad, rtol=2**-7, atol=0)


def spy_foreach_mul(monkeypatch):
    calls = []
    real = torch._foreach_mul_

    def spy(tensors, other):
        pairs = zip(tensors, other, strict=True)
        calls.append([(t.shape, t.stride(), t.dtype, o.shape, o.stride(), o.dtype) for t, o in pairs])
        return real(tensors, other)

    monkeypatch.setattr(torch, "_foreach_mul_", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_spread_multiply_is_one_same_shape_foreach_call(monkeypatch, dtype):
    """CUDA's form of the per-tensor multiply (run here on CPU): one `_foreach_mul_` whose second list has the sizes
    and strides of the tensors, the form CUDA runs as one multi-tensor kernel; the values of the per-tensor loop."""
    from fastdino.multi_tensor import spread_mul_

    tensors = [p.grad for p in make_params(SHAPES["vit-like"] + SHAPES["odd"], dtype=dtype)]
    coefs = torch.rand(len(tensors), generator=torch.Generator().manual_seed(3))
    expected = [t * c.to(dtype) for t, c in zip(tensors, coefs, strict=True)]
    calls = spy_foreach_mul(monkeypatch)
    spread_mul_(tensors, coefs)
    assert len(calls) == 1 and len(calls[0]) == len(tensors)
    for t_shape, t_stride, t_dtype, o_shape, o_stride, o_dtype in calls[0]:
        assert (t_shape, t_stride, t_dtype) == (o_shape, o_stride, o_dtype)
    for t, e in zip(tensors, expected, strict=True):
        assert torch.equal(t, e)


def test_global_norm_clip_is_torchs():
    params, expected = make_params(SHAPES["odd"]), make_params(SHAPES["odd"])
    clip_gradients(params, 1.0, "global_norm")
    torch.nn.utils.clip_grad_norm_([p.grad for p in expected], 1.0)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e.grad)


@pytest.mark.cuda
def test_per_param_clip_on_cuda_matches_dino_reference(monkeypatch):
    def on_cuda(params):
        out = [torch.nn.Parameter(p.detach().cuda()) for p in params]
        for p, src in zip(out, params, strict=True):
            p.grad = src.grad.cuda()
        return out

    params, expected = on_cuda(make_params(SHAPES["vit-like"])), on_cuda(make_params(SHAPES["vit-like"]))
    calls = spy_foreach_mul(monkeypatch)
    clip_gradients(params, 1.0, "per_param")
    assert len(calls) == 1 and all(pair[0] == pair[3] for pair in calls[0])  # the same-shape (fast path) form
    dino_clip_reference(expected, 1.0)
    for p, e in zip(params, expected, strict=True):  # CUDA's multi-tensor norm sums in another order: ulps
        torch.testing.assert_close(p.grad, e.grad, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------
# data.num_threads


def test_num_threads_default_is_auto_and_numbers_pass_through():
    assert load_config("dino-mc-vits16").data.num_threads == "auto"
    assert load_config("dino-mc-vits16", overrides=["data.num_threads=6"]).data.num_threads == 6
    for bad in ("-1", "many"):
        with pytest.raises(ConfigError, match="data.num_threads"):
            load_config("tiny", overrides=[f"data.num_threads={bad}"])
    assert resolve_num_threads(0, torch.device("cuda")) == 0
    assert resolve_num_threads(3, torch.device("cpu")) == 3


@pytest.mark.parametrize("cores,local_ranks,expected", [(16, None, 10), (16, 1, 10), (16, 4, 3), (16, 8, 1),
                                                        (64, 8, 7), (2, 1, 1), (4, 8, 1)])
def test_auto_num_threads_scales_with_the_cores_of_each_gpu_rank(monkeypatch, cores, local_ranks, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    if local_ranks is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        dist = DistInfo()
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_ranks))
        dist = DistInfo(0, 0, local_ranks)
    assert resolve_num_threads("auto", torch.device("cuda:0"), dist) == expected
    assert resolve_num_threads("auto", torch.device("cpu"), dist) == 2  # CPU: kept small whatever the machine

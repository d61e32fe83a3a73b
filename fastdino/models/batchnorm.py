"""BatchNorm under DDP, as DINO does it: statistics over the global batch of all ranks.

DINO converts every BatchNorm of student and teacher to `nn.SyncBatchNorm` when the model has any
(main_dino.py L196-198, `utils.has_batchnorms`), so a ResNet normalises each crop-size group with the mean and
variance of that group over all GPUs. `convert_sync_batchnorm` does the same: on CUDA (and the other devices
torch's SyncBatchNorm supports) it builds torch's `nn.SyncBatchNorm`, DINO's layer and kernels. torch's
SyncBatchNorm raises for CPU tensors, and DDP refuses it in a CPU module, so on CPU it builds
`AllReduceBatchNorm`: the same statistics, computed readably with two differentiable all-reduces per layer
(gloo), so that a CPU run on several ranks trains like one process on the concatenated batch.

Both conversions keep every Parameter and buffer object (only the module objects change), so optimisers and
FlatEMA see the same tensors; convert before building FlatEMA, DDP and the optimiser, as the trainer does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# Devices whose tensors torch's SyncBatchNorm accepts (nn.SyncBatchNorm.forward checks the same list).
_TORCH_SYNC_DEVICES = ("cuda", "hpu", "xpu", torch._C._get_privateuse1_backend_name())


def has_batchnorms(model: nn.Module) -> bool:
    """DINO's `utils.has_batchnorms`: any BatchNorm layer (1d/2d/3d, synchronised or not)."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


class AllReduceBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the batch of every rank of `process_group` together.

    In training mode with more than one rank: count, sum and centred sum of squares of each channel are
    all-reduced (autograd flows through the all-reduces, so each rank's input gradient is that of the
    global batch, as in torch's SyncBatchNorm); the output uses the biased variance, the running variance is
    updated with the unbiased one, like nn.BatchNorm. Otherwise (eval mode, one rank, no process group) it is
    plain BatchNorm. Works for any input with a channel dimension 1 (BatchNorm1d/2d/3d shapes), on any device.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"AllReduceBatchNorm expects at least 2D input [N, C, ...], got {input.dim()}D")

    def _world_size(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group or dist.group.WORLD)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self._world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum  # as nn.BatchNorm: momentum None = running mean
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        return all_reduce_batch_norm(input, self.weight, self.bias, self.running_mean, self.running_var, self.eps,
                                     factor, self.process_group or dist.group.WORLD)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; its gradient is the sum over the ranks of the incoming gradients (each rank's output
    feeds that rank's loss, and the total objective is the sum of the ranks' losses)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                          running_mean: torch.Tensor | None, running_var: torch.Tensor | None, eps: float,
                          factor: float, group) -> torch.Tensor:
    """Batch normalisation of x [N, C, ...] with the statistics of every rank's x; updates the running ones."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    xf = x.float()
    local_count = torch.full((1,), x.numel() // x.shape[1], dtype=torch.float32, device=x.device)
    sums = _AllReduceSum.apply(torch.cat([xf.sum(dims), local_count]), group)  # one collective: sums, count
    n = sums[-1]
    if n.item() <= 1:  # host sync, as nn.BatchNorm's own check
        raise ValueError(f"Expected more than 1 value per channel when training, got {x.shape} over all ranks")
    mean = sums[:-1] / n
    centred = xf - mean.view(shape)
    var = _AllReduceSum.apply(centred.square().sum(dims), group) / n  # two passes: no E[x^2] - E[x]^2
    y = centred * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        y = y * weight.view(shape) + bias.view(shape)
    if running_mean is not None:
        with torch.no_grad():
            running_mean.mul_(1 - factor).add_(mean.to(running_mean.dtype), alpha=factor)
            running_var.mul_(1 - factor).add_((var * n / (n - 1)).to(running_var.dtype), alpha=factor)
    return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Every BatchNorm of `module` (moved to its device first) becomes torch's nn.SyncBatchNorm on CUDA (DINO's
    `nn.SyncBatchNorm.convert_sync_batchnorm`, main_dino.py L197-198) or AllReduceBatchNorm on CPU. Returns the
    module (children replaced in place; a new object only when `module` itself is a BatchNorm). Parameters,
    buffers and the train/eval flag carry over as the same objects."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, AllReduceBatchNorm)):
        ref = module.running_mean if module.running_mean is not None else module.weight
        device_type = ref.device.type if ref is not None else "cpu"
        cls = nn.SyncBatchNorm if device_type in _TORCH_SYNC_DEVICES else AllReduceBatchNorm
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                  process_group, device="meta")  # its own tensors are replaced just below
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out

"""Batch normalisation over the global batch of a distributed run, on any device.

torch's SyncBatchNorm refuses CPU tensors, which would leave the gloo path (and CI) untested, so
this one is written with autograd-aware all-reduces (``AllReduceSum``): two per layer and step (the
sums, then the centred squares: no E[x²] − E[x]² cancellation). Their backward all-reduces the
incoming gradients, which is exactly right when every rank back-propagates its own rows' share of
one global loss (see fastsigclr.distributed).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class AllReduceSum(torch.autograd.Function):
    """The sum of a tensor over the ranks of ``group`` (a copy; the input is untouched), with a
    backward that sums the incoming gradient over the ranks too: each rank's output feeds its own
    share of one global loss, so d(loss)/d(input) on a rank is the sum of every rank's gradient of
    the output. torch.distributed.nn.functional.all_reduce does the same, but torch 2.13
    deprecates it with a FutureWarning on every rank, pointing to a private module."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group=None) -> torch.Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce(x: torch.Tensor, group=None) -> torch.Tensor:
    """``AllReduceSum`` of ``x``: differentiable."""
    return AllReduceSum.apply(x, group)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm1d/2d whose training statistics cover every rank's rows (same state_dict keys)."""

    group = None

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected a (N, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(self.group) > 1
        if not (self.training and distributed):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # float64 stays float64
        local = torch.cat([xf.sum(dims), xf.new_tensor([x.numel() / x.shape[1]])])
        total = all_reduce(local, group=self.group)
        count = total[-1]
        mean = total[:-1] / count
        centred = xf - mean.view(shape)
        var = all_reduce(centred.square().sum(dims), group=self.group) / count
        with torch.no_grad():
            if self.track_running_stats:
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * count / (count - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_global_bn(module: nn.Module, group=None) -> nn.Module:
    """Replace every BatchNorm1d/2d by a GlobalBatchNorm sharing its parameters and buffers."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        new = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        new.group = group
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_global_bn(child, group))
    return module

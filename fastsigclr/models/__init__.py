"""Backbones and heads."""

from __future__ import annotations

from torch import nn

from fastsigclr.models.projector import projector
from fastsigclr.models.resnet import ARCHS, ResNet


class SSLModel(nn.Module):
    """Backbone f and projector g; ``forward`` returns (features h, projections z)."""

    def __init__(self, arch: str, width: int, proj_dims: tuple[int, ...], zero_init_residual: bool) -> None:
        super().__init__()
        self.backbone = ResNet(arch, width, zero_init_residual)
        self.projector = projector(self.backbone.out_dim, proj_dims)

    def forward(self, x):
        h = self.backbone(x)
        return h, self.projector(h)


__all__ = ["ARCHS", "ResNet", "SSLModel", "projector"]

"""The projection MLP g: Linear → BN → ReLU for each hidden layer, then a plain Linear."""

from __future__ import annotations

from torch import nn


def projector(in_dim: int, dims: tuple[int, ...]) -> nn.Sequential:
    """``dims`` lists the hidden sizes then the output size, e.g. (2048, 2048, 64)."""
    if not dims or min(dims) < 1:
        raise ValueError(f"projector dims must be positive sizes, got {dims}")
    layers: list[nn.Module] = []
    cin = in_dim
    for hidden in dims[:-1]:
        layers += [nn.Linear(cin, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU()]
        cin = hidden
    layers.append(nn.Linear(cin, dims[-1]))
    return nn.Sequential(*layers)

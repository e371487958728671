#!/usr/bin/env python3
"""What fp8 operands would cost the two-tower loss's gradient products in accuracy.

The strips' products (``kernels/fp32_products.py``) take 4·B²·D of the 6·B²·D FLOPs of SigLIP's
loss with its gradients, in bf16. fp8 (e4m3) runs twice as fast on Hopper's tensor cores, so with
``S`` kept in bf16 the matmul floor would fall to (2 + 4/2)/6 = 2/3 of bf16's. This measures the
price on the CPU, in float64 arithmetic on operands rounded as the tensor cores would see them:
``∂L/∂x = (t/B)·W·Y`` against float64, with ``W`` and ``Y`` in bf16 (what runs today), and in
e4m3 scaled per tensor or per row of ``W`` and column of ``Y`` (the scales factor out of the
product), with the positives' diagonal of ``W`` (σ(−a) near 1, the negatives' weights near
σ(b)) then added apart in full precision. Embeddings: unit rows, each text its image plus noise
of the same size, so a positive's cosine is about 0.7, both rounded to bf16 first (the
autocast outputs the loss receives, which bf16 operands hold exactly).

    python tools/fp8_products.py [--batch 2048] [--dim 768] [--scales 10,30,100] [--bias -10]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

E4M3_MAX = 448.0  # the largest finite float8_e4m3fn


def rounded(m: torch.Tensor, dtype: torch.dtype, dim: int | None = None) -> torch.Tensor:
    """``m`` as ``dtype`` holds it, back in float64: fp8 scaled so that the largest magnitude (of
    the tensor, or of each slice along ``dim``) is the format's largest."""
    if dtype is torch.bfloat16:
        return m.to(dtype).double()
    top = m.abs().amax() if dim is None else m.abs().amax(dim=dim, keepdim=True)
    scale = top.clamp_min(1e-300) / E4M3_MAX
    return (m / scale).to(dtype).double() * scale


def errors(batch: int, dim: int, logit_scale: float, logit_bias: float, seed: int = 0) -> dict[str, float]:
    """Relative error (Frobenius) of ∂L/∂x against float64, per way of rounding the operands."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, dim, dtype=torch.float64, generator=gen)
    # The embeddings come in bf16 (autocast): held exactly by bf16 operands, rounded by e4m3 ones.
    x = rounded(F.normalize(base, dim=1), torch.bfloat16)
    y = rounded(F.normalize(base + torch.randn(batch, dim, dtype=torch.float64, generator=gen), dim=1),
                torch.bfloat16)  # fmt: skip
    logits = logit_scale * x @ y.T + logit_bias
    sign = -torch.ones(batch, batch, dtype=torch.float64)
    sign.fill_diagonal_(1.0)
    w = -sign * torch.sigmoid(-sign * logits)  # B·∂L/∂a
    exact = logit_scale * w @ y / batch
    diagonal = torch.diag(torch.diagonal(w))
    ways = {
        "bf16": lambda: rounded(w, torch.bfloat16) @ rounded(y, torch.bfloat16),
        "e4m3, per tensor": lambda: rounded(w, torch.float8_e4m3fn) @ rounded(y, torch.float8_e4m3fn),
        "e4m3, per row, positives apart": lambda: (
            rounded(w - diagonal, torch.float8_e4m3fn, 1) @ rounded(y, torch.float8_e4m3fn, 0) + diagonal @ y
        ),
    }
    return {
        name: float((logit_scale * way() / batch - exact).norm() / exact.norm()) for name, way in ways.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2048, help="B (default: 2048)")
    parser.add_argument("--dim", type=int, default=768, help="D (default: 768)")
    parser.add_argument("--scales", default="10,30,100", help="logit scales t (default: 10,30,100)")
    parser.add_argument("--bias", type=float, default=-10.0, help="logit bias b (default: -10)")
    args = parser.parse_args()
    for t in (float(s) for s in args.scales.split(",")):
        found = errors(args.batch, args.dim, t, args.bias)
        print(f"t = {t:g}, b = {args.bias:g}: " + "; ".join(f"{k} {v:.2e}" for k, v in found.items()))


if __name__ == "__main__":
    main()

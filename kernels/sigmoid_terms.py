"""The per-pair arithmetic of the fused sigmoid loss kernel (sigmoid_kernel.py): a pair's weight
r = 2¹⁵·σ(a) and its softplus term from one exp2 and one reciprocal, and r as a dot operand."""

import math

import numpy as np
import triton
import triton.language as tl

from .tiles import bf16_values, fast_rcp

# r = 2¹⁵·σ is what the second dot multiplies: ≤ 32768 < 65504 (fp16's largest), and fp16 keeps
# it normal down to σ = 6.1e-5 / 2¹⁵ = 1.9e-9 (a < −20), where σ·(1/M) flushed every negative
# pair at logit_scale 10, logit_bias −10, 2N = 8192 (σ(−10)/8192 = 5.5e-9 < 6e-8, fp16's
# smallest subnormal).
G_SCALE = tl.constexpr(32768.0)
INV_G_SCALE = tl.constexpr(1.0 / 32768.0)


def _log1m_coefficients(degree: int = 8) -> list[float]:
    """P with q·P(q) = −log2(1 − q) on [0, 1/2]: Chebyshev interpolation in float64. Degree 8
    errs by 1.5e-7 relative when evaluated in fp32 (degree 7: 2.7e-7; 9: 1.1e-7)."""
    f = np.polynomial.Chebyshev.interpolate(
        lambda q: -np.log1p(-q) / (q * math.log(2)), degree, domain=[0, 0.5]
    )
    return [float(c) for c in f.convert(kind=np.polynomial.Polynomial).coef]


_P0, _P1, _P2, _P3, _P4, _P5, _P6, _P7, _P8 = (tl.constexpr(c) for c in _log1m_coefficients())


@triton.jit
def _log1m_poly(q):
    p = _P7 + q * _P8
    p = _P6 + q * p
    p = _P5 + q * p
    p = _P4 + q * p
    p = _P3 + q * p
    p = _P2 + q * p
    p = _P1 + q * p
    return _P0 + q * p


@triton.jit
def negative_weight(s, scale2, bias2):
    """For logits a = logit_scale·s + logit_bias, with scale2 = −logit_scale·log2 e and bias2 =
    −logit_bias·log2 e: x = −a·log2 e and r = 2¹⁵·σ(a), from one exp2 and one reciprocal.
    x → ±∞ gives r = 0 or 2¹⁵, never NaN."""
    x = s * scale2 + bias2
    return x, weight_of(x)


@triton.jit
def weight_of(x):
    """r = 2¹⁵·σ(a) of x = −a·log2 e: one exp2 and one reciprocal; x = +∞ gives r = 0."""
    return fast_rcp(tl.exp2(x) * INV_G_SCALE + INV_G_SCALE)


@triton.jit
def softplus2(x, r):
    """softplus(a)/ln 2 = max(a·log2 e, 0) + log2(1 + 2^−|a·log2 e|) from x and r (see above).
    With q = min(σ(a), σ(−a)) ≤ 1/2, the second term is −log2(1 − q) = q·P(q): accurate for the
    small q of nearly every pair, where a log2 of the rounded 1 − q would keep none of q's digits
    below 6e-8, and on the FMA units (no MUFU: 8 FFMA for P)."""
    q = tl.minimum(r, G_SCALE - r) * INV_G_SCALE
    return tl.maximum(-x, 0.0) + q * _log1m_poly(q)


@triton.jit
def dot_weight(r, ZC, CAST_BF16: tl.constexpr, UPCAST: tl.constexpr):
    """r as an operand of the gradient dots, rounded to the operand dtype: ZC's, or bf16 with
    CAST_BF16 (held in fp32 under UPCAST)."""
    if CAST_BF16 or ZC.dtype.element_ty == tl.bfloat16:
        w = bf16_values(r, UPCAST)
    else:
        w = r.to(ZC.dtype.element_ty)
    if UPCAST:
        w = w.to(tl.float32)
    return w

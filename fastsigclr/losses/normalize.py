"""Row L2-normalisation computed in fp32 whatever the input dtype, saving only z and 1/‖z‖.

``F.normalize`` on a 16-bit tensor divides and differentiates in 16 bits; its backward,
(dẑ − ẑ⟨ẑ, dẑ⟩)/‖z‖, cancels most of dẑ when D is small, and the fp16 gradient lost 2% of its
largest value at D = 3 (tests/test_sigmoid_loss.py). Upcasting z first would keep an fp32 copy
alive for backward (2× the size of a bf16 z); this keeps M floats and recomputes ẑ instead, a
range of rows at a time.

Rows are divided by max(‖z‖, EPS), the rule of ``F.normalize(z, dim=1, eps=EPS)``. A row shorter
than EPS (a zero row) is scaled by 1/EPS rather than normalised, and its gradient is (∂L/∂ẑ)/EPS.
With F.normalize's default eps = 1e-12 that was 10¹² × ∂L/∂ẑ (measured 1.8e12 for a zero row among
8 rows of the sigmoid loss at t = 10, b = −10, and inf in fp16), which one optimiser step carries
into the projector. EPS = 1e-4 makes it 1.8e4 there (finite in fp16, whose largest value is
65504; for the sigmoid loss |∂L/∂ẑ| ≤ 2t) and lies four orders of magnitude below any real
projection (ResNet-18 projector outputs at initialisation have norms 1.6 to 3.7).
"""

from __future__ import annotations

import torch

EPS = 1e-4  # rows shorter than this are divided by EPS instead (see above)
# Rows go through fp32 in 8 ranges, so the fp32 temporaries of a bf16 z take about |z|/2 at once
# (forward and backward): whole-tensor fp32 copies peaked at 4.0×|z| in forward and 9.0×|z| forward +
# backward (TensorAllocations, bf16 4096 × 64), against the loss's 4×|z| budget at 2N = 65,536.
CHUNKS = 8
MIN_CHUNK = 1 << 16  # elements: smaller tensors go in one piece (launches cost more than memory)


def _row_chunks(z: torch.Tensor) -> list[slice]:
    """Row ranges of about 1/CHUNKS of z (at least MIN_CHUNK elements each)."""
    rows = max(1, -(-max(z.numel() // CHUNKS, MIN_CHUNK) // max(z.shape[1], 1)))
    return [slice(i, i + rows) for i in range(0, z.shape[0], rows)]


class _RowNormalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        work = torch.promote_types(z.dtype, torch.float32)
        inv_norm = torch.empty((z.shape[0], 1), dtype=work, device=z.device)
        out = torch.empty(z.shape, dtype=z.dtype, device=z.device)
        for rows in _row_chunks(z):
            zc = z[rows].to(work, copy=True)
            inv_norm[rows] = zc.norm(dim=1, keepdim=True).clamp_min_(EPS).reciprocal_()
            out[rows] = zc.mul_(inv_norm[rows])
        ctx.save_for_backward(z, inv_norm)
        return out

    @staticmethod
    def backward(ctx, grad):
        z, inv_norm = ctx.saved_tensors
        dz = torch.empty(z.shape, dtype=z.dtype, device=z.device)
        for rows in _row_chunks(z):
            inv = inv_norm[rows]
            zhat = z[rows].to(inv.dtype, copy=True).mul_(inv)
            g = grad[rows].to(inv.dtype)
            d = (g - zhat.mul_((zhat * g).sum(dim=1, keepdim=True))).mul_(inv)
            # Rows clamped at EPS are scaled, not normalised: their Jacobian is the plain scale.
            short = inv >= 1 / EPS
            if short.any():
                d = torch.where(short, g * inv, d)
            dz[rows] = d
        return dz


def normalize_rows(z: torch.Tensor) -> torch.Tensor:
    """(M, D) → (M, D) rows z / max(‖z‖, EPS) (EPS = 1e-4), in z's dtype; computed and
    differentiated in fp32."""
    return _RowNormalize.apply(z)

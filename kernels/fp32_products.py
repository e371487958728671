"""The weight strips' products (sigmoid_strip.py): 16-bit operands multiplied into fp32 results,
written in place where nothing has reached the gradient rows yet, else added to them, inside cuBLAS
where the device's torch allows (``addmm_accumulates``)."""

from __future__ import annotations

import functools

import torch


def mm_has_out_dtype() -> bool:
    """Whether torch.mm takes ``out_dtype`` (16-bit operands, an fp32 result: torch ≥ 2.8)."""
    return hasattr(torch.ops.aten.mm, "dtype")


def mm_fp32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a·b with an fp32 result (into ``out`` when given): 16-bit CUDA operands straight to cuBLAS
    (fp32 accumulation and output, torch ≥ 2.8, which strips_wanted asks of a GPU launch), else in
    fp32 (forced strips: the products of 16-bit values are exact there). Outside autocast, which
    would recast them."""
    with torch.autocast(a.device.type, enabled=False):
        if a.is_cuda and a.dtype != torch.float32:
            return torch.mm(a, b, out_dtype=torch.float32, out=out)
        return torch.mm(a.float(), b.float(), out=out)


@functools.cache
def addmm_accumulates(device: torch.device) -> bool:
    """Whether torch.addmm adds 16-bit products into an fp32 tensor in place on this CUDA device
    (``out_dtype=float32`` with the fp32 tensor as both ``self`` and ``out``: cuBLAS's C = C + A·B,
    half the moves of a product written, read back and added; torch's that take only a 16-bit self
    raise). Probed once per device on small integers, whose sums are exact: an error or a wrong sum
    answers no."""
    if device.type != "cuda" or not hasattr(torch.ops.aten.addmm, "dtype_out"):
        return False
    if device.index is None:  # one answer per device: "cuda" is the current one
        return addmm_accumulates(torch.device("cuda", torch.cuda.current_device()))
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randint(-4, 5, shape, generator=gen).float() for shape in ((48, 32), (32, 40)))
    c = torch.randint(-4, 5, (48, 40), generator=gen).float()
    want = c + a @ b
    got = c.to(device)
    try:
        with torch.autocast(device.type, enabled=False):
            a, b = a.to(device, torch.bfloat16), b.to(device, torch.bfloat16)
            torch.addmm(got, a, b, out_dtype=torch.float32, out=got)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return torch.equal(got.cpu(), want)


def put_product(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool) -> None:
    """grad = a·b (written in place) where nothing has reached grad yet, else grad += a·b: inside
    cuBLAS where addmm_accumulates, else through a product written apart."""
    if first:
        mm_fp32(a, b, out=grad)
    elif a.is_cuda and a.dtype == torch.bfloat16 and addmm_accumulates(a.device):  # as probed
        with torch.autocast(a.device.type, enabled=False):
            torch.addmm(grad, a, b, out_dtype=torch.float32, out=grad)
    else:
        grad += mm_fp32(a, b)

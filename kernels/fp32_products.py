"""The weight strips' products (sigmoid_strip.py): 16-bit operands multiplied into fp32 results,
written in place where nothing has reached the gradient rows yet, else added to them, inside cuBLAS
where the device's torch allows (``addmm_accumulates``)."""

from __future__ import annotations

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


_ACCUMULATES: dict[torch.device, bool] = {}


def _probe_cases(w: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> list[tuple]:
    """(A, B, C's rows) of the layouts the strips hand addmm: A the weights, an offset column slice
    of them transposed, one row of them; B contiguous rows; C an offset block of rows."""
    return [(w, y, slice(8, 48)), (w[:, 5:38].T, x, slice(0, 33)), (w[:, 7:8].T, x, slice(3, 4))]


def addmm_accumulates(device: torch.device) -> bool:
    """Whether torch.addmm adds 16-bit products into an fp32 tensor in place on this CUDA device
    (``out_dtype=float32`` with the fp32 tensor as both ``self`` and ``out``: cuBLAS's C = C + A·B,
    half the moves of a product written, read back and added; torch's that take only a 16-bit self
    raise). Probed once per device on the strips' layouts with integers whose sums are exact in
    fp32 (``_probe_cases``): an error or a wrong sum answers no. An out-of-memory error answers no
    for this call only (the next one probes again)."""
    if device.type != "cuda" or not hasattr(torch.ops.aten.addmm, "dtype_out"):
        return False
    if device.index is None:  # one answer per device: "cuda" is the current one
        device = torch.device("cuda", torch.cuda.current_device())
    if device not in _ACCUMULATES:
        try:
            _ACCUMULATES[device] = _probe(device)
        except torch.OutOfMemoryError:
            return False
    return _ACCUMULATES[device]


def _probe(device: torch.device) -> bool:
    """The probe's sums: integers |v| ≤ 15 in the operands (exact in bf16), sums up to 16,200 (not
    exact in bf16) added to C's |v| ≤ 2,000 (nor those): a product or a C rounded to bf16 shows."""
    gen = torch.Generator().manual_seed(0)
    w, y, x = (
        torch.randint(-15, 16, shape, generator=gen).float() for shape in ((40, 72), (72, 24), (40, 24))
    )
    c = torch.randint(-2000, 2001, (56, 24), generator=gen).float()
    on_device = (t.to(device, torch.bfloat16) for t in (w, y, x))
    for (a, b, rows), (a16, b16, _) in zip(_probe_cases(w, y, x), _probe_cases(*on_device), strict=True):
        want = c.double()
        want[rows] += a.double() @ b.double()
        got = c.to(device)
        try:
            with torch.autocast(device.type, enabled=False):
                torch.addmm(got[rows], a16, b16, out_dtype=torch.float32, out=got[rows])
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, TypeError, NotImplementedError):
            return False
        if not torch.equal(got.cpu().double(), want):
            return False
    return True


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

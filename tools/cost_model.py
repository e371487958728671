"""A throughput model of a compiled kernel's inner loop on Hopper, from its SASS counts.

Per pair (one element of the loop's tile) and per SM, three pipes each take cycles:

    issue   = SASS instructions per pair (over the threads) / 128   4 schedulers × 32 lanes per clock
    mufu    = MUFU operations per pair / 16                          ex2, rcp, lg2, ...: 16 per clock
    tensor  = dot FLOPs per pair / tensor FLOP per clock            4096 (bf16, fp16), 2048 (tf32)

They overlap at best, so the largest bounds the loop; fp32 FMA on the CUDA cores (IEEE dots) is
counted in issue. Time at 2N rows: the longest of the pairs the kernel evaluates (every ordered
pair, (2N)², but about half for SigCLR's weight strips: strip_pairs) times the bound, spread over
the SMs at the clock; the compulsory memory traffic
(read Z once, write an fp32 dZ once) over the bandwidth; the gradient products the sigmoid
kernel adds to memory per tile with fp32 atomics (gradient_bytes_per_pair) at GRADIENT_ADD_TB_S;
and the weights the strip kernel writes (weight_bytes_per_pair) over the bandwidth. A strip
kernel's block adds its products' matmul FLOPs (strip_product_flops) at MATMUL_TFLOP_S after it.
Not modelled: latency a loop cannot hide, the tail of a grid that does not fill its last wave, L2
traffic of the re-read column tiles, launch and host overheads (at B = 8,192 an H200 took 3.1 ms
for SigLIP's loss, where every modelled term is under 0.4 ms).

Figures (per SM per clock unless said; sm_90):
  - tensor cores: 989.4 TFLOP/s dense bf16/fp16, 494.7 dense tf32 for an H100 SXM (NVIDIA H100
    datasheet); over 132 SMs that is 4096 and 2048 FLOP per clock at 1.83 GHz, the clock used here
    for every pipe (its maximum boost, 1.98 GHz, would make issue- and MUFU-bound loops 8% faster);
  - issue: 4 warp schedulers, one warp instruction (32 lanes) each per clock; MUFU: 16 results per
    clock, 4 per sub-partition; FP32: 128 lanes (NVIDIA H100 architecture whitepaper, 2022);
  - H200: the same GH100 with 132 SMs and the same clocks; HBM 4.8 TB/s against the H100 SXM's
    3.35 TB/s (NVIDIA H200 and H100 datasheets);
  - dense bf16 matmuls (the products that follow the weight strips): 796.8 TFLOP/s, measured on an
    H200 by the loss bench in the same runs (8192³, benchmarks/results/gpu-2026-12-04); the H100 SXM
    has the same tensor cores and clocks and is assumed the same (not measured);
  - fp32 atomic gradient adds: 1.37 TB/s, fitted on an H200 (benchmarks/results/gpu-2026-12-04:
    SigLIP's one-sweep kernel at B = 65,536 moved 34.4 GB in 24.4 ms at D = 128 and 206 GB in
    154.3 ms at D = 768, 1.41 and 1.34 TB/s); the H100 is assumed the same (not measured).
"""

from __future__ import annotations

from fastsigclr.kernels.sigmoid_strip import STRIP_CONFIG, strip_rows

ISSUE_PER_CLOCK = 128
MUFU_PER_CLOCK = 16
TENSOR_FLOP_PER_CLOCK = {"bf16": 4096, "fp16": 4096, "tf32": 2048}
GPUS = {
    "H100 SXM": {"sms": 132, "clock_ghz": 1.83, "hbm_tb_s": 3.35},
    "H200 SXM": {"sms": 132, "clock_ghz": 1.83, "hbm_tb_s": 4.8},
}
SIZES = (8192, 65536)  # 2N
ELEMENT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
GRADIENT_ADD_TB_S = 1.37  # fp32 atomic adds of gradient products, H200 (see above)
MATMUL_TFLOP_S = 796.8  # dense bf16 matmul, H200 (see above)
# A later strip's product added into the fp32 gradient, per element: read and written by cuBLAS
# (C = C + A·B in place, where kernels/fp32_products.py's probe finds torch's addmm(out_dtype) takes
# an fp32 C); 16 where it does not (the product written, read back, and the gradient read and written).
PRODUCT_ADD_BYTES = 8


def operand_type(dtype: str) -> str | None:
    """The tensor-core operand type of a report's dtype label; None for CUDA-core (IEEE) dots."""
    if dtype in ("bf16", "fp16"):
        return dtype
    if dtype == "fp32 tf32":
        return "tf32"
    if dtype == "fp32 bf16-operands":
        return "bf16"
    return None


def dot_flops_per_pair(row: dict) -> int | dict:
    """Tensor-core FLOPs per pair: the case's own figure, else the sigmoid kernel's two dots (S over
    the padded features, then G·Z, each 2·BLOCK_K) at one feature tile."""
    if "dot_flops_per_pair" in row:
        return row["dot_flops_per_pair"]
    block_k = max(16, 1 << (row["D"] - 1).bit_length())
    return 4 * block_k


def gradient_bytes_per_pair(row: dict) -> float:
    """Bytes of fp32 gradient products the sigmoid kernel adds to memory per pair, tile by tile: a
    BLOCK_M × BLOCK_N tile adds its rows' G·Z (BLOCK_M × D) unless they stay in registers (the
    report records ``feature_trips`` where the products go to memory in slices instead), and the
    columns' Gᵀ·Z (BLOCK_N × D) where it forms them (two towers; the symmetric schedule, whose tile
    stands for both of its ordered pairs). 0 for other kernels, which keep
    their accumulators on chip (and for siglip-kernel's, whose plain read-modify-writes the H200
    run did not time)."""
    kernel = row.get("kernel", "")
    if not kernel.startswith("sigmoid") or "BLOCK_M" not in row or is_strip(row):
        return 0.0
    # "sigmoid two-tower sweep" forms the rows' gradient alone (one of SigLIP's two sweeps).
    two_tower, symmetric = kernel == "sigmoid two-tower", "symmetric" in kernel
    rows = row["BLOCK_M"] if "feature_trips" in row else 0
    cols = row["BLOCK_N"] if two_tower or symmetric else 0
    per_tile = 4 * row["D"] * (rows + cols)
    return per_tile / (row["BLOCK_M"] * row["BLOCK_N"] * (2 if symmetric else 1))


def is_strip(row: dict) -> bool:
    return row.get("kernel", "").startswith("sigmoid weight strip")


def weight_bytes_per_pair(row: dict) -> float:
    """Bytes the weight-strip kernel writes per pair (one weight in the operands' dtype); 0 for the
    other kernels, which keep their weights on chip."""
    return float(ELEMENT_BYTES[row["dtype"].split()[0]]) if is_strip(row) else 0.0


def strip_product_flops(row: dict) -> int:
    """Matmul FLOPs per pair after a weight strip: W·Y into the rows (2·D) and, two towers, Wᵀ·X into
    the columns (2·D more); 0 for the other kernels."""
    if not is_strip(row):
        return 0
    return 2 * row["D"] * (2 if "two-tower" in row["kernel"] else 1)


def strip_pairs(row: dict, rows: int) -> int:
    """Pairs a kernel visits at 2N = rows: every ordered pair, but SigCLR's weight strips (G is
    symmetric) visit each strip's rows against the columns from its own first row on: about
    (2N)²/2 plus half of each strip's square."""
    if not is_strip(row) or "two-tower" in row["kernel"]:
        return rows * rows
    height = _strip_height(row, rows)
    return sum(min(height, rows - r0) * (rows - r0) for r0 in range(0, rows, height))


def _strip_height(row: dict, rows: int) -> int:
    symmetric = "two-tower" not in row["kernel"]
    return strip_rows(rows, rows, int(weight_bytes_per_pair(row)), STRIP_CONFIG["block"], symmetric)


def strip_block_seconds(row: dict, rows: int, kernel_s: float, spec: dict) -> float:
    """A weight strip's block at 2N = rows: the strip kernel, no faster than its S at the measured
    matmul rate (the compiled count prices its tensor cores at peak, 989 TFLOP/s), then the
    products' matmuls at that rate, then their fp32 results: written in place where the first
    strip reaches a gradient row first (4 bytes per element; SigCLR's first strip reaches every
    row, two towers' every strip its own rows and the first every column), else added into the
    gradient (PRODUCT_ADD_BYTES: two towers' columns after the first strip; SigCLR's rows from each
    later strip's first row on). The products' FLOPs are (2N)² · 2·D (SigCLR: W·Y over
    the pairs visited, Wᵀ·X over those past each strip's square) and twice that for two towers,
    at the matmul rate or, if slower, their weights' reads (each product reads its pairs' weights
    once) at the HBM bandwidth."""
    pairs, d, hbm = rows * rows, row["D"], spec["hbm_tb_s"] * 1e12
    s_matmul = strip_pairs(row, rows) * 2 * d / (MATMUL_TFLOP_S * 1e12)
    # Each product reads its pairs' weights once: below D = rate / bandwidth (166 on an H200) they,
    # not the FLOPs, bound it.
    reads = pairs * strip_product_flops(row) / (2 * d) * weight_bytes_per_pair(row)
    products = max(pairs * strip_product_flops(row) / (MATMUL_TFLOP_S * 1e12), reads / hbm)
    starts, add = range(0, rows, _strip_height(row, rows)), PRODUCT_ADD_BYTES
    if "two-tower" in row["kernel"]:
        moved = 8 * rows * d + add * (len(starts) - 1) * rows * d
    else:
        moved = 4 * rows * d + add * d * sum(rows - r0 for r0 in starts[1:])
    return max(kernel_s, s_matmul) + products + moved / hbm


def model(row: dict) -> dict | None:
    """The cost per pair and the predicted time of one compiled case; None without SASS counts."""
    if "sass_per_pair" not in row or row.get("error"):
        return None
    operand = operand_type(row["dtype"])
    flops = dot_flops_per_pair(row)
    if isinstance(flops, dict):  # dots on different operand types: {operand: FLOPs per pair}
        tensor = sum(f / TENSOR_FLOP_PER_CLOCK[op] for op, f in flops.items())
    else:
        tensor = flops / TENSOR_FLOP_PER_CLOCK[operand] if operand else 0.0
    cycles = {
        "issue": row["sass_per_pair"] / ISSUE_PER_CLOCK,
        "mufu": row["mufu_per_pair"] / MUFU_PER_CLOCK,
        "tensor": tensor,
    }
    bound = max(cycles, key=cycles.get)
    per_pair = cycles[bound]
    element = ELEMENT_BYTES[row["dtype"].split()[0]]
    added = gradient_bytes_per_pair(row)
    predicted, block, limits = {}, {}, set()
    for gpu, spec in GPUS.items():
        for rows in SIZES:
            visited = strip_pairs(row, rows)
            times = {
                bound: visited * per_pair / (spec["sms"] * spec["clock_ghz"] * 1e9),
                "memory": rows * row["D"] * (element + 4) / (spec["hbm_tb_s"] * 1e12),
                "gradient adds": rows * rows * added / (GRADIENT_ADD_TB_S * 1e12),
                "weights": visited * weight_bytes_per_pair(row) / (spec["hbm_tb_s"] * 1e12),
            }
            limit = max(times, key=times.get)
            limits.add(limit)
            predicted[f"{gpu} 2N={rows}"] = round(times[limit] * 1e6, 1)
            if is_strip(row):
                block[f"{gpu} 2N={rows}"] = round(strip_block_seconds(row, rows, times[limit], spec) * 1e6, 1)
    found = {
        "cycles_per_pair": {k: round(v, 4) for k, v in cycles.items()},
        "bound": bound,
        "gradient_bytes_per_pair": round(added, 3),
        "time_bound": sorted(limits),
        "predicted_us": predicted,
    }
    if block:  # the strip kernel, then its products' matmuls
        found["block_us"] = block
    return found


def constants() -> dict:
    """What a report records about the model it applied."""
    return {
        "issue_per_clock": ISSUE_PER_CLOCK,
        "mufu_per_clock": MUFU_PER_CLOCK,
        "tensor_flop_per_clock": TENSOR_FLOP_PER_CLOCK,
        "gpus": GPUS,
        "gradient_add_tb_s": GRADIENT_ADD_TB_S,
        "matmul_tflop_s": MATMUL_TFLOP_S,
        "product_add_bytes": PRODUCT_ADD_BYTES,
        "time": "max(pairs visited · bound cycles / (SMs · clock), 2N · D · (input bytes + 4) / HBM "
        "bandwidth, (2N)² · gradient bytes per pair / gradient add rate, pairs visited · weight bytes "
        "per pair / HBM bandwidth); pairs visited: (2N)², SigCLR's weight strips about half; a weight "
        "strip's block adds its products, max((2N)² · product FLOPs per pair / matmul rate, their "
        "weights' reads / HBM bandwidth), and their fp32 moves (product_add_bytes per element added)",
    }


def annotate(rows: list[dict]) -> None:
    for row in rows:
        found = model(row)
        if found:
            row["model"] = found
        else:
            row.pop("model", None)


def best(rows: list[dict], **match) -> dict | None:
    """The modelled row with the fewest cycles per pair among those matching (kept candidates or
    launcher configs): what the autotuner would pick if the model were the timing."""
    pool = [
        r
        for r in rows
        if "model" in r
        and all(r.get(k) == v for k, v in match.items())
        and (r.get("kept") or not r.get("candidate"))
    ]
    return min(pool, key=lambda r: max(r["model"]["cycles_per_pair"].values()), default=None)

"""What a compiled kernel's code says: ptxas's register and spill report, the SASS of a cubin, and its
loops (tools/compile_kernels.py): the hottest loop's body, a column loop's instructions per
iteration with its feature loops counted per trip along a chosen path, and its spill instructions."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import triton

NVIDIA_BIN = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin")


def ptxas_usage(log: str) -> dict:
    """Registers, spills and local memory (stack frame) per thread from ptxas -v."""

    def number(pattern: str) -> int:
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_store_bytes": number(r"(\d+) bytes spill stores"),
        "spill_load_bytes": number(r"(\d+) bytes spill loads"),
        "local_bytes": number(r"(\d+) bytes stack frame"),
    }


def sass_instructions(cubin: bytes) -> list[tuple[int, str]]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [os.path.join(NVIDIA_BIN, "cuobjdump"), "-sass", f.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    found = (re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line) for line in out.splitlines())
    return [(int(m.group(1), 16), m.group(2)) for m in found if m]


def inner_loop(instructions: list[tuple[int, str]]) -> list[str]:
    """The body of the hottest loop: of the ranges closed by a backward branch, the one with the
    most matrix instructions (wgmma/mma), then the longest. Empty without a loop."""
    best: tuple[int, list[str]] = (-1, [])
    for addr, text in instructions:
        if not re.search(r"(^|\s)BRA\b", text):
            continue
        target = int(re.findall(r"0x([0-9a-f]+)", text)[-1], 16)
        if target >= addr:
            continue
        body = [t for a, t in instructions if target <= a <= addr]
        mma = sum(bool(re.search(r"\b(HGMMA|HMMA)\b", t)) for t in body)
        if (mma, len(body)) > (best[0], len(best[1])):
            best = (mma, body)
    return best[1]


def _loop_nest(instructions: list[tuple[int, str]]) -> tuple[tuple, list, list] | None:
    """(column loop, the loops directly inside it, every loop) as address ranges: the column loop is,
    of the innermost loops holding loops, the one with the most matrix instructions (a correction
    loop over feature slices holds none), then the smallest; None without nested loops."""
    ranges = []
    for addr, text in instructions:
        if re.search(r"(^|\s)BRA\b", text):
            target = int(re.findall(r"0x([0-9a-f]+)", text)[-1], 16)
            if target < addr:
                ranges.append((target, addr))

    def inside(a: tuple, b: tuple) -> bool:
        return a != b and b[0] <= a[0] and a[1] <= b[1]

    def mma(r: tuple) -> int:
        return sum(bool(re.search(r"\b(HGMMA|HMMA)\b", t)) for a, t in instructions if r[0] <= a <= r[1])

    holders = [r for r in ranges if any(inside(q, r) for q in ranges)]
    if not holders:
        return None
    innermost = [r for r in holders if not any(inside(q, r) for q in holders)]
    outer = min(innermost, key=lambda r: (-mma(r), r[1] - r[0]))
    inner = [
        q for q in ranges if inside(q, outer) and not any(inside(q, p) and inside(p, outer) for p in ranges)
    ]
    return outer, inner, ranges


def nested_loop(instructions: list[tuple[int, str]], trips: int, path: str = "all") -> tuple[int, int]:
    """(SASS, MUFU) per iteration of the column loop (_loop_nest), each loop directly inside it
    counted ``trips`` times. ``path``: "all" its code; "cheapest" or "dearest" one path through the
    forward branches that hold no loop (the weight strips' tiles without and with tests per
    element): of an if/else the shorter or longer side, of an if without else none or all of its
    block. Approximate: a software-pipelined loop runs a little fewer times than its trip count."""
    nest = _loop_nest(instructions)
    if nest is None:
        return 0, 0
    outer, inner, ranges = nest
    skipped = _off_path(instructions, outer, ranges, path == "cheapest") if path != "all" else set()

    def counts(r: tuple) -> tuple[int, int]:
        body = [t for a, t in instructions if r[0] <= a <= r[1] and a not in skipped]
        return len(body), sum(t.split()[0].startswith("MUFU") for t in body)

    total, mufu = counts(outer)
    for q in inner:
        n, u = counts(q)
        total, mufu = total + (trips - 1) * n, mufu + (trips - 1) * u
    return total, mufu


def spill_instructions(instructions: list[tuple[int, str]]) -> dict:
    """Local-memory loads and stores (LDL/STL: ptxas's spills) in the loops directly inside the
    column loop (the feature loops) and in the column loop's own code on its cheapest path (once
    per tile; outside the feature loops)."""
    nest = _loop_nest(instructions)
    if nest is None:
        return {}
    outer, inner, ranges = nest
    skipped = _off_path(instructions, outer, ranges, True)

    def spills(t: str) -> bool:
        return bool(re.match(r"(@!?U?P(?:T|\d+)\s+)?(LDL|STL)\b", t))

    in_inner = [a for a, t in instructions if spills(t) and any(q[0] <= a <= q[1] for q in inner)]
    per_tile = [
        a for a, t in instructions
        if spills(t) and outer[0] <= a <= outer[1] and a not in skipped and a not in in_inner
    ]  # fmt: skip
    return {"spill_ops_feature_loop": len(in_inner), "spill_ops_per_tile": len(per_tile)}


def _off_path(
    instructions: list[tuple[int, str]], outer: tuple, loops: list[tuple], cheapest: bool
) -> set[int]:
    """Addresses in ``outer`` off its cheapest (or dearest) path: of each predicated forward branch
    holding no loop, the block it skips (dearest: none), or, where that block ends in a jump over an
    else block, the longer (dearest: the shorter) of the two."""
    at = dict(instructions)
    addrs = [a for a, _ in instructions]
    skipped: set[int] = set()

    def block(lo: int, hi: int) -> list[int]:  # addresses lo <= a < hi
        return [a for a in addrs if lo <= a < hi]

    def loop_free(lo: int, hi: int) -> bool:
        return not any(lo <= q[0] and q[1] < hi for q in loops)

    for addr, text in instructions:
        if not (outer[0] <= addr < outer[1] and text.startswith("@") and re.search(r"\bBRA\b", text)):
            continue
        target = int(re.findall(r"0x([0-9a-f]+)", text)[-1], 16)
        if not (addr < target <= outer[1] and loop_free(addr, target)):
            continue
        then = block(addr + 1, target)
        jump = at.get(then[-1], "") if then else ""
        end = int(re.findall(r"0x([0-9a-f]+)", jump)[-1], 16) if re.match(r"BRA\b", jump) else 0
        if target < end <= outer[1] and loop_free(target, end):  # if/else: one side
            other = block(target, end)
            longer, shorter = (then, other) if len(then) > len(other) else (other, then)
            skipped.update(longer if cheapest else shorter)
        elif cheapest:
            skipped.update(then)
    return skipped

"""Proof that the emulated tests can fail: rebuild the kernels with one deliberate defect at a
time and run the emulated tests (tests/ops/test_cuda_emulation.py) against each.

usage: .venv/bin/python tests/cuda_emulation/mutate.py [--full] [--only NAME ...]

Prints a Markdown table: defect, whether the tests caught it, and the first test that failed.
Exit status 1 when a defect the harness is expected to catch went unnoticed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAD = "fused_head_sample_kernels.cu"

# (name, file, original text, defective text, expected to be caught)
MUTATIONS = [
    (
        "removed __syncthreads (mma chunk kernel)",
        HEAD,
        "  __syncthreads();\n  chunk_block_epilogue<8 * NT>",
        "  chunk_block_epilogue<8 * NT>",
        True,
    ),
    (
        "removed __syncthreads (fp32 chunk kernel)",
        HEAD,
        "  __syncthreads();\n  chunk_block_epilogue<NR>",
        "  chunk_block_epilogue<NR>",
        True,
    ),
    (
        "swapped mma A operands (a1 <-> a2)",
        HEAD,
        "word16(a[m][1], 2 * s), word16(a[m][0], 2 * s + 1),",
        "word16(a[m][0], 2 * s + 1), word16(a[m][1], 2 * s),",
        True,
    ),
    (
        "swapped mma B operands (b0 <-> b1)",
        HEAD,
        "word16(b, 2 * s), word16(b, 2 * s + 1));",
        "word16(b, 2 * s + 1), word16(b, 2 * s));",
        True,
    ),
    (
        "off-by-one row bound (select kernel)",
        HEAD,
        "if (row >= a.rows) return;  // whole warp",
        "if (row > a.rows) return;  // whole warp",
        True,
    ),
    (
        "off-by-one chunk length",
        HEAD,
        "const int len = static_cast<int>(min64(kChunk, a.vocab - begin));\n  const int64_t row0 = rg * (8 * NT);",
        "const int len = static_cast<int>(min64(kChunk, a.vocab - begin + 1));\n  const int64_t row0 = rg * (8 * NT);",
        True,
    ),
    (
        "shuffle moved into divergent code (mass)",
        HEAD,
        "  for (int k = 0; k < kMassLanes; ++k) l[k] = __shfl_sync(0xffffffffu, part, k);",
        "  for (int k = 0; k < kMassLanes; ++k) l[k] = lane < kMassLanes ? __shfl_sync(0xffffffffu, part, k) : 0.0;",
        True,
    ),
    (
        "removed __syncwarp (select kernel)",
        HEAD,
        "  __syncwarp();  // orders the lanes' global writes",
        "  // orders the lanes' global writes",
        True,
    ),
    (
        "slices of a chunk stored over one another (split-grid combine)",
        HEAD,
        "zidx(static_cast<int>(id - chunk * kChunk))",
        "zidx(static_cast<int>((id - chunk * kChunk) % kSliceIds))",
        True,
    ),
    (
        "summary reads another row's logits (split-grid combine)",
        HEAD,
        "chunk_row_epilogue(a.logits + pair * kZChunkStride,",
        "chunk_row_epilogue(a.logits + chunk * kZChunkStride,",
        True,
    ),
    (
        "cluster gathers the next slice's logits (cluster combine)",
        HEAD,
        "cluster.map_shared_rank(s_slice, s);",
        "cluster.map_shared_rank(s_slice, (s + 1) % kSlicesPerChunk);",
        True,
    ),
    (
        "removed the cluster barrier before the gather",
        HEAD,
        "  cluster.sync();  // every slice's logits are in its block's shared memory\n",
        "",
        True,
    ),
    (
        "removed the cluster barrier after the gather",
        HEAD,
        "  cluster.sync();\n  const int warp = threadIdx.x >> 5;\n  const int rl = rank",
        "  const int warp = threadIdx.x >> 5;\n  const int rl = rank",
        True,
    ),
    (
        "scan bound without its slack",
        HEAD,
        "constexpr double kScanSlack = 4e-13;",
        "constexpr double kScanSlack = 0.0;",
        False,
    ),
    (
        "philox: one output bit flipped",
        "philox_kernels.cu",
        "const Philox4x32 r = philox_block(key, static_cast<uint32_t>(b));",
        "Philox4x32 r = philox_block(key, static_cast<uint32_t>(b)); r.v[0] ^= 0x80000000u;",
        True,
    ),
]

WHY_NOT = {
    "scan bound without its slack": (
        "needs a target within ~1e-13 (relative) of a running sum where the parallel and sequential "
        "float64 sums round differently: probability ~1e-12 per draw, and on exact-logit inputs both sums "
        "are exact, so no test input reaches it"
    ),
}


def run(mutation, full: bool) -> tuple[bool, str, float]:
    name, file, old, new, _ = mutation
    src = (ROOT / "csrc" / "cuda" / file).read_text()
    if src.count(old) != 1:
        raise SystemExit(f"mutation {name!r}: the original text occurs {src.count(old)} times in {file}")
    with tempfile.TemporaryDirectory() as tmp:
        for f in (ROOT / "csrc" / "cuda").glob("*_kernels.cu"):
            text = f.read_text()
            (Path(tmp) / f.name).write_text(text.replace(old, new) if f.name == file else text)
        env = dict(os.environ, MDLM_FAST_EMU_KERNELS=tmp, OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "pytest", "-v", "-x", "-p", "no:cacheprovider", "tests/ops/test_cuda_emulation.py"]
        if full:
            cmd.append("--emulated-full")
        start = time.time()
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        elapsed = time.time() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.M)
    if failed:
        first = failed[0].split("::")[-1]
    elif result.returncode < 0:
        first = f"the test process died (signal {-result.returncode}) in {_last_test(result.stdout)}"
    else:
        first = f"exit status {result.returncode}"
    return result.returncode != 0, first, elapsed


def _last_test(stdout: str) -> str:
    """The test running when pytest died: the last one -v printed a start for."""
    started = re.findall(r"^(tests/\S+::\S+)", stdout, re.M)
    return started[-1].split("::")[-1] if started else "an unknown test"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="run the full emulated matrix per mutation")
    parser.add_argument("--only", nargs="*", help="names (substrings) of the mutations to run")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or any(o in m[0] for o in args.only)]
    print("| defect | caught | first failing test | s |")
    print("|---|---|---|---|")
    surprises = 0
    for m in chosen:
        caught, test, elapsed = run(m, args.full)
        note = test if caught else f"not caught: {WHY_NOT.get(m[0], 'no test input exercises it')}"
        print(f"| {m[0]} | {'yes' if caught else 'no'} | {note} | {elapsed:.0f} |", flush=True)
        surprises += int(caught != m[4])
    return 1 if surprises else 0


if __name__ == "__main__":
    sys.exit(main())

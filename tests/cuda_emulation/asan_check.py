"""Runs the emulated kernels from an AddressSanitizer build (started with libasan preloaded, so
torch's allocations carry redzones too): any out-of-bounds access aborts with ASan's report.

usage: asan_check.py LIB quick|full|overrun
"""

import ctypes
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulator import Emulator  # noqa: E402

from mdlm_fast.ops import compiled as ops  # noqa: E402


def _problem(n, d, vocab, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randint(-4, 5, (n, d), generator=g).float() / 4).to(dtype)
    weight = (torch.randint(-4, 5, (vocab, d), generator=g).float() / 8).to(dtype)
    bias = (torch.randint(-8, 9, (vocab,), generator=g).float() / 4).to(dtype)
    rows = torch.arange(n)
    return hidden, weight, bias, torch.stack([torch.full((n,), 3), rows, rows * 7 % 1000], 1)


def main() -> int:
    lib, mode = sys.argv[1], sys.argv[2]
    emu = Emulator(Path(lib))
    if mode == "overrun":
        out = torch.zeros(64)
        emu.lib.selftest_shared_overrun(ctypes.c_void_p(out.data_ptr()), 64)
        print("asan_check: the overrun was not detected")
        return 0
    cases = [(33, 13, 1030), (1, 8, 7), (65, 8, 300)]  # the split grid, and the chunk grid at 65 rows
    if mode == "full":
        cases += [(31, 67, 2100), (32, 1, 1024), (2049, 8, 7), (3, 0, 40)]
    mismatches = 0
    for major in (8, 9):  # the split grid through the workspace (sm_80), in clusters (sm_90)
        emu.configure(major=major)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for i, (n, d, vocab) in enumerate(cases):
                hidden, weight, bias, keys = _problem(n, d, vocab, dtype, i)
                # Exact-size copies: any read past an end lands in a redzone.
                hidden, weight, bias = hidden.clone(), weight.clone(), bias.clone()
                banned = torch.tensor([vocab - 1])
                got = emu.fused_head_sample(hidden, weight, bias, keys, 5, 2, 1.0, banned, True)
                want = ops.fused_head_sample(hidden, weight, bias, keys, seed=5, banned=banned, return_logprob=True)
                mismatches += int(not (torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])))
    keys = torch.stack([torch.arange(9), torch.arange(9), torch.arange(9)], 1)
    for dist in ("uniform", "gumbel", "uniform24"):
        mismatches += int(not torch.equal(emu.philox_noise(keys, 3, 1, 7, dist), ops.philox_noise(keys, 3, 1, 7, dist)))
    print(f"asan_check: {'OK' if mismatches == 0 else f'{mismatches} mismatches'}")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Build and load the CUDA-on-CPU emulator; run the project's CUDA launchers on torch CPU tensors.

build() transforms csrc/cuda/*_kernels.cu (transform.py), compiles them with the emulator
runtime into a shared library under build/cuda-emulation/ (cached by a hash of every input),
and Emulator wraps the library's C entry points with the CUDA adapters' calling conventions.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from mdlm_fast.ops.compiled import finish_coded_call
from mdlm_fast.ops.head_status import DeferredHeadErrors

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KERNELS = ("philox_kernels.cu", "fused_head_sample_kernels.cu")
RUNTIME = ("emu_runtime.cc", "emu_api.cc")
BUILD_DIR = ROOT / "build" / "cuda-emulation"

ORDERS = {"forward": 0, "reverse": 1, "random": 2}
FAULT = -1
# cudaError_t values the launchers return (include/cuda_emu.h).
CUDA_ERRORS = {
    1: "cudaErrorInvalidValue",
    9: "cudaErrorInvalidConfiguration",
    98: "cudaErrorInvalidDeviceFunction",
    719: "cudaErrorLaunchFailure",
}
_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
SM90_SMEM_OPTIN = 232448  # 227 KB
DEFAULT_ORDER = "forward"  # of launches whose test sets no order (pytest --emulated-order)


class EmulatorFault(RuntimeError):
    """The emulator stopped a kernel where real hardware would misbehave."""


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def _flags(variant: str) -> list[str]:
    flags = ["-std=c++20", "-fPIC", "-shared", "-g", "-ffp-contract=off", "-fno-fast-math", "-D__CUDA_ARCH__=900"]
    if variant == "asan":
        return flags + ["-O1", "-fsanitize=address", "-fno-omit-frame-pointer"]
    return flags + ["-O2"]


def build(
    variant: str = "plain",
    kernel_sources: dict[str, str] | None = None,
    extra: dict[str, str] | None = None,
    build_dir: Path = BUILD_DIR,
) -> Path:
    """Path of the emulator library, built if needed.

    kernel_sources: file name -> CUDA text replacing csrc/cuda/<name> (the mutation script's
    defects); extra: more CUDA files to compile (self-test kernels).
    """
    from transform import transform  # noqa: PLC0415  (tests/cuda_emulation is on sys.path)

    cxx = compiler()
    if cxx is None:
        raise FileNotFoundError("g++ not found")
    # MDLM_FAST_EMU_KERNELS: a folder whose kernel files replace csrc/cuda's (mutate.py uses it).
    kernel_dir = Path(os.environ.get("MDLM_FAST_EMU_KERNELS", ROOT / "csrc" / "cuda"))
    sources = {name: (kernel_dir / name).read_text() for name in KERNELS}
    sources.update(kernel_sources or {})
    sources["selftest_kernels.cu"] = (HERE / "selftest_kernels.cu").read_text()
    sources.update(extra or {})
    digest = hashlib.sha256()
    for part in [variant, cxx, *_flags(variant)]:
        digest.update(part.encode())
    for name in sorted(sources):
        digest.update(name.encode() + sources[name].encode())
    inputs = [
        HERE / "transform.py",
        HERE / "emu_api.h",
        *(HERE / r for r in RUNTIME),
        *sorted((HERE / "include").glob("*.h")),
        *sorted((ROOT / "csrc" / "cuda").glob("*.cuh")),
        *sorted((ROOT / "csrc" / "include").rglob("*.h")),
    ]
    for p in inputs:
        digest.update(p.name.encode() + p.read_bytes())
    out_dir = build_dir / f"{variant}-{digest.hexdigest()[:16]}"
    lib = out_dir / "libcudaemu.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    generated = []
    for name, text in sources.items():
        path = out_dir / (name + ".cc")
        origin = f"csrc/cuda/{name}" if name in KERNELS else f"tests/cuda_emulation/{name}"
        path.write_text(transform(text, origin))
        generated.append(str(path))
    cmd = [
        cxx,
        *_flags(variant),
        f"-I{HERE / 'include'}",
        f"-I{HERE}",
        f"-I{ROOT / 'csrc' / 'cuda'}",
        f"-I{ROOT / 'csrc' / 'include'}",
    ]
    # One object per translation unit, compiled side by side, then linked.
    objects, procs = [], []
    for src in [*generated, *(str(HERE / r) for r in RUNTIME)]:
        obj = str(out_dir / (Path(src).name + f".{os.getpid()}.o"))
        objects.append(obj)
        procs.append(
            (
                src,
                subprocess.Popen(
                    [*cmd, "-c", src, "-o", obj], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                ),
            )
        )
    failures = []
    for src, proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"{src}:\n{err[-6000:]}")
    with tempfile.NamedTemporaryFile(dir=out_dir, suffix=".so", delete=False) as tmp:
        pass
    try:
        if not failures:
            result = subprocess.run([cxx, *_flags(variant), *objects, "-o", tmp.name], capture_output=True, text=True)
            if result.returncode != 0:
                failures.append(result.stderr[-6000:])
        if failures:
            raise RuntimeError("emulator build failed:\n" + "\n".join(failures))
        os.replace(tmp.name, lib)
    finally:
        for path in [tmp.name, *objects]:
            if os.path.exists(path):
                os.unlink(path)
    return lib


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if t is None or t.numel() == 0 else t.data_ptr())


class Emulator:
    """The emulated launchers, called as the CUDA adapters call them."""

    def __init__(self, lib_path: Path):
        self.lib = ctypes.CDLL(str(lib_path))
        L = self.lib
        L.emu_configure.argtypes = [ctypes.c_int, ctypes.c_uint64, ctypes.c_int, ctypes.c_int]
        L.emu_last_fault.restype = ctypes.c_char_p
        L.emu_philox_noise.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_uint64,
            ctypes.c_uint32,
            ctypes.c_int64,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        L.emu_fused_head_workspace_bytes.restype = ctypes.c_size_t
        L.emu_fused_head_workspace_bytes.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
        i64, vp = ctypes.c_int64, ctypes.c_void_p
        L.emu_fused_head_sample.argtypes = [
            ctypes.c_int,
            vp,
            i64,
            i64,
            i64,
            i64,
            vp,
            i64,
            i64,
            vp,
            vp,
            ctypes.c_uint64,
            vp,
            ctypes.c_uint32,
            ctypes.c_float,
            vp,
            i64,
            vp,
            vp,
            vp,
            ctypes.c_size_t,
        ]
        L.emu_fused_head_geometry.argtypes = [
            ctypes.c_int,
            i64,
            i64,
            i64,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        self.configure()

    def geometry(
        self, dtype: torch.dtype, n: int, d: int, vocab: int, major: int = 9, smem_optin: int = SM90_SMEM_OPTIN
    ) -> list[tuple[str, int, int]]:
        """(kernel, blocks, threads) of each launch of a call with these sizes on a device of
        compute capability `major`."""
        buf = ctypes.create_string_buffer(4096)
        count = self.lib.emu_fused_head_geometry(_DTYPES[dtype], n, d, vocab, major, smem_optin, buf, len(buf))
        if count < 0:
            raise ValueError("no geometry for these sizes")
        rows = [line.rsplit(" ", 2) for line in buf.value.decode().splitlines()]
        return [(name, int(grid), int(threads)) for name, grid, threads in rows]

    def configure(
        self, order: str | None = None, seed: int = 0, major: int = 9, smem_optin: int = SM90_SMEM_OPTIN
    ) -> None:
        """Thread/block order of later launches (default: DEFAULT_ORDER) and the emulated device
        (default: an sm_90 part)."""
        order = order or DEFAULT_ORDER
        self.lib.emu_reset()
        self.lib.emu_configure(ORDERS[order], seed, major, smem_optin)

    def _check(self, status: int, what: str) -> None:
        if status == FAULT:
            message = self.lib.emu_last_fault().decode()
            self.lib.emu_reset()
            raise EmulatorFault(f"{what}: {message}")
        if status != 0:
            raise RuntimeError(f"{what}: {CUDA_ERRORS.get(status, status)}")

    def philox_noise(self, keys: torch.Tensor, seed: int, purpose: int, n: int, dist: str) -> torch.Tensor:
        code = {"uniform": 0, "gumbel": 1, "uniform24": 2}[dist]
        keys = keys.contiguous()
        out = torch.empty(keys.shape[0], n, dtype=torch.float32 if dist == "uniform24" else torch.float64)
        self._check(
            self.lib.emu_philox_noise(_ptr(keys), keys.shape[0], seed % 2**64, purpose, n, code, _ptr(out)),
            "launch_philox_noise",
        )
        return out

    def fused_head_sample(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        keys: torch.Tensor,
        seed: int,
        purpose: int,
        temperature: float,
        banned: torch.Tensor,
        return_logprob: bool,
        seeds: torch.Tensor | None = None,
        deferred: DeferredHeadErrors | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As csrc/cuda/fused_head_sample_cuda.cu (the same layout rules, the launcher, no value read
        back) followed by what ops.fused_head_sample does with a CUDA result: the value errors
        (out-of-range banned ids, NaN rows, rows with nothing to draw) raised, or kept in ``deferred``."""
        n, d = hidden.shape
        vocab = weight.shape[0]
        weight_c = weight if weight.stride(1) == 1 else weight.contiguous()
        bias_c = None if bias is None else bias.contiguous()
        keys_c, banned_c = keys.contiguous(), banned.contiguous()
        seeds_c = None if seeds is None else seeds.contiguous()
        tokens = torch.empty(n, dtype=torch.int64)
        logprob = torch.empty(n if return_logprob else 0, dtype=torch.float32)
        ws_bytes = self.lib.emu_fused_head_workspace_bytes(_DTYPES[hidden.dtype], n, d, vocab)
        # The adapter's workspace comes from the caching allocator (512-byte aligned); so does this one.
        raw = torch.empty(ws_bytes + 512, dtype=torch.uint8)
        offset = (-raw.data_ptr()) % 512
        workspace = raw[offset : offset + ws_bytes]
        status = self.lib.emu_fused_head_sample(
            _DTYPES[hidden.dtype],
            _ptr(hidden),
            n,
            d,
            hidden.stride(0),
            hidden.stride(1),
            _ptr(weight_c),
            vocab,
            weight_c.stride(0),
            _ptr(bias_c),
            _ptr(keys_c),
            seed % 2**64,
            _ptr(seeds_c),
            purpose,
            float(temperature),
            _ptr(banned_c),
            banned_c.numel(),
            _ptr(tokens),
            _ptr(logprob) if return_logprob else ctypes.c_void_p(None),
            ctypes.c_void_p(workspace.data_ptr() if ws_bytes else None),
            ws_bytes,
        )
        if n > 0 or status != 0:
            self._check(status, "launch_fused_head_sample")
        # The adapter returns code tokens; ops.fused_head_sample raises them (or defers them).
        tokens = finish_coded_call(tokens, banned_c, vocab, deferred)
        return tokens, logprob

"""Mechanical rewrite of a CUDA source into C++ that g++ compiles against include/cuda_emu.h.

Only the syntax g++ cannot parse changes; line numbers are kept (a `#line` directive names the
original file), so the emulator's fault messages point at the kernel source:

  kernel<<<grid, block[, smem[, stream]]>>>(args)  ->  ::emu::launch(kernel, grid, block, smem, stream, args)
  extern __shared__ T name[];                      ->  T* name = ::emu::dynamic_shared<T>();
  __shared__ T name[N]...;                         ->  a per-block buffer from ::emu::static_shared
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}...")  ->  EMU_MMA_{BF16,F16}(operands)
  __global__ ... __launch_bounds__(N) name(...) {  ->  the body starts with ::emu::check_launch_bounds(N)

Any other inline asm is refused, so a new instruction in a kernel cannot slip past unemulated.
"""

from __future__ import annotations

import re
import sys


def _match_close(text: str, i: int, open_ch: str, close_ch: str) -> int:
    """Index just past the bracket that closes the one at text[i]."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == open_ch:
            depth += 1
        elif text[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j + 1
    raise ValueError(f"unbalanced {open_ch}{close_ch} from offset {i}")


def _split_top(text: str) -> list[str]:
    """Split on commas outside (), <>, [] and {}."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _keep_lines(old: str, new: str) -> str:
    return new + "\n" * (old.count("\n") - new.count("\n"))


def _kernel_start(text: str, end: int) -> int:
    """Start of the kernel expression ending at `end` (a name, optionally with template args),
    which may stand on the line before its `<<<` (clang-format breaks long launches there)."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if text[i - 1] == ">":
        depth = 0
        while True:
            i -= 1
            if text[i] == ">":
                depth += 1
            elif text[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
        i -= 1
    return i


def _rewrite_launches(text: str) -> str:
    while (at := text.find("<<<")) >= 0:
        start = _kernel_start(text, at)
        kernel = text[start:at].strip()
        cfg_end = text.index(">>>", at)
        cfg = _split_top(text[at + 3 : cfg_end])
        if not 2 <= len(cfg) <= 4:
            raise ValueError(f"launch of {kernel} with {len(cfg)} configuration values")
        cfg += ["0", "nullptr"][len(cfg) - 2 :]
        paren = text.index("(", cfg_end)
        close = _match_close(text, paren, "(", ")")
        args = text[paren + 1 : close - 1].strip()
        old = text[start:close]
        new = f"::emu::launch({kernel}, {', '.join(cfg)}{', ' if args else ''}{args})"
        text = text[:start] + _keep_lines(old, new) + text[close:]
    return text


_MMA = re.compile(
    r'asm\s+volatile\s*\(\s*"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.(bf16|f16)\.\1\.f32'
    r'[^"]*"\s*(?:"[^"]*"\s*)*:(.*?)\)\s*;',
    re.S,
)
_OPERAND = re.compile(r'"[+=]?[a-z]"\s*\(([^()]*)\)')


def _rewrite_mma(text: str) -> str:
    def repl(m: re.Match) -> str:
        operands = _OPERAND.findall(m.group(2))
        if len(operands) != 10:
            raise ValueError(f"mma with {len(operands)} operands (want 4 C, 4 A, 2 B)")
        macro = "EMU_MMA_BF16" if m.group(1) == "bf16" else "EMU_MMA_F16"
        return _keep_lines(m.group(0), f"{macro}({', '.join(o.strip() for o in operands)});")

    text = _MMA.sub(repl, text)
    if re.search(r"\basm\b", text):
        line = text[: re.search(r"\basm\b", text).start()].count("\n") + 1
        raise ValueError(f"inline asm the emulator does not model (line {line})")
    return text


_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w:<>]+)\s+(\w+)\s*\[\s*\]\s*;")
_STATIC_SHARED = re.compile(r"__shared__\s+(?:__align__\(\d+\)\s+)?([\w:<>]+)\s+(\w+)((?:\s*\[[^\]]+\])+)\s*;")


def _rewrite_shared(text: str, name: str) -> str:
    text = _EXTERN_SHARED.sub(lambda m: f"{m.group(1)}* {m.group(2)} = ::emu::dynamic_shared<{m.group(1)}>();", text)

    def static(m: re.Match) -> str:
        t, var, dims = m.group(1), m.group(2), m.group(3).replace(" ", "")
        line = text[: m.start()].count("\n") + 1
        return (
            f"{t} (&{var}){dims} = *static_cast<{t} (*){dims}>("
            f'::emu::static_shared("{name}:{line}:{var}", sizeof({t}{dims})));'
        )

    return _STATIC_SHARED.sub(static, text)


def _rewrite_launch_bounds(text: str) -> str:
    out, pos = [], 0
    for m in re.finditer(r"__launch_bounds__\(", text):
        close = _match_close(text, m.end() - 1, "(", ")")
        bound = text[m.end() : close - 1].split(",")[0].strip()
        paren = text.index("(", close)
        kernel = re.search(r"(\w+)\s*$", text[close:paren]).group(1)
        body = text.index("{", _match_close(text, paren, "(", ")"))
        out.append(text[pos : body + 1])
        out.append(f' ::emu::check_launch_bounds({bound}, "{kernel}");')
        pos = body + 1
    out.append(text[pos:])
    return "".join(out)


def transform(text: str, name: str) -> str:
    """The g++-compilable form of CUDA source `text` (named `name` in #line and fault messages)."""
    text = _rewrite_shared(text, name)
    text = _rewrite_mma(text)
    text = _rewrite_launch_bounds(text)
    text = _rewrite_launches(text)
    return f'#line 1 "{name}"\n' + text


if __name__ == "__main__":
    src, name = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else sys.argv[1]
    with open(src) as f:
        sys.stdout.write(transform(f.read(), name))

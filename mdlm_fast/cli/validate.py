"""Argument checks shared by every ``mdlm-fast`` subcommand.

Each check runs before any model forward, and a failure is one :class:`CliError` naming the
flag and what it expects. Checks of a value alone are argparse ``type=`` functions (the parser
reports them); checks that look at the machine (paths, devices) are called by the commands.
Nothing here writes a file that outlives the check.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from mdlm_fast.util.validate import integer


class CliError(ValueError):
    """A user error: printed as one line, no traceback (``main`` catches every ValueError the same
    way, so library errors such as CheckpointError read alike)."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are the CLI's one line, ``mdlm-fast: error: ...``, exit 2
    (argparse's own adds the usage block)."""

    def error(self, message: str) -> NoReturn:
        print(f"mdlm-fast: error: {message.strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(2)


# --------------------------------------------------------------------------------------------
# Values (argparse types)
# --------------------------------------------------------------------------------------------


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    return integer("", _int(text), minimum=1, error=argparse.ArgumentTypeError)


def non_negative_int(text: str) -> int:
    return integer("", _int(text), minimum=0, error=argparse.ArgumentTypeError)


def positive_setting(flag: str, value: Any) -> int | None:
    """A positive setting that may not have come through an argparse type (a search's record, a
    Namespace built in code); None stands for "not given"."""
    return None if value is None else integer(flag, value, minimum=1, error=CliError)


def seed(text: str) -> int:
    value = _int(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2^64), got {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def held_out_fraction(text: str) -> float:
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


# --------------------------------------------------------------------------------------------
# Sizes against a model
# --------------------------------------------------------------------------------------------


def at_most(flag: str, value: int, limit: int, what: str) -> int:
    if value > limit:
        raise CliError(f"{flag} {value} exceeds {what} {limit}")
    return value


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(".")


def _probe_writable(flag: str, directory: Path, target: Path) -> None:
    """Create and remove a temporary file in ``directory``: the only test that holds for root,
    read-only mounts and odd filesystems alike. It is where ``atomic_file`` will write."""
    if not directory.is_dir():
        raise CliError(f"{flag} {target}: {directory} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mdlm-fast-probe-", dir=directory)
    except OSError as exc:
        raise CliError(f"{flag} {target}: cannot write in {directory} ({exc.strerror or exc})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def output_file(flag: str, path: str | os.PathLike | None) -> Path | None:
    """``path`` can be written as a file: not a directory, in an existing writable directory (a
    missing one is an error naming it, as for any program that opens a file), and not a read-only
    file (util/atomic.py keeps an existing file's mode)."""
    if path is None:
        return None
    from mdlm_fast.util.atomic import ReadOnlyFileError, file_mode_for

    target = Path(path).expanduser()
    if target.is_dir():
        raise CliError(f"{flag} {target} is a directory; expected a file name")
    if target.exists() and not target.is_file():
        raise CliError(f"{flag} {target} is not a regular file")
    if target.parent.exists() and not target.parent.is_dir():
        raise CliError(f"{flag} {target}: {target.parent} is not a directory")
    if not target.parent.is_dir():
        raise CliError(f"{flag} {target}: no directory {target.parent} (create it first)")
    try:
        file_mode_for(target)
    except ReadOnlyFileError as exc:
        raise CliError(f"{flag} {exc}") from None
    _probe_writable(flag, target.parent, target)
    return target


def output_dir(flag: str, path: str | os.PathLike) -> Path:
    """``path`` is (or can become) a writable directory."""
    target = Path(path).expanduser()
    if target.exists():
        if not target.is_dir():
            raise CliError(f"{flag} {target} is a file; expected a directory")
        _probe_writable(flag, target, target)
    else:
        _probe_writable(flag, _existing_ancestor(target), target)
    return target


def _embedded(flag: str, spec: str, kind: str) -> bool:
    """Whether ``spec`` names a shipped asset of ``kind``; a CliError for an ``embedded`` spec that
    names none."""
    from mdlm_fast.models.embedded import EmbeddedNameError, embedded_path

    try:
        return embedded_path(spec, kind) is not None
    except EmbeddedNameError as e:
        raise CliError(f"{flag} {spec}: {e}") from None


def checkpoint(flag: str, spec: str) -> str:
    """A denoiser spec: ``embedded:heavy`` / ``embedded:light`` or an existing directory or file."""
    if _embedded(flag, spec, "model"):
        return spec
    if not os.path.exists(spec):
        raise CliError(f"{flag}: no checkpoint at {spec}")
    return spec


def tokenizer(flag: str, spec: str | None) -> str | None:
    """A tokenizer spec: ``embedded``, a ``tokenizer.json`` or a tokenizer directory."""
    if spec is None or _embedded(flag, spec, "tokenizer"):
        return spec
    if not os.path.exists(spec):
        raise CliError(f"{flag}: no tokenizer at {spec}")
    return spec


def judge(flag: str, spec: str) -> str:
    """A judge spec: ``embedded``, ``none`` or a judge / Hugging Face causal-LM directory."""
    if spec == "none" or _embedded(flag, spec, "judge"):
        return spec
    if not os.path.isdir(spec):
        raise CliError(f"{flag}: no judge directory at {spec}")
    return spec


def text(flag: str, spec: str) -> str:
    """A text spec: an ``embedded:`` text of :mod:`mdlm_fast.text.data` or an existing file."""
    from mdlm_fast.text.data import resolve_text

    if not _embedded(flag, spec, "text") and not resolve_text(spec).is_file():
        raise CliError(f"{flag}: no text file at {spec}")
    return spec


# --------------------------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------------------------


def device(flag: str, spec: str | None) -> Any:
    """The ``torch.device`` of ``spec`` (default cpu), refused unless it is present and this
    build has kernels for it."""
    import torch

    from mdlm_fast.util.devices import usable_device

    if spec is None:
        return torch.device("cpu")
    try:
        return usable_device(spec, flag)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def threads(value: int | None) -> None:
    """Apply ``--threads`` (already checked positive by its type)."""
    if value is not None:
        import torch

        torch.set_num_threads(value)


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """How model files are read: shared by every command that loads --heavy/--light."""
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle .ckpt/.bin files fully, which runs any code they name; only for files "
        "you trust (default: off, tensors and inert records only)",
    )
    p.add_argument(
        "--mask-index",
        type=non_negative_int,
        default=None,
        help="mask token id of the models (default: what the checkpoint records, else vocab_size - 1)",
    )


def raise_if_out_of_memory(exc: BaseException, sizes: str) -> None:
    """Turn an allocation failure into one line naming the sizes that caused it."""
    text = str(exc)
    if (
        isinstance(exc, MemoryError)
        or "out of memory" in text.lower()
        or "can't allocate memory" in text
        or "not enough memory" in text
    ):
        tried = re.search(r"tried to allocate [^.;(]*", text)
        detail = tried.group(0).strip() if tried else ""
        raise CliError(
            f"out of memory at {sizes}{': ' + detail if detail else ''}; try a smaller --batch-size"
        ) from None

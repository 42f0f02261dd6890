"""The assets shipped inside the package and the one reader of ``embedded:`` specs.

Every loader that accepts ``embedded:NAME`` (denoisers, the tokenizer, the judge, the texts) and
every CLI check of such a spec asks :func:`embedded_path`, so the names and the error for a name
that does not exist are written once, here.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PREFIX = "embedded:"
MODEL, TOKENIZER, JUDGE, TEXT = "model", "tokenizer", "judge", "text"
#: kind -> name -> file or directory under :data:`ASSETS`.
_SHIPPED: dict[str, dict[str, str]] = {
    MODEL: {"heavy": "heavy", "light": "light"},
    TOKENIZER: {"tokenizer": "tokenizer.json"},
    JUDGE: {"judge": "judge"},
    TEXT: {"heldout": "data/shakespeare_heldout.txt", "sample": "data/shakespeare_sample.txt"},
}
#: The kinds with one shipped asset, which the bare word ``"embedded"`` also names.
_BARE = (TOKENIZER, JUDGE)


class EmbeddedNameError(ValueError):
    """An ``embedded:`` spec that names no shipped asset of the kind asked for."""


def specs(kind: str) -> tuple[str, ...]:
    """The ``embedded:`` specs of ``kind``, e.g. ``("embedded:heavy", "embedded:light")``."""
    return tuple(PREFIX + name for name in _SHIPPED[kind])


#: The denoisers shipped in the package: ``load_denoiser("embedded:heavy")``.
EMBEDDED_MODELS = specs(MODEL)


def shipped(kind: str, name: str) -> Path:
    """The shipped file or directory of ``embedded:NAME`` of ``kind``."""
    return ASSETS / _SHIPPED[kind][name]


def is_embedded(spec: str | os.PathLike | None) -> bool:
    """Whether ``spec`` is read by :func:`embedded_path` rather than as a path."""
    return spec is not None and (str(spec) == "embedded" or str(spec).startswith(PREFIX))


def embedded_path(spec: str | os.PathLike, kind: str) -> Path | None:
    """The shipped file or directory ``spec`` names for ``kind``; None when ``spec`` is a path.

    ``"embedded"`` alone names the one asset of a kind that has one (the tokenizer, the judge).
    Raises :class:`EmbeddedNameError`, listing the names of that kind, for any other
    ``embedded`` spec. Whether the asset is present in this build is the caller's check.
    """
    if not is_embedded(spec):
        return None
    text = str(spec)
    names = _SHIPPED[kind]
    if text == "embedded" and kind in _BARE:
        return ASSETS / next(iter(names.values()))
    name = text[len(PREFIX) :] if text.startswith(PREFIX) else text
    if name not in names:
        choices = (["embedded"] if kind in _BARE else []) + list(specs(kind))
        raise EmbeddedNameError(f"no embedded {kind} {name!r}; the embedded {kind}s are {', '.join(choices)}")
    return ASSETS / names[name]

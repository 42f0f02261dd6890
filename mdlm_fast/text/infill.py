"""Infilling templates: ``"text [MASK:20] more text"`` -> the token ids of ``sample(given=...)``.

Syntax: text with spans written ``[MASK:N]``, N >= 1 masked tokens to generate at that place. Every
other piece of text is encoded with the tokenizer as it stands (spaces included) and kept. Anything
else that opens like a marker -- ``[MASK]``, ``[mask:3]``, ``[MASK:0]``, ``[MASK: x]`` -- is an
error, so a typo cannot silently become text. A template needs at least one span (without one it
is a prefix). Its tokens fill the start of the sequence; a longer ``length`` generates the
positions after it as well, as after a prefix.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MAX_SPAN", "InfillError", "parse_template", "template_tokens"]

MAX_SPAN = 1_000_000
_SPAN = re.compile(r"\[MASK:([1-9][0-9]{0,6})\]")
_LOOKS_LIKE_MARKER = re.compile(r"\[\s*mask\b", re.IGNORECASE)


class InfillError(ValueError):
    """A template that does not follow the syntax, or does not fit the sequence."""


def parse_template(template: str) -> list[str | int]:
    """The template as text pieces (str) and span lengths (int), in order."""
    if not isinstance(template, str):
        raise InfillError(f"the template must be text, got {type(template).__name__}")
    parts: list[str | int] = []
    position = 0
    for attempt in _LOOKS_LIKE_MARKER.finditer(template):
        if attempt.start() < position:
            continue
        span = _SPAN.match(template, attempt.start())
        if span is None or int(span.group(1)) > MAX_SPAN:
            shown = template[attempt.start() : template.find("]", attempt.start()) + 1 or attempt.start() + 12]
            raise InfillError(
                f"unknown marker {shown!r} at character {attempt.start()}; a span to generate is "
                f"written [MASK:N] with 1 <= N <= {MAX_SPAN}"
            )
        if span.start() > position:
            parts.append(template[position : span.start()])
        parts.append(int(span.group(1)))
        position = span.end()
    if position < len(template):
        parts.append(template[position:])
    if not any(isinstance(p, int) for p in parts):
        raise InfillError(
            "the template has nothing to fill: write the spans to generate as [MASK:N] (text alone is a prefix)"
        )
    return parts


def template_tokens(parts: list[str | int], tokenizer: Any, mask_id: int) -> list[int]:
    """The template's token ids: its text encoded piece by piece, ``mask_id`` N times per span."""
    tokens: list[int] = []
    for part in parts:
        if isinstance(part, int):
            tokens.extend([mask_id] * part)
            continue
        ids = tokenizer.encode(part)
        if mask_id in ids:
            raise InfillError(
                f"the text {part!r} holds the mask token's text (id {mask_id}); spans to generate are written [MASK:N]"
            )
        tokens.extend(ids)
    return tokens


def given_for_length(tokens: list[int], length: int, mask_id: int, flag: str = "--length") -> list[int]:
    """The template's tokens at the start of a ``length``-token sequence, the rest generated."""
    if len(tokens) > length:
        raise InfillError(f"the template is {len(tokens)} tokens (text and spans) but {flag} is {length}")
    return tokens + [mask_id] * (length - len(tokens))

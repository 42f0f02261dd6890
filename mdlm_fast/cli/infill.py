"""``--infill TEMPLATE`` of ``generate`` and ``evaluate``: the template checked before anything is
loaded, then turned into the ``given`` tokens of the run (syntax in mdlm_fast/text/infill.py)."""

from __future__ import annotations

from typing import Any

from mdlm_fast.cli.validate import CliError
from mdlm_fast.text.infill import InfillError, given_for_length, parse_template, template_tokens


def utf8_text(flag: str, text: str) -> str:
    """``text`` if it encodes as UTF-8 (argv may carry undecodable bytes as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = text[exc.start].encode("utf-8", "surrogateescape")
        raise CliError(f"{flag} is not UTF-8 text (byte 0x{byte.hex()} at position {exc.start})") from None
    return text


def template(flag: str, text: str) -> list[str | int]:
    """The parsed template, or a one-line error naming the flag."""
    utf8_text(flag, text)
    try:
        return parse_template(text)
    except InfillError as exc:
        raise CliError(f"{flag}: {exc}") from None


def given(
    flag: str, parts: list[str | int], tokenizer: Any, mask: int, length: int | None, model_length: int, what: str
) -> tuple[list[int], int]:
    """``(given tokens, length)``: the template's tokens over ``length`` positions (None: the template's
    own length, at most ``model_length``)."""
    if tokenizer is None:
        raise CliError(f"{flag} needs a tokenizer (--tokenizer PATH)")
    try:
        tokens = template_tokens(parts, tokenizer, mask)
        if length is None:
            if len(tokens) > model_length:
                raise InfillError(f"the template is {len(tokens)} tokens (text and spans) but {what} is {model_length}")
            length = len(tokens)
        return given_for_length(tokens, length, mask), length
    except InfillError as exc:
        raise CliError(f"{flag}: {exc}") from None

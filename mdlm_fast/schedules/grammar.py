"""What the step-schedule and time-schedule grammars share: the error, the limits, the numbers, and
the model letters (``H`` = model 0, the heavy one; ``L`` = model 1, the light one; ``M<k>`` = model k).

Letters are read case-insensitively (ASCII case folding only); messages quote the user's spelling.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from typing import Union

from mdlm_fast.util.validate import integer

#: Upper bound on the number of steps, so a typo such as ``L10000000000`` fails fast instead of
#: allocating gigabytes.
MAX_STEPS = 1_000_000
#: Upper bound on model indices (capacity levels); ``counts()`` has one entry per index.
MAX_MODELS = 256
HEAVY, LIGHT = 0, 1
FLAGS = re.ASCII | re.IGNORECASE  # ASCII-only case folding: no Kelvin-sign surprises
#: A model word as a regular expression, for the grammars to embed in their own patterns.
MODEL_PATTERN = r"h|l|m\s*[0-9]+"
_LETTERS = {HEAVY: "H", LIGHT: "L"}
_INT = re.compile(r"[0-9]+", re.ASCII)
_FRACTION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(%?)", re.ASCII)

FractionLike = Union[float, int, Fraction, Decimal, str]


class ScheduleError(ValueError):
    """An invalid model schedule, spec, or schedule argument."""


def check_steps(steps) -> int:
    """Validate a step count (a positive int no larger than :data:`MAX_STEPS`)."""
    value = integer("steps", steps, minimum=1, error=ScheduleError)
    if value > MAX_STEPS:
        raise ScheduleError(f"steps={value} exceeds the limit of {MAX_STEPS}")
    return value


def check_model(index) -> int:
    """Validate one model index (``0 <= index < MAX_MODELS``)."""
    value = integer("model index", index, error=ScheduleError)
    if not 0 <= value < MAX_MODELS:
        raise ScheduleError(f"model index {value} out of range (0..{MAX_MODELS - 1})")
    return value


def model_from_text(text: str) -> int:
    """The index a model word (a match of :data:`MODEL_PATTERN`) names."""
    word = text.strip().lower()
    if word == "h":
        return HEAVY
    if word == "l":
        return LIGHT
    return check_model(parse_int(word[1:].strip(), "model index"))


def model_text(index: int) -> str:
    """The model word of ``index``: ``H``, ``L`` or ``M<k>``; :func:`model_from_text` reads it back."""
    return _LETTERS.get(index, f"M{index}")


def parse_int(text: str, what: str) -> int:
    """A non-negative decimal integer; digits only (no signs, underscores or non-ASCII digits)."""
    if not _INT.fullmatch(text):
        raise ScheduleError(f"{what} {text!r} is not a non-negative integer")
    if len(text) > 12:  # far beyond any limit; also avoids Python's int-from-huge-string guard
        raise ScheduleError(f"{what} {text!r} is too large")
    return int(text)


def parse_fraction_text(text: str) -> Fraction:
    """``"0.25"`` or ``"25%"`` -> exact Fraction (range is checked by the caller)."""
    match = _FRACTION.fullmatch(text)
    if not match:
        raise ScheduleError(f"fraction {text!r} is not a decimal number or percentage like 0.25 or 25%")
    value = Fraction(match.group(1))
    return value / 100 if match.group(2) else value

"""Argument checks shared by the library and the CLI: one rule per kind of value, one wording.

Each check returns the value it accepts and raises ``error`` (ValueError unless the caller's
module has its own subclass) with a message that names the argument and what it expects.
"""

from __future__ import annotations

import operator
from typing import Any


def int_problem(value: Any, minimum: int | None = None, maximum: int | None = None) -> str | None:
    """What is wrong with ``value`` as an integer in [minimum, maximum], or None. Ints and numpy
    ints pass (``operator.index``); floats and bools do not, though bools are ints in Python."""
    if isinstance(value, bool):
        return f"must be an integer, got {value!r}"
    try:
        v = operator.index(value)
    except TypeError:
        return f"must be an integer, got {value!r}"
    if minimum is not None and maximum is not None and not minimum <= v <= maximum:
        return f"must be an integer in [{minimum}, {maximum}], got {v}"
    if minimum == 1 and v < 1:
        return f"must be a positive integer, got {v}"
    if minimum is not None and v < minimum:
        return f"must be an integer >= {minimum}, got {v}"
    if maximum is not None and v > maximum:
        return f"must be an integer <= {maximum}, got {v}"
    return None


def integer(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    error: type[Exception] = ValueError,
) -> int:
    """``value`` as an int in [minimum, maximum], else ``error("<name> must be ...")``."""
    problem = int_problem(value, minimum, maximum)
    if problem:
        raise error(f"{name} {problem}" if name else problem)
    return operator.index(value)


def positive_int(name: str, value: Any, error: type[Exception] = ValueError) -> int:
    return integer(name, value, minimum=1, error=error)


def non_negative_int(name: str, value: Any, error: type[Exception] = ValueError) -> int:
    return integer(name, value, minimum=0, error=error)

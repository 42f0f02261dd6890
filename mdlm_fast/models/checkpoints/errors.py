"""The error every checkpoint reader raises, and how its messages list many items."""

from __future__ import annotations

MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint cannot be read: missing file, corrupted data, or keys/shapes that disagree."""


def listing(items: list[str]) -> str:
    """At most ``MAX_LISTED`` items, then '... and N more'."""
    shown = ", ".join(items[:MAX_LISTED])
    extra = len(items) - MAX_LISTED
    return shown + (f", ... and {extra} more" if extra > 0 else "")


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

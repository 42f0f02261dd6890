"""The text grammar of per-step model schedules (:meth:`ModelSchedule.parse`).

Case-insensitive; whitespace between tokens, and between a run's letter and its numbers, is ignored,
but never inside a number::

    spec      := keyword | placement ":" fraction | segments | "all:" K | runs
    keyword   := "heavy" | "all-heavy"           every step model 0   (needs steps)
               | "light" | "all-light"           every step model 1   (needs steps)
    placement := first | last | q1 | q2 | q3 | q4 | sandwich | middle   (needs steps)
    fraction  := decimal in [0, 1] ("0.25", ".5", "1") or a percentage ("25%")
    segments  := "segments" ["/" N] ":" [I ("," I)*]   light segments I of N (default 10)  (needs steps)
    runs      := run ("-" run)*                       e.g. "L125-H750-L125"
    run       := "H" n        n steps of model 0 (heavy)
               | "L" n        n steps of model 1 (light)
               | "M" K "x" n  n steps of model K, e.g. "M2x64" (any K; "M0x5" == "H5")

``"all:" K`` runs model K at every step. A run-length spec fixes the number of steps itself; when
``steps`` is also given the two must agree (no rescaling). The model words are those of
:mod:`mdlm_fast.schedules.grammar`, shared with the time-schedule grammar.
"""

from __future__ import annotations

import itertools
import re
from typing import List, Optional, Sequence, Tuple

from mdlm_fast.schedules.grammar import (
    FLAGS,
    HEAVY,
    LIGHT,
    MAX_STEPS,
    MODEL_PATTERN,
    ScheduleError,
    check_model,
    model_from_text,
    model_text,
    parse_fraction_text,
    parse_int,
)
from mdlm_fast.schedules.placement import PLACEMENTS, fraction_indices, segment_indices

_KEYWORDS = {"heavy": HEAVY, "all-heavy": HEAVY, "light": LIGHT, "all-light": LIGHT}
_RUN = re.compile(rf"(?P<model>{MODEL_PATTERN})\s*(?P<times>x)?\s*(?P<count>[0-9]+)", FLAGS)
_SEGMENTS_HEAD = re.compile(r"segments(?:/([0-9]+))?", FLAGS)
GRAMMAR = (
    "expected 'heavy', 'light', '<placement>:<fraction>' with placement in "
    f"{{{', '.join(PLACEMENTS)}}}, 'segments[/N]:i,j,...', 'all:<model>', "
    "or runs like 'L125-H750-L125' (H = model 0, L = model 1, M<k>x<n> = n steps of model k)"
)


def to_spec(indices: Sequence[int]) -> str:
    """Run-length text (``"L32-H64-L32"``, ``"M2x64"``) of per-step model indices."""
    runs = [(k, sum(1 for _ in grp)) for k, grp in itertools.groupby(indices)]
    return "-".join(f"{model_text(k)}{'x' if model_text(k).startswith('M') else ''}{n}" for k, n in runs)


def parse_indices(spec: str, steps: Optional[int]) -> List[int]:
    """The per-step model indices of ``spec`` (``steps`` already checked); raises ScheduleError with
    a message the caller prefixes with the spec."""
    text = spec.strip()
    if not text:
        raise ScheduleError(f"empty spec; {GRAMMAR}")
    if text.lower() in _KEYWORDS:
        return [_KEYWORDS[text.lower()]] * _need_steps(steps, repr(text))
    if ":" in text:
        head, _, body = text.partition(":")
        return _parse_colon_form(head.strip(), body.strip(), steps)
    return _parse_runs(text, steps)


def _need_steps(steps: Optional[int], form: str) -> int:
    if steps is None:
        raise ScheduleError(f"the {form} form needs the number of steps (pass steps=...)")
    return steps


def _parse_colon_form(head: str, body: str, steps: Optional[int]) -> List[int]:
    """``<placement>:<fraction>``, ``segments[/N]:i,j,...`` or ``all:<k>``."""
    key = head.lower()
    if key == "all":
        steps = _need_steps(steps, "'all:<model>'")
        return [check_model(parse_int(body, "model index"))] * steps
    seg = _SEGMENTS_HEAD.fullmatch(head)
    if seg:
        n_segments = parse_int(seg.group(1), "segment count") if seg.group(1) else 10
        items = [] if not body else [s.strip() for s in body.split(",")]
        chosen = [parse_int(s, "segment index") for s in items]
        steps = _need_steps(steps, "'segments:...'")
        if isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps < n_segments:
            # The segment count is easy to miss when it is the default: name where it came from.
            given = f"segments/{n_segments}" if seg.group(1) else f"the default {n_segments} segments"
            raise ScheduleError(
                f"{given} need at least {n_segments} steps, got steps={steps}; write "
                f"'segments/N:i,j,...' with N <= {steps}"
            )
        return segment_indices(steps, chosen, n_segments, LIGHT)
    if key not in PLACEMENTS:
        raise ScheduleError(f"unknown placement {head!r}; expected one of {', '.join(PLACEMENTS)}, 'segments' or 'all'")
    fraction = parse_fraction_text(body)
    if not 0 <= fraction <= 1:
        raise ScheduleError(f"fraction {body!r} is outside [0, 1]")
    return fraction_indices(_need_steps(steps, f"'{key}:<fraction>'"), fraction, key, LIGHT)


def _parse_runs(text: str, steps: Optional[int]) -> List[int]:
    """Run-length form ``L125-H750-L125`` / ``M2x64``."""
    runs: List[Tuple[int, int]] = []
    for token in (t.strip() for t in text.split("-")):
        match = _RUN.fullmatch(token)
        # "M<k>" takes its "x" (else "M264" would read as M26 x 4); "H"/"L" take none.
        is_m = match is not None and match["model"][0] in "mM"
        if not match or is_m != (match["times"] is not None):
            what = "an empty run (doubled or trailing '-')" if not token else f"run {token!r}"
            raise ScheduleError(f"{what} is not H<n>, L<n> or M<k>x<n>; {GRAMMAR}")
        model = model_from_text(match["model"])
        count = parse_int(match["count"], "step count")
        if count <= 0:
            raise ScheduleError(f"run {token!r} has count {count}; counts must be positive")
        runs.append((model, count))
        if sum(n for _, n in runs) > MAX_STEPS:  # before allocating anything
            raise ScheduleError(f"more than {MAX_STEPS} steps")
    total = sum(n for _, n in runs)
    if steps is not None and total != steps:
        raise ScheduleError(f"the runs add up to {total} steps but steps={steps}")
    return [k for k, n in runs for _ in range(n)]

"""Where a schedule's light steps go: the rounding of a fraction to a step count, the split of a
trajectory into segments, and the placements of a light block.

Rounding and placement rules (used by the constructors and the spec alike):

* A fraction ``f`` of ``T`` steps is ``floor(f * T + 1/2)`` light steps (round half up, not Python's
  round-half-to-even), computed exactly on the decimal value of ``f`` as written: ``0.35 * 10`` gives 4
  even though the binary float 0.35 is slightly below 0.35. See :func:`light_step_count`.
* ``T`` steps split into ``N`` contiguous segments as equally as possible: sizes differ by at most one,
  larger segments first (``T = 10, N = 4`` gives 3, 3, 2, 2). Quarters ``q1..q4`` use the same split.
* ``first``/``last``: the light block at the start/end. ``sandwich``: half the light steps at each end;
  with an odd count the extra step is at the start. ``middle``: one block centered in the trajectory.
  ``qK``: one block centered on quarter K; with fraction 0.25 and ``T`` divisible by 4 it is exactly
  that quarter. A block larger than its quarter extends beyond it on both sides (it is not an error),
  shifted as needed to stay inside the trajectory, so every placement gives exactly the requested
  number of light steps. Centering: the block starts at ``region_start + floor((region_size - n) / 2)``.
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from fractions import Fraction
from typing import Iterable, List, Tuple

from mdlm_fast.schedules.grammar import HEAVY, FractionLike, ScheduleError, check_steps, parse_fraction_text
from mdlm_fast.util.validate import integer

#: Placements accepted by :meth:`ModelSchedule.from_fraction` and ``<placement>:<fraction>`` specs.
PLACEMENTS: Tuple[str, ...] = ("first", "last", "q1", "q2", "q3", "q4", "sandwich", "middle")


def exact_fraction(fraction: FractionLike) -> Fraction:
    """The fraction as an exact rational, reading floats by their shortest decimal form.

    Using the decimal that ``repr`` prints (``0.35`` -> 7/20) makes rounding follow what the user
    wrote instead of the binary float just below it.
    """
    if isinstance(fraction, bool):
        raise ScheduleError(f"fraction must be a number in [0, 1], got {fraction!r}")
    try:
        if isinstance(fraction, (int, Fraction, Decimal)):
            exact = Fraction(fraction)
        elif isinstance(fraction, str):
            exact = parse_fraction_text(fraction.strip().lower())
        else:
            exact = Fraction(float.__repr__(float(fraction)))
    except (TypeError, ValueError, ArithmeticError):
        raise ScheduleError(f"fraction must be a number in [0, 1], got {fraction!r}") from None
    if not 0 <= exact <= 1:
        raise ScheduleError(f"fraction must be in [0, 1], got {fraction!r}")
    return exact


def light_step_count(steps: int, fraction: FractionLike) -> int:
    """Number of light steps for ``fraction`` of ``steps``: ``floor(fraction * steps + 1/2)``.

    Round half up on the exact decimal value of ``fraction`` (see the module docstring).
    """
    steps = check_steps(steps)
    exact = exact_fraction(fraction)
    return int((exact * steps + Fraction(1, 2)).__floor__())


def split(steps: int, parts: int) -> List[Tuple[int, int]]:
    """``steps`` split into ``parts`` contiguous ``(start, end)`` ranges, larger ones first.

    Sizes differ by at most one; ranges may be empty when ``parts > steps``.
    """
    base, extra = divmod(steps, parts)
    bounds, start = [], 0
    for k in range(parts):
        end = start + base + (1 if k < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def segment_bounds(steps: int, n_segments: int = 10) -> List[Tuple[int, int]]:
    """Half-open step ranges of ``n_segments`` contiguous, near-equal segments (larger first)."""
    steps = check_steps(steps)
    n_segments = check_n_segments(steps, n_segments)
    return split(steps, n_segments)


def check_n_segments(steps: int, n_segments) -> int:
    integer("n_segments", n_segments, error=ScheduleError)
    if not 1 <= n_segments <= steps:
        # Every segment must hold at least one step, otherwise choosing it changes nothing.
        raise ScheduleError(f"n_segments must be between 1 and steps={steps}, got {n_segments}")
    return n_segments


def all_segment_choices(n_segments: int = 10, n_light: int = 4) -> List[Tuple[int, ...]]:
    """Every choice of ``n_light`` light segments out of ``n_segments``, in lexicographic order.

    ``all_segment_choices(10, 4)`` gives the 210 schedules of the exhaustive segment search.
    """
    integer("n_segments", n_segments, minimum=1, error=ScheduleError)
    integer(f"n_light (of n_segments={n_segments})", n_light, minimum=0, maximum=n_segments, error=ScheduleError)
    return list(itertools.combinations(range(n_segments), n_light))


def _centered(start: int, end: int, n: int, steps: int) -> Tuple[int, int]:
    """A block of ``n`` steps centered on ``[start, end)``, shifted to stay inside ``[0, steps)``."""
    first = start + (end - start - n) // 2  # floor: with odd slack the spare step goes after
    first = min(max(first, 0), steps - n)
    return first, first + n


def light_ranges(steps: int, n: int, placement: str) -> List[Tuple[int, int]]:
    """Half-open ranges holding the ``n`` light steps for a placement (see module docstring)."""
    if placement == "first":
        return [(0, n)]
    if placement == "last":
        return [(steps - n, steps)]
    if placement == "sandwich":
        head = (n + 1) // 2  # odd count: the extra step at the start
        return [(0, head), (steps - (n - head), steps)]
    if placement == "middle":
        return [_centered(0, steps, n, steps)]
    quarter = int(placement[1]) - 1
    return [_centered(*split(steps, 4)[quarter], n, steps)]


def check_placement(placement) -> str:
    key = placement.strip().lower() if isinstance(placement, str) else placement
    if key not in PLACEMENTS:
        raise ScheduleError(f"unknown placement {placement!r}; expected one of {', '.join(PLACEMENTS)}")
    return key


def check_segment_indices(light_segments: Iterable[int], n_segments: int) -> List[int]:
    """Validate chosen segment indices: ints in range, no duplicates."""
    if isinstance(light_segments, (str, bytes)):
        raise ScheduleError(f"light_segments must be a collection of ints, got {light_segments!r}")
    chosen, seen = [], set()
    for seg in light_segments:
        value = integer("segment index", seg, error=ScheduleError)
        if not 0 <= value < n_segments:
            raise ScheduleError(f"segment index {value} out of range for {n_segments} segments (0..{n_segments - 1})")
        if value in seen:
            raise ScheduleError(f"duplicate segment index {value}")
        seen.add(value)
        chosen.append(value)
    return chosen


def fraction_indices(steps: int, fraction: FractionLike, placement: str, light: int) -> List[int]:
    """Per-step model indices: ``light_step_count(steps, fraction)`` steps of model ``light`` at
    ``placement``, model 0 elsewhere (arguments already checked but ``fraction``/``placement``)."""
    placement = check_placement(placement)
    n = light_step_count(steps, fraction)
    out = [HEAVY] * steps
    for start, end in light_ranges(steps, n, placement):
        out[start:end] = [light] * (end - start)
    return out


def segment_indices(steps: int, light_segments: Iterable[int], n_segments: int, light: int) -> List[int]:
    """Per-step model indices: the chosen of ``n_segments`` near-equal segments run model ``light``."""
    n_segments = check_n_segments(steps, n_segments)
    chosen = check_segment_indices(light_segments, n_segments)
    bounds = split(steps, n_segments)
    out = [HEAVY] * steps
    for seg in chosen:
        start, end = bounds[seg]
        out[start:end] = [light] * (end - start)
    return out

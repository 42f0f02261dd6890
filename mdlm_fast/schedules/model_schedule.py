"""Model schedules: which denoiser runs at each sampling step.

A :class:`ModelSchedule` is an immutable, hashable tuple of model indices, one per denoising step in
the order the sampler runs them (index 0 of the schedule is the first step, at ``t = 1``, all masks).
Model index 0 is the heavy model, 1 the light one; more indices are allowed (capacity levels).

Text spec grammar (case-insensitive; whitespace between tokens, and between a run's letter and
its numbers, is ignored, but never inside a number)::

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
``steps`` is also given the two must agree (no rescaling). Invalid specs raise :class:`ScheduleError`
(a ``ValueError``) quoting the spec. :meth:`ModelSchedule.to_spec` writes the run-length form, which
:meth:`ModelSchedule.parse` reads back to an equal schedule.

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

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""
from __future__ import annotations

import itertools
import operator
import re
import types
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from mdlm_fast.util.validate import integer

#: Placements accepted by :meth:`ModelSchedule.light_fraction` and ``<placement>:<fraction>`` specs.
PLACEMENTS: Tuple[str, ...] = ("first", "last", "q1", "q2", "q3", "q4", "sandwich", "middle")
#: Upper bound on the number of steps, so a typo such as ``L10000000000`` fails fast instead of
#: allocating gigabytes.
MAX_STEPS = 1_000_000
#: Upper bound on model indices (capacity levels); ``counts()`` has one entry per index.
MAX_MODELS = 256

_HEAVY, _LIGHT = 0, 1
_LETTER = {_HEAVY: "H", _LIGHT: "L"}
_KEYWORDS = {"heavy": _HEAVY, "all-heavy": _HEAVY, "light": _LIGHT, "all-light": _LIGHT}
_FLAGS = re.ASCII | re.IGNORECASE  # ASCII-only case folding: no Kelvin-sign surprises
_RUN = re.compile(r"(h|l|m\s*([0-9]+)\s*x)\s*([0-9]+)", _FLAGS)
_INT = re.compile(r"[0-9]+", re.ASCII)
_FRACTION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(%?)", re.ASCII)
_SEGMENTS_HEAD = re.compile(r"segments(?:/([0-9]+))?", _FLAGS)
_GRAMMAR = (
    "expected 'heavy', 'light', '<placement>:<fraction>' with placement in "
    f"{{{', '.join(PLACEMENTS)}}}, 'segments[/N]:i,j,...', 'all:<model>', "
    "or runs like 'L125-H750-L125' (H = model 0, L = model 1, M<k>x<n> = n steps of model k)"
)

FractionLike = Union[float, int, Fraction, Decimal, str]


class ScheduleError(ValueError):
    """An invalid model schedule, spec, or schedule argument."""


# ----------------------------------------------------------------------------------------------
# Small helpers shared by the constructors and the parser
# ----------------------------------------------------------------------------------------------


def _check_steps(steps) -> int:
    """Validate a step count (a positive int no larger than :data:`MAX_STEPS`)."""
    value = integer("steps", steps, minimum=1, error=ScheduleError)
    if value > MAX_STEPS:
        raise ScheduleError(f"steps={value} exceeds the limit of {MAX_STEPS}")
    return value


def _check_model(index) -> int:
    """Validate one model index (``0 <= index < MAX_MODELS``)."""
    value = integer("model index", index, error=ScheduleError)
    if not 0 <= value < MAX_MODELS:
        raise ScheduleError(f"model index {value} out of range (0..{MAX_MODELS - 1})")
    return value


def _exact_fraction(fraction: FractionLike) -> Fraction:
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
            exact = _parse_fraction_text(fraction.strip().lower())
        else:
            exact = Fraction(float.__repr__(float(fraction)))
    except (TypeError, ValueError, ArithmeticError):
        raise ScheduleError(f"fraction must be a number in [0, 1], got {fraction!r}") from None
    if not 0 <= exact <= 1:
        raise ScheduleError(f"fraction must be in [0, 1], got {fraction!r}")
    return exact


def _parse_fraction_text(text: str) -> Fraction:
    """``"0.25"`` or ``"25%"`` -> exact Fraction (range is checked by the caller)."""
    match = _FRACTION.fullmatch(text)
    if not match:
        raise ScheduleError(f"fraction {text!r} is not a decimal number or percentage like 0.25 or 25%")
    value = Fraction(match.group(1))
    return value / 100 if match.group(2) else value


def _parse_int(text: str, what: str) -> int:
    """A non-negative decimal integer; digits only (no signs, underscores or non-ASCII digits)."""
    if not _INT.fullmatch(text):
        raise ScheduleError(f"{what} {text!r} is not a non-negative integer")
    if len(text) > 12:  # far beyond any limit; also avoids Python's int-from-huge-string guard
        raise ScheduleError(f"{what} {text!r} is too large")
    return int(text)


def light_step_count(steps: int, fraction: FractionLike) -> int:
    """Number of light steps for ``fraction`` of ``steps``: ``floor(fraction * steps + 1/2)``.

    Round half up on the exact decimal value of ``fraction`` (see the module docstring).
    """
    steps = _check_steps(steps)
    exact = _exact_fraction(fraction)
    return int((exact * steps + Fraction(1, 2)).__floor__())


def _split(steps: int, parts: int) -> List[Tuple[int, int]]:
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
    steps = _check_steps(steps)
    n_segments = _check_n_segments(steps, n_segments)
    return _split(steps, n_segments)


def _check_n_segments(steps: int, n_segments) -> int:
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


def _light_ranges(steps: int, n: int, placement: str) -> List[Tuple[int, int]]:
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
    return [_centered(*_split(steps, 4)[quarter], n, steps)]


def _check_placement(placement) -> str:
    key = placement.strip().lower() if isinstance(placement, str) else placement
    if key not in PLACEMENTS:
        raise ScheduleError(f"unknown placement {placement!r}; expected one of {', '.join(PLACEMENTS)}")
    return key


class _ConstructorOrValue:
    """Descriptor for a name that is a constructor on the class and a value on instances.

    ``ModelSchedule.light_fraction(1000, 0.25)`` builds a schedule, while ``schedule.light_fraction``
    reads the share of light steps; both spellings are what users (and the design brief) expect.
    """

    def __init__(self, build, value):
        self._build, self._value = build, value
        self.__doc__ = build.__doc__

    def __get__(self, obj, owner=None):
        if obj is None:
            return types.MethodType(self._build, owner)
        return self._value(obj)


# ----------------------------------------------------------------------------------------------
# ModelSchedule
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ModelSchedule:
    """Per-step model indices for one sampling trajectory (immutable, hashable).

    Build with the classmethods (:meth:`all_heavy`, :meth:`light_fraction`, :meth:`segments`,
    :meth:`parse`, ...) or directly from a sequence of non-negative ints.
    """

    indices: Tuple[int, ...]

    def __post_init__(self):
        if isinstance(self.indices, (str, bytes)):
            raise ScheduleError(
                f"ModelSchedule takes a sequence of model indices, got the string {self.indices!r}; "
                "use ModelSchedule.parse for text specs"
            )
        try:
            raw = list(self.indices)
        except TypeError:
            raise ScheduleError(f"ModelSchedule takes a sequence of ints, got {self.indices!r}") from None
        if not raw:
            raise ScheduleError("a model schedule needs at least one step, got an empty sequence")
        _check_steps(len(raw))
        # frozen dataclass: normalise through object.__setattr__ once, at construction.
        object.__setattr__(self, "indices", tuple(_check_model(i) for i in raw))

    # -- sequence protocol ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item):
        return self.indices[item]

    def __iter__(self):
        return iter(self.indices)

    def __repr__(self) -> str:
        return f"ModelSchedule.parse({self.to_spec()!r})"

    def __str__(self) -> str:
        return self.to_spec()

    # -- summaries ------------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Number of denoising steps."""
        return len(self.indices)

    @property
    def n_models(self) -> int:
        """Number of models the schedule needs (largest index + 1)."""
        return max(self.indices) + 1

    def counts(self) -> Tuple[int, ...]:
        """Number of steps per model index, ``counts()[k]`` for model ``k`` (length ``n_models``)."""
        out = [0] * self.n_models
        for i in self.indices:
            out[i] += 1
        return tuple(out)

    def _light_share(self) -> float:
        return sum(1 for i in self.indices if i != _HEAVY) / len(self.indices)

    def runs(self) -> List[Tuple[int, int]]:
        """Run-length form: ``[(model_index, count), ...]`` in step order."""
        return [(k, sum(1 for _ in grp)) for k, grp in itertools.groupby(self.indices)]

    def to_spec(self) -> str:
        """Compact run-length text spec (``"L32-H64-L32"``); :meth:`parse` reads it back."""
        return "-".join(
            f"{_LETTER[k]}{n}" if k in _LETTER else f"M{k}x{n}" for k, n in self.runs()
        )

    def validate_for(self, n_models: int, steps: Optional[int] = None) -> "ModelSchedule":
        """Check the schedule fits ``n_models`` models (and ``steps`` steps if given); returns self."""
        if self.n_models > n_models:
            raise ScheduleError(
                f"schedule {self.to_spec()!r} uses model index {self.n_models - 1} but only "
                f"{n_models} model(s) were supplied"
            )
        if steps is not None and steps != self.steps:
            raise ScheduleError(f"schedule {self.to_spec()!r} has {self.steps} steps but steps={steps}")
        return self

    def predicted_saving(self, block_counts: Sequence[int]) -> float:
        """Predicted block-FLOPs saving (eq. 3, generalized to any number of models).

        Mean over steps of ``1 - n_blocks[index] / n_blocks[0]``; for two models this is
        ``f * (1 - n_light / n_heavy)``. Counts blocks only: the head and embedding are ignored, and
        all models are assumed to share width and sequence length.
        """
        counts = [operator.index(c) for c in block_counts]
        if len(counts) < self.n_models:
            raise ScheduleError(
                f"schedule {self.to_spec()!r} uses {self.n_models} models but only "
                f"{len(counts)} block count(s) were given: {counts}"
            )
        if any(c <= 0 for c in counts):
            raise ScheduleError(f"block counts must be positive, got {counts}")
        per_model = self.counts()
        saved = sum(n * (1 - counts[k] / counts[0]) for k, n in enumerate(per_model))
        return saved / self.steps

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def from_list(cls, indices: Iterable[int]) -> "ModelSchedule":
        """Schedule from an explicit list of per-step model indices."""
        return cls(indices)

    @classmethod
    def all_model(cls, steps: int, index: int) -> "ModelSchedule":
        """Model ``index`` at every step."""
        return cls((_check_model(index),) * _check_steps(steps))

    @classmethod
    def all_heavy(cls, steps: int) -> "ModelSchedule":
        """The heavy model (index 0) at every step: the baseline."""
        return cls.all_model(steps, _HEAVY)

    @classmethod
    def all_light(cls, steps: int, light: int = _LIGHT) -> "ModelSchedule":
        """The light model at every step."""
        return cls.all_model(steps, light)

    def _build_light_fraction(
        cls, steps: int, fraction: FractionLike, placement: str = "sandwich", light: int = _LIGHT
    ) -> "ModelSchedule":
        """Replace ``floor(fraction * steps + 1/2)`` steps by model ``light`` at ``placement``.

        Placements: ``first``, ``last``, ``q1``..``q4`` (block centered on that quarter; may extend
        beyond it when larger), ``sandwich`` (half at each end, odd extra at the start), ``middle``.
        On an instance, ``schedule.light_fraction`` is instead the share of steps not using model 0.
        """
        steps = _check_steps(steps)
        placement = _check_placement(placement)
        light = _check_model(light)
        n = light_step_count(steps, fraction)
        out = [_HEAVY] * steps
        for start, end in _light_ranges(steps, n, placement):
            out[start:end] = [light] * (end - start)
        return cls(out)

    #: Class access: constructor (see ``_build_light_fraction``). Instance access: share of steps
    #: not using model 0.
    light_fraction = _ConstructorOrValue(_build_light_fraction, _light_share)

    @classmethod
    def from_fraction(cls, steps: int, fraction: FractionLike, placement: str = "sandwich",
                      light: int = _LIGHT) -> "ModelSchedule":
        """Alias of the ``ModelSchedule.light_fraction`` constructor, unambiguous by name."""
        return cls.light_fraction(steps, fraction, placement, light)

    @classmethod
    def segments(
        cls, steps: int, light_segments: Iterable[int], n_segments: int = 10, light: int = _LIGHT
    ) -> "ModelSchedule":
        """Split ``steps`` into ``n_segments`` near-equal segments; the chosen ones use ``light``."""
        steps = _check_steps(steps)
        n_segments = _check_n_segments(steps, n_segments)
        light = _check_model(light)
        chosen = _check_segment_indices(light_segments, n_segments)
        bounds = _split(steps, n_segments)
        out = [_HEAVY] * steps
        for seg in chosen:
            start, end = bounds[seg]
            out[start:end] = [light] * (end - start)
        return cls(out)

    @classmethod
    def coerce(cls, schedule, steps: Optional[int] = None) -> "ModelSchedule":
        """Accept what a sampler's ``schedule=`` argument may be given.

        ``None`` -> all heavy (needs ``steps``); a :class:`ModelSchedule` or a sequence of ints; a text
        spec (parsed with ``steps``). When ``steps`` is given the result must have that many steps.
        """
        if schedule is None:
            if steps is None:
                raise ScheduleError("schedule=None means all-heavy, which needs the number of steps")
            return cls.all_heavy(steps)
        if isinstance(schedule, str):
            return cls.parse(schedule, steps)
        result = schedule if isinstance(schedule, cls) else cls(schedule)
        if steps is not None:
            result.validate_for(result.n_models, _check_steps(steps))
        return result

    @classmethod
    def parse(cls, spec: str, steps: Optional[int] = None) -> "ModelSchedule":
        """Parse a text spec (grammar in the module docstring), e.g. ``"sandwich:0.25"``.

        ``steps`` is required by the keyword, placement and segment forms; run-length specs carry
        their own length and must match ``steps`` when it is given.
        """
        if not isinstance(spec, str):
            raise ScheduleError(f"schedule spec must be a string, got {type(spec).__name__} {spec!r}")
        try:
            if steps is not None:
                steps = _check_steps(steps)
            return _parse(cls, spec, steps)
        except ScheduleError as err:
            raise ScheduleError(f"invalid model schedule spec {spec!r}: {err}") from None


ModelSchedule.all_segment_choices = staticmethod(all_segment_choices)


def _check_segment_indices(light_segments: Iterable[int], n_segments: int) -> List[int]:
    """Validate chosen segment indices: ints in range, no duplicates."""
    if isinstance(light_segments, (str, bytes)):
        raise ScheduleError(f"light_segments must be a collection of ints, got {light_segments!r}")
    chosen, seen = [], set()
    for seg in light_segments:
        value = integer("segment index", seg, error=ScheduleError)
        if not 0 <= value < n_segments:
            raise ScheduleError(
                f"segment index {value} out of range for {n_segments} segments (0..{n_segments - 1})"
            )
        if value in seen:
            raise ScheduleError(f"duplicate segment index {value}")
        seen.add(value)
        chosen.append(value)
    return chosen


# ----------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------


def _need_steps(steps: Optional[int], form: str) -> int:
    if steps is None:
        raise ScheduleError(f"the {form} form needs the number of steps (pass steps=...)")
    return steps


def _parse(cls, spec: str, steps: Optional[int]) -> ModelSchedule:
    """Dispatch on the spec's form; raises ScheduleError with a message the caller prefixes."""
    # Letters are matched case-insensitively but messages quote the user's own spelling.
    text = spec.strip()
    if not text:
        raise ScheduleError(f"empty spec; {_GRAMMAR}")
    if text.lower() in _KEYWORDS:
        return cls.all_model(_need_steps(steps, repr(text)), _KEYWORDS[text.lower()])
    if ":" in text:
        head, _, body = text.partition(":")
        return _parse_colon_form(cls, head.strip(), body.strip(), steps)
    return _parse_runs(cls, text, steps)


def _parse_colon_form(cls, head: str, body: str, steps: Optional[int]) -> ModelSchedule:
    """``<placement>:<fraction>``, ``segments[/N]:i,j,...`` or ``all:<k>``."""
    key = head.lower()
    if key == "all":
        return cls.all_model(_need_steps(steps, "'all:<model>'"), _parse_int(body, "model index"))
    seg = _SEGMENTS_HEAD.fullmatch(head)
    if seg:
        n_segments = _parse_int(seg.group(1), "segment count") if seg.group(1) else 10
        items = [] if not body else [s.strip() for s in body.split(",")]
        chosen = [_parse_int(s, "segment index") for s in items]
        steps = _need_steps(steps, "'segments:...'")
        if isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps < n_segments:
            # The segment count is easy to miss when it is the default: name where it came from.
            given = f"segments/{n_segments}" if seg.group(1) else f"the default {n_segments} segments"
            raise ScheduleError(f"{given} need at least {n_segments} steps, got steps={steps}; write "
                                f"'segments/N:i,j,...' with N <= {steps}")
        return cls.segments(steps, chosen, n_segments)
    if key not in PLACEMENTS:
        raise ScheduleError(
            f"unknown placement {head!r}; expected one of {', '.join(PLACEMENTS)}, 'segments' or 'all'"
        )
    fraction = _parse_fraction_text(body)
    if not 0 <= fraction <= 1:
        raise ScheduleError(f"fraction {body!r} is outside [0, 1]")
    return cls.from_fraction(_need_steps(steps, f"'{key}:<fraction>'"), fraction, key)


def _parse_runs(cls, text: str, steps: Optional[int]) -> ModelSchedule:
    """Run-length form ``L125-H750-L125`` / ``M2x64``."""
    runs = []
    for token in (t.strip() for t in text.split("-")):
        match = _RUN.fullmatch(token)
        if not match:
            what = "an empty run (doubled or trailing '-')" if not token else f"run {token!r}"
            raise ScheduleError(f"{what} is not H<n>, L<n> or M<k>x<n>; {_GRAMMAR}")
        if match.group(2) is not None:
            model = _check_model(_parse_int(match.group(2), "model index"))
        else:
            model = _HEAVY if match.group(1).lower() == "h" else _LIGHT
        count = _parse_int(match.group(3), "step count")
        if count <= 0:
            raise ScheduleError(f"run {token!r} has count {count}; counts must be positive")
        runs.append((model, count))
        if sum(n for _, n in runs) > MAX_STEPS:  # before allocating anything
            raise ScheduleError(f"more than {MAX_STEPS} steps")
    total = sum(n for _, n in runs)
    if steps is not None and total != steps:
        raise ScheduleError(f"the runs add up to {total} steps but steps={steps}")
    return cls([k for k, n in runs for _ in range(n)])


__all__ = [
    "ModelSchedule",
    "ScheduleError",
    "PLACEMENTS",
    "MAX_STEPS",
    "MAX_MODELS",
    "all_segment_choices",
    "light_step_count",
    "segment_bounds",
]

"""Model schedules: which denoiser runs at each sampling step.

A :class:`ModelSchedule` is an immutable, hashable tuple of model indices, one per denoising step in
the order the sampler runs them (index 0 of the schedule is the first step, at ``t = 1``, all masks).
Model index 0 is the heavy model, 1 the light one; more indices are allowed (capacity levels).

Built from a fraction and a placement (:meth:`ModelSchedule.from_fraction`; the rounding and
placement rules are in :mod:`mdlm_fast.schedules.placement`), from segments, or from a text spec
(:meth:`ModelSchedule.parse`; the grammar is in :mod:`mdlm_fast.schedules.step_spec`). Invalid
specs raise :class:`ScheduleError` (a ``ValueError``) quoting the spec. :meth:`ModelSchedule.to_spec`
writes the run-length form, which :meth:`ModelSchedule.parse` reads back to an equal schedule.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

from mdlm_fast.schedules import step_spec
from mdlm_fast.schedules.grammar import (
    HEAVY,
    LIGHT,
    MAX_MODELS,
    MAX_STEPS,
    FractionLike,
    ScheduleError,
    check_model,
    check_steps,
)
from mdlm_fast.schedules.placement import (
    PLACEMENTS,
    all_segment_choices,
    fraction_indices,
    light_step_count,
    segment_bounds,
    segment_indices,
)

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


@dataclass(frozen=True, repr=False)
class ModelSchedule:
    """Per-step model indices for one sampling trajectory (immutable, hashable).

    Build with the classmethods (:meth:`all_heavy`, :meth:`from_fraction`, :meth:`segments`,
    :meth:`parse`, ...) or directly from a sequence of non-negative ints.
    """

    indices: Sequence[int]  # any sequence of ints in; __post_init__ stores a checked tuple

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
        check_steps(len(raw))
        # frozen dataclass: normalise through object.__setattr__ once, at construction.
        object.__setattr__(self, "indices", tuple(check_model(i) for i in raw))

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

    @property
    def light_fraction(self) -> float:
        """Share of steps not using model 0 (build a schedule from a fraction with :meth:`from_fraction`)."""
        return sum(1 for i in self.indices if i != HEAVY) / len(self.indices)

    def runs(self) -> List[Tuple[int, int]]:
        """Run-length form: ``[(model_index, count), ...]`` in step order."""
        return [(k, sum(1 for _ in grp)) for k, grp in itertools.groupby(self.indices)]

    def to_spec(self) -> str:
        """Compact run-length text spec (``"L32-H64-L32"``); :meth:`parse` reads it back."""
        return step_spec.to_spec(self.indices)

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
        return cls(indices)  # type: ignore[arg-type]  # __post_init__ reads any iterable

    @classmethod
    def all_model(cls, steps: int, index: int) -> "ModelSchedule":
        """Model ``index`` at every step."""
        return cls((check_model(index),) * check_steps(steps))

    @classmethod
    def all_heavy(cls, steps: int) -> "ModelSchedule":
        """The heavy model (index 0) at every step: the baseline."""
        return cls.all_model(steps, HEAVY)

    @classmethod
    def all_light(cls, steps: int, light: int = LIGHT) -> "ModelSchedule":
        """The light model at every step."""
        return cls.all_model(steps, light)

    @classmethod
    def from_fraction(
        cls, steps: int, fraction: FractionLike, placement: str = "sandwich", light: int = LIGHT
    ) -> "ModelSchedule":
        """Replace ``floor(fraction * steps + 1/2)`` steps by model ``light`` at ``placement``.

        Placements: ``first``, ``last``, ``q1``..``q4`` (block centered on that quarter; may extend
        beyond it when larger), ``sandwich`` (half at each end, odd extra at the start), ``middle``.
        The share of light steps of a schedule is its :attr:`light_fraction`.
        """
        steps = check_steps(steps)
        light = check_model(light)
        return cls(fraction_indices(steps, fraction, placement, light))

    @classmethod
    def segments(
        cls, steps: int, light_segments: Iterable[int], n_segments: int = 10, light: int = LIGHT
    ) -> "ModelSchedule":
        """Split ``steps`` into ``n_segments`` near-equal segments; the chosen ones use ``light``."""
        steps = check_steps(steps)
        light = check_model(light)
        return cls(segment_indices(steps, light_segments, n_segments, light))

    #: Every choice of light segments (:func:`~mdlm_fast.schedules.placement.all_segment_choices`).
    all_segment_choices = staticmethod(all_segment_choices)

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
            result.validate_for(result.n_models, check_steps(steps))
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
                steps = check_steps(steps)
            return cls(step_spec.parse_indices(spec, steps))
        except ScheduleError as err:
            raise ScheduleError(f"invalid model schedule spec {spec!r}: {err}") from None

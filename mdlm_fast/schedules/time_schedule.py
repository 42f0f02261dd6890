"""Model schedules stated in diffusion time, so that one schedule runs at any number of steps.

A :class:`ModelSchedule` names a model per step index, which ties it to one step count. A
:class:`TimeSchedule` names a model per interval of diffusion time ``t`` instead: step ``i`` of a
``T``-step trajectory runs its model at ``t_i = ts[i]`` of the sampler's grid
``linspace(1, 1e-5, T + 1)``, and takes the model of the interval that holds ``t_i``. Intervals are
half-open, ``(lo, hi]``, matching the time a step covers: step ``i`` covers ``(ts[i+1], ts[i]]``.
Time not covered by any interval runs the default model (0, the heavy one).

So a run of steps ``a..b-1`` of a ``T``-step schedule becomes the interval ``(ts[b], ts[a]]``
(:meth:`TimeSchedule.from_model_schedule`), and at ``k * T`` steps that interval holds
``k * (b - a)`` steps give or take one: the light fraction carries across step counts.

Text spec (case-insensitive)::

    spec     := "time:" [interval ("," interval)*] ["," "default=" model]
    interval := LO "-" HI "=" model       0 <= LO < HI <= 1, decimal numbers
    model    := "H" | "L" | "M" K          heavy (0), light (1), model K (mdlm_fast.schedules.grammar)

for example ``time:0.9-1=L,0-0.1=L`` (light for t > 0.9 and for t <= 0.1, heavy in between).
Intervals must not overlap. :func:`resolve_schedule` turns any schedule argument -- a time spec
or :class:`TimeSchedule`, or whatever :meth:`ModelSchedule.coerce` takes -- into the per-step
schedule of a given number of steps; the samplers and the CLI go through it. A schedule is written to and read from a small JSON file together with a free-form
``source`` record (the importance profile or search it came from).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Tuple

from mdlm_fast.schedules.grammar import FLAGS, MAX_MODELS, MODEL_PATTERN, ScheduleError, model_from_text, model_text
from mdlm_fast.schedules.model_schedule import ModelSchedule
from mdlm_fast.util.validate import integer

__all__ = ["TimeInterval", "TimeSchedule", "resolve_schedule", "FILE_FORMAT"]

#: The ``format`` field of a time-schedule JSON file.
FILE_FORMAT = "mdlm_fast.schedules.time_schedule"
_FILE_VERSION = 1
_PREFIX = "time:"
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e-?[0-9]+)?"
_INTERVAL = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*=\s*({MODEL_PATTERN})\s*", FLAGS)
_DEFAULT = re.compile(rf"\s*default\s*=\s*({MODEL_PATTERN})\s*", FLAGS)


def _number_text(x: float) -> str:
    """Shortest text that reads back to the same float (``0.9``, ``1``, ``1e-05``)."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class TimeInterval:
    """Model ``model`` runs at every step whose time ``t`` is in ``(lo, hi]``."""

    lo: float
    hi: float
    model: int

    def __post_init__(self):
        for name in ("lo", "hi"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ScheduleError(f"time interval {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0.0 <= self.lo < self.hi <= 1.0:
            raise ScheduleError(f"time interval needs 0 <= lo < hi <= 1, got lo={self.lo!r}, hi={self.hi!r}")
        integer("time interval model", self.model, minimum=0, maximum=MAX_MODELS - 1, error=ScheduleError)

    def holds(self, t: float) -> bool:
        return self.lo < t <= self.hi


@dataclass(frozen=True)
class TimeSchedule:
    """Model per interval of diffusion time (see the module doc). Immutable; ``source`` is a
    provenance record and takes no part in equality."""

    intervals: Tuple[TimeInterval, ...]
    default: int = 0
    source: Optional[dict] = field(default=None, compare=False)

    def __post_init__(self):
        intervals = tuple(self.intervals)
        for item in intervals:
            if not isinstance(item, TimeInterval):
                raise ScheduleError(f"TimeSchedule intervals must be TimeInterval, got {item!r}")
        ordered = tuple(sorted(intervals, key=lambda iv: -iv.hi))
        for upper, lower in zip(ordered, ordered[1:]):
            if lower.hi > upper.lo:
                raise ScheduleError(
                    f"time intervals ({lower.lo:g}, {lower.hi:g}] and ({upper.lo:g}, {upper.hi:g}] overlap"
                )
        object.__setattr__(self, "intervals", ordered)
        integer("default model", self.default, minimum=0, maximum=MAX_MODELS - 1, error=ScheduleError)

    # -- use -------------------------------------------------------------------------------------

    def model_at(self, t: float) -> int:
        """The model that runs at time ``t``."""
        for interval in self.intervals:
            if interval.holds(t):
                return interval.model
        return self.default

    def at_steps(self, steps: int) -> ModelSchedule:
        """The per-step schedule of a ``steps``-step trajectory."""
        from mdlm_fast.schedules.noise import sampling_timesteps

        times = sampling_timesteps(steps)[:-1].tolist()  # t at which step i runs its model
        return ModelSchedule([self.model_at(t) for t in times])

    @property
    def light_fraction(self) -> float:
        """Share of diffusion time given to models other than 0 (the limit of the per-step light
        fraction as the number of steps grows)."""
        covered = sum(iv.hi - iv.lo for iv in self.intervals if iv.model != 0)
        if self.default != 0:
            covered += 1.0 - sum(iv.hi - iv.lo for iv in self.intervals)
        return covered

    # -- conversions -----------------------------------------------------------------------------

    @classmethod
    def from_model_schedule(cls, schedule: ModelSchedule, *, source: Optional[dict] = None) -> "TimeSchedule":
        """The time schedule that gives back ``schedule`` at its own number of steps: each run of
        steps ``a..b-1`` of a model other than 0 becomes the interval ``(ts[b], ts[a]]``; the last
        step's lower bound is 0, so the time after the grid's end belongs to the last step's model."""
        from mdlm_fast.schedules.noise import sampling_timesteps

        schedule = ModelSchedule.coerce(schedule)
        ts = sampling_timesteps(schedule.steps).tolist()
        intervals, start = [], 0
        for model, count in schedule.runs():
            end = start + count
            if model != 0:
                lo = 0.0 if end == schedule.steps else ts[end]
                intervals.append(TimeInterval(lo, ts[start], model))
            start = end
        return cls(tuple(intervals), 0, source)

    def to_spec(self) -> str:
        parts = [f"{_number_text(iv.lo)}-{_number_text(iv.hi)}={model_text(iv.model)}" for iv in self.intervals]
        if self.default != 0:
            parts.append(f"default={model_text(self.default)}")
        return _PREFIX + ",".join(parts)

    def __str__(self) -> str:
        return self.to_spec()

    @staticmethod
    def is_spec(text: Any) -> bool:
        return isinstance(text, str) and text.strip().lower().startswith(_PREFIX)

    @classmethod
    def parse(cls, spec: str) -> "TimeSchedule":
        """Read a ``time:`` spec (grammar in the module doc)."""
        if not cls.is_spec(spec):
            raise ScheduleError(f"a time schedule spec starts with {_PREFIX!r}, got {spec!r}")
        body = spec.strip()[len(_PREFIX) :]
        intervals, default = [], 0
        try:
            for part in [] if not body.strip() else body.split(","):
                match = _INTERVAL.fullmatch(part)
                if match:
                    intervals.append(TimeInterval(float(match[1]), float(match[2]), model_from_text(match[3])))
                    continue
                match = _DEFAULT.fullmatch(part)
                if match:
                    default = model_from_text(match[1])
                    continue
                raise ScheduleError(
                    f"cannot read {part.strip()!r}: expected LO-HI=MODEL (e.g. 0.9-1=L) "
                    "or default=MODEL, with MODEL one of H, L, M<k>"
                )
            return cls(tuple(intervals), default)
        except ScheduleError as err:
            raise ScheduleError(f"invalid time schedule spec {spec!r}: {err}") from None

    # -- files -----------------------------------------------------------------------------------

    def as_dict(self) -> dict:
        return {
            "format": FILE_FORMAT,
            "version": _FILE_VERSION,
            "spec": self.to_spec(),
            "intervals": [{"lo": iv.lo, "hi": iv.hi, "model": iv.model} for iv in self.intervals],
            "default": self.default,
            "source": self.source or {},
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the schedule and its source record as JSON, atomically."""
        from mdlm_fast.util.atomic import write_text

        write_text(path, json.dumps(self.as_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "time schedule") -> "TimeSchedule":
        if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
            raise ScheduleError(f'{where}: not a time-schedule file (expected "format": {FILE_FORMAT!r})')
        if data.get("version") != _FILE_VERSION:
            raise ScheduleError(f"{where}: unsupported version {data.get('version')!r} (expected {_FILE_VERSION})")
        try:
            intervals = tuple(TimeInterval(iv["lo"], iv["hi"], iv["model"]) for iv in data["intervals"])
            schedule = cls(intervals, data.get("default", 0), data.get("source") or None)
        except (KeyError, TypeError) as err:
            raise ScheduleError(f"{where}: malformed intervals ({err!r})") from None
        except ScheduleError as err:
            raise ScheduleError(f"{where}: {err}") from None
        if "spec" in data and cls.parse(data["spec"]) != schedule:
            raise ScheduleError(f'{where}: its "spec" {data["spec"]!r} disagrees with its intervals')
        return schedule

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TimeSchedule":
        """Read a file written by :meth:`save`; errors name the file."""
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except OSError as err:
            raise ScheduleError(f"cannot read time schedule file {os.fspath(path)!r}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise ScheduleError(f"time schedule file {os.fspath(path)!r} is not valid JSON: {err}") from None
        return cls.from_dict(data, where=f"time schedule file {os.fspath(path)!r}")


def time_fractions(schedule: ModelSchedule, bounds: Sequence[float]) -> list[int]:
    """Steps of models other than 0 whose time falls in each ``(bounds[k+1], bounds[k]]``
    (``bounds`` descending): a helper for comparing one time schedule at several step counts."""
    from mdlm_fast.schedules.noise import sampling_timesteps

    times = sampling_timesteps(schedule.steps)[:-1].tolist()
    return [sum(1 for t, m in zip(times, schedule) if hi >= t > lo and m != 0) for hi, lo in zip(bounds, bounds[1:])]


def resolve_schedule(schedule: Any, steps: Optional[int]) -> ModelSchedule:
    """The per-step schedule for ``steps`` steps from any schedule argument: a ``time:`` spec or a
    :class:`TimeSchedule` (resolved at ``steps``), or anything :meth:`ModelSchedule.coerce` takes."""
    if TimeSchedule.is_spec(schedule):
        schedule = TimeSchedule.parse(schedule)
    if isinstance(schedule, TimeSchedule):
        if steps is None:
            raise ScheduleError("a time schedule needs the number of steps (pass steps=...)")
        return schedule.at_steps(steps)
    return ModelSchedule.coerce(schedule, steps)

"""Schedule studies: exhaustive segment search (eq. 8), placements, light-fraction and light-size sweeps.

Every study is a list of *work items* -- ``{"key": unique name, "schedule": spec, ...labels}`` --
evaluated with the same sampling seeds (so schedule differences are not noise differences) by
:func:`run_items`, which

* appends each finished item to an append-only JSONL log as soon as it is done (one ``write`` +
  ``fsync`` per line), so a killed run loses nothing finished, and a rerun evaluates only the
  rest;
* shards the unfinished items round-robin over ``torchrun`` ranks (each rank its own log file,
  so no two processes append to one file), and merges every rank's rows on all ranks.

Each log starts with a settings line; a rerun with different settings (models, steps, seeds,
judge, ...) is refused rather than silently mixing incomparable numbers.

Exhaustive search (paper): T steps in ``n_segments = 10`` near-equal segments, ``n_light = 4`` of them
light: C(10, 4) = 210 schedules. Segment score (eq. 8)::

    score_k = mean{ PPL(s) : segment k is light in s }  -  mean{ PPL(s) : all s }

Negative = putting the light model in segment k tends to give *better* (lower) gen-PPL. Because
every schedule has the same number of light segments, ``sum_k n_k * score_k = 0`` (``n_k``:
schedules using segment k), and for the complete 210-schedule design every ``n_k = 84``, so the
scores themselves sum to zero.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mdlm_fast.schedules.model_schedule import ModelSchedule, all_segment_choices

__all__ = [
    "ResultsLog",
    "run_items",
    "exhaustive_items",
    "placement_items",
    "fraction_items",
    "light_size_items",
    "segment_scores",
    "segment_frequency",
    "ranked",
    "light_segments_of",
]

STUDIES = ("exhaustive", "placement", "fraction", "light-size")


# --------------------------------------------------------------------------------------------
# Work items
# --------------------------------------------------------------------------------------------


def exhaustive_items(steps: int, n_segments: int = 10, n_light: int = 4) -> list[dict]:
    """The C(n_segments, n_light) segment schedules, in lexicographic order of the light set."""
    return [
        {
            "key": "segments:" + ",".join(map(str, chosen)),
            "schedule": ModelSchedule.segments(steps, chosen, n_segments).to_spec(),
            "light_segments": list(chosen),
            "n_segments": n_segments,
        }
        for chosen in all_segment_choices(n_segments, n_light)
    ]


def placement_items(
    steps: int,
    fraction: float = 0.25,
    placements: Sequence[str] = ("q1", "q2", "q3", "q4", "sandwich"),
    baselines: bool = True,
) -> list[dict]:
    """Hand-crafted placements of ``fraction`` light steps, plus all-heavy / all-light baselines."""
    items = (
        [
            {
                "key": "heavy",
                "schedule": ModelSchedule.all_heavy(steps).to_spec(),
                "placement": "all-heavy",
                "fraction": 0.0,
            }
        ]
        if baselines
        else []
    )
    for p in placements:
        items.append(
            {
                "key": f"{p}:{fraction:g}",
                "placement": p,
                "fraction": float(fraction),
                "schedule": ModelSchedule.from_fraction(steps, fraction, p).to_spec(),
            }
        )
    if baselines:
        items.append(
            {
                "key": "light",
                "schedule": ModelSchedule.all_light(steps).to_spec(),
                "placement": "all-light",
                "fraction": 1.0,
            }
        )
    return items


def fraction_items(steps: int, fractions: Iterable[float], placement: str = "sandwich") -> list[dict]:
    """One schedule per light fraction at one placement (fraction 0 = all heavy)."""
    return [
        {
            "key": f"{placement}:{f:g}",
            "placement": placement,
            "fraction": float(f),
            "schedule": ModelSchedule.from_fraction(steps, f, placement).to_spec(),
        }
        for f in fractions
    ]


def light_size_items(
    steps: int, light_names: Sequence[str], fractions: Iterable[float], placement: str = "sandwich"
) -> list[dict]:
    """Each light model (index into ``light_names``) at each fraction: ``light`` names the model."""
    return [
        {**item, "key": f"{name}@{item['key']}", "light": index, "light_model": name}
        for index, name in enumerate(light_names)
        for item in fraction_items(steps, fractions, placement)
    ]


# --------------------------------------------------------------------------------------------
# Resumable, sharded evaluation
# --------------------------------------------------------------------------------------------


class ResultsLog:
    """Append-only JSONL logs of finished items under ``directory`` for study ``name``.

    Rank r of a W-process job appends to ``name.rank{r}.jsonl`` (W > 1) or ``name.jsonl``;
    :meth:`load` reads all of them, so a run can resume under any number of processes.
    """

    def __init__(
        self, directory: str | os.PathLike, name: str, settings: dict, rank: int = 0, world_size: int = 1
    ) -> None:
        self.directory = Path(directory)
        self.name = name
        self.settings = json.loads(json.dumps(settings))  # what a JSON round trip gives back
        self.path = self.directory / (f"{name}.rank{rank}.jsonl" if world_size > 1 else f"{name}.jsonl")

    def files(self) -> list[Path]:
        return sorted({*self.directory.glob(f"{self.name}.jsonl"), *self.directory.glob(f"{self.name}.rank*.jsonl")})

    def load(self) -> dict[str, dict]:
        """Finished rows by key. A torn line (a run killed mid-write) is ignored: its item is redone."""
        rows: dict[str, dict] = {}
        for file in self.files():
            for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a write a kill tore apart: that item is simply evaluated again
                if "settings" in entry:
                    if entry["settings"] != self.settings:
                        changed = sorted(
                            k
                            for k in set(entry["settings"]) | set(self.settings)
                            if entry["settings"].get(k) != self.settings.get(k)
                        )
                        raise ValueError(
                            f"{file} was made with different settings ({', '.join(changed)}); "
                            f"rerun with the same settings to resume, or use another --out"
                        )
                    continue
                rows[entry["key"]] = entry
        return rows

    def append(self, row: dict) -> None:
        """Write one finished row durably (flush + fsync) before the next item starts."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab+") as f:
            f.seek(0, os.SEEK_END)
            text = ""
            if f.tell() == 0:
                text = json.dumps({"settings": self.settings}) + "\n"
            else:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn line from a killed run: start on a fresh line
                    text = "\n"
            f.write((text + json.dumps(row) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())


def run_items(
    items: Sequence[dict],
    evaluate: Callable[[dict], dict],
    log: ResultsLog | None,
    *,
    dist: Any = None,
    max_new: int | None = None,
    progress: bool = False,
    desc: str = "schedules",
    deadline: float | None = None,
) -> tuple[list[dict], bool]:
    """Evaluate the items not yet in ``log``; returns ``(rows in item order, complete)``.

    ``evaluate(item) -> metrics`` gives each row ``{**item, **metrics}``. ``max_new`` caps how many
    items *each rank* evaluates in this call; ``deadline`` (a ``time.monotonic()`` value) stops
    starting new items after it. Either way, rerun to continue.
    ``complete`` says whether every item now has a row. Runs identically in one process or
    under torchrun (``dist``): the finished rows are gathered from every rank.
    """
    from tqdm.auto import tqdm

    from mdlm_fast.analysis.distributed import single_process

    dist = dist or single_process()
    keys = [item["key"] for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError("work item keys must be unique")
    done = log.load() if log is not None else {}
    pending = [item for item in items if item["key"] not in done]
    mine = dist.shard(pending)
    if max_new is not None:
        mine = mine[: max(0, max_new)]
    new_rows = []
    for item in tqdm(mine, desc=desc, disable=not (progress and dist.is_main)):
        if deadline is not None and time.monotonic() > deadline:
            break
        row = {**item, **evaluate(item)}
        if log is not None:
            log.append(row)
        new_rows.append(row)
    for part in dist.gather(new_rows):
        for row in part:
            done[row["key"]] = row
    rows = [done[k] for k in keys if k in done]
    return rows, len(rows) == len(items)


# --------------------------------------------------------------------------------------------
# Analysis of finished rows
# --------------------------------------------------------------------------------------------


def _finite(rows: Iterable[dict], metric: str) -> list[dict]:
    return [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]


def ranked(rows: Iterable[dict], metric: str = "gen_ppl") -> list[dict]:
    """Rows best first: ascending ``metric`` (lower gen-PPL is better); ties by key."""
    return sorted(_finite(rows, metric), key=lambda r: (r[metric], r["key"]))


def light_segments_of(row: dict) -> list[int]:
    if "light_segments" not in row:
        raise ValueError(f"row {row.get('key')!r} is not from a segment search (no light_segments)")
    return list(row["light_segments"])


def segment_scores(rows: Sequence[dict], n_segments: int, metric: str = "gen_ppl") -> list[float]:
    """Eq. 8: ``score_k = mean{metric(s) : k light in s} - mean{metric(s) : all s}`` for each k.

    NaN for a segment no evaluated schedule puts light. ``sum_k n_k score_k = 0`` (module doc).
    """
    rows = _finite(rows, metric)
    if not rows:
        raise ValueError(f"no finished rows with a finite {metric!r} to score")
    overall = sum(r[metric] for r in rows) / len(rows)
    scores = []
    for k in range(n_segments):
        using = [r[metric] for r in rows if k in light_segments_of(r)]
        scores.append(sum(using) / len(using) - overall if using else float("nan"))
    return scores


def segment_frequency(
    rows: Sequence[dict], n_segments: int, top: int = 20, metric: str = "gen_ppl"
) -> tuple[list[int], list[int]]:
    """How often each segment is light among the ``top`` best and the ``top`` worst schedules."""
    order = ranked(rows, metric)
    top = min(top, len(order))
    best, worst = order[:top], order[len(order) - top :]

    def count(group):
        return [sum(1 for r in group if k in light_segments_of(r)) for k in range(n_segments)]

    return count(best), count(worst)

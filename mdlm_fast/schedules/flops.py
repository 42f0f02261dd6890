"""Analytic FLOPs of MDLM's DiT denoiser, per forward, per schedule, and as executed by a sampler.

Convention: one multiply-add = 2 FLOPs. Only the matrix products are counted; everything else is at
most linear in the hidden width per token and a rounding error next to them:

* Per block and token, linear layers: ``2 * (3 d^2 [qkv] + d^2 [attn out] + 2 r d^2 [MLP up+down])``
  = ``24 d^2`` for MLP ratio ``r = 4``.
* Per block and token, attention: ``2 L d`` for ``Q K^T`` plus ``2 L d`` for ``A V`` = ``4 L d``
  (independent of the number of heads).
* Head (output layer): ``2 d V`` per projected position.
* Not counted: embedding lookup, layer norms, rotary embedding, softmax inside attention, GELU,
  residual gates, adaLN modulation (``2 * cond_dim * 6d`` per *sequence* per block; with time
  conditioning off it is a per-model constant), the head's bias, and the vocabulary softmax/sampling
  after the head (elementwise, ``O(V)`` per position, no multiply-adds). Those are exactly the costs
  a FLOPs count hides but a profiler shows, which is why wall-clock is measured separately.

Counts are Python ints (exact; a paper-size run is ~1e16 FLOPs).

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from mdlm_fast.schedules.model_schedule import ModelSchedule, ScheduleError
from mdlm_fast.util.validate import integer

_FIELDS = ("hidden_dim", "n_blocks", "vocab_size")


def _count(value, name: str, allow_zero: bool = True) -> int:
    """A non-negative (or positive) int argument, with an error naming it."""
    return integer(name, value, minimum=0 if allow_zero else 1)


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a DiT denoiser that determine its FLOPs.

    ``n_heads`` and ``cond_dim`` do not enter the counts (attention FLOPs do not depend on the head
    split; adaLN is neglected) but are kept so a shape describes a model fully. Defaults are MDLM's.
    """

    hidden_dim: int
    n_blocks: int
    vocab_size: int
    n_heads: int = 12
    cond_dim: int = 128
    mlp_ratio: int = 4

    def __post_init__(self):
        for name in ("hidden_dim", "n_blocks", "vocab_size", "n_heads", "cond_dim", "mlp_ratio"):
            object.__setattr__(self, name, _count(getattr(self, name), name, allow_zero=False))

    @classmethod
    def of(cls, obj: Any) -> "ModelShape":
        """Shape of a model, a config object, or a config mapping (duck-typed).

        Tries, in order: a ``ModelShape``; ``obj.config`` then ``obj`` itself with attributes (or keys)
        ``hidden_dim``, ``n_blocks``, ``vocab_size`` (optional ``n_heads``, ``cond_dim``,
        ``mlp_ratio``); finally a module with MDLM parameter names (``blocks``, ``vocab_embed``).
        """
        if isinstance(obj, ModelShape):
            return obj
        for candidate in (getattr(obj, "config", None), obj):
            fields = _read_fields(candidate)
            if fields is not None:
                return cls(**fields)
        shape = _from_module(obj)
        if shape is not None:
            return shape
        raise TypeError(
            f"cannot read a model shape from {type(obj).__name__}: expected a ModelShape, a config with "
            "hidden_dim/n_blocks/vocab_size, or a model with such a .config"
        )


def _read_fields(obj: Any) -> Optional[Dict[str, Any]]:
    """The shape fields of a config object or mapping, or None if it lacks the required ones."""
    if obj is None:
        return None
    get = obj.get if isinstance(obj, Mapping) else (lambda k, d=None: getattr(obj, k, d))
    if any(get(k) is None for k in _FIELDS):
        return None
    fields = {k: get(k) for k in _FIELDS}
    for k in ("n_heads", "cond_dim", "mlp_ratio"):
        if get(k) is not None:
            fields[k] = get(k)
    return fields


def _from_module(obj: Any) -> Optional[ModelShape]:
    """Shape from MDLM parameter names: ``blocks`` (a list) and ``vocab_embed.embedding [V, d]``."""
    blocks = getattr(obj, "blocks", None)
    embedding = getattr(getattr(obj, "vocab_embed", None), "embedding", None)
    if blocks is None or embedding is None or len(getattr(embedding, "shape", ())) != 2:
        return None
    vocab_size, hidden_dim = (int(n) for n in embedding.shape)
    return ModelShape(hidden_dim=hidden_dim, n_blocks=len(blocks), vocab_size=vocab_size)


# ----------------------------------------------------------------------------------------------
# Per-forward formulas
# ----------------------------------------------------------------------------------------------


def block_flops(shape: Any, rows: int, length: int, last_block_queries: Optional[int] = None) -> int:
    """FLOPs of all Transformer blocks over ``rows`` sequences of ``length`` tokens.

    ``rows * length * n_blocks * ((8 + 4 r) d^2 + 4 length d)``; with ``r = 4``: ``24 d^2 + 4 L d``
    per token and block (linear layers + attention scores and mixing).

    ``last_block_queries``: the last block ran at that many positions only (``DiT.trunk(...,
    positions=)``): its key/value projections ``4 d^2`` still cover every token, while the query
    and output projections, attention and MLP, ``(4 + 4 r) d^2 + 4 L d``, cover the queries only.
    """
    shape = ModelShape.of(shape)
    rows, length = _count(rows, "rows"), _count(length, "length")
    d = shape.hidden_dim
    per_token = (8 + 4 * shape.mlp_ratio) * d * d + 4 * length * d
    if last_block_queries is None:
        return rows * length * shape.n_blocks * per_token
    queries = _count(last_block_queries, "last_block_queries")
    per_query = (4 + 4 * shape.mlp_ratio) * d * d + 4 * length * d
    return rows * length * ((shape.n_blocks - 1) * per_token + 4 * d * d) + queries * per_query


def head_flops(shape: Any, positions: int) -> int:
    """FLOPs of the output projection at ``positions`` positions: ``2 d V`` each (softmax not counted)."""
    shape = ModelShape.of(shape)
    return 2 * shape.hidden_dim * shape.vocab_size * _count(positions, "positions")


def forward_flops(shape: Any, rows: int, length: int, head_positions: Optional[int] = None) -> int:
    """Blocks plus head for one forward; the head covers all ``rows * length`` positions by default.

    Pass ``head_positions`` for a sampler that projects only some positions (e.g. the revealed ones).
    """
    positions = _count(rows, "rows") * _count(length, "length") if head_positions is None else head_positions
    return block_flops(shape, rows, length) + head_flops(shape, positions)


# ----------------------------------------------------------------------------------------------
# A whole schedule, reference-style
# ----------------------------------------------------------------------------------------------


def _schedule_totals(
    schedule: ModelSchedule,
    shapes: List[ModelShape],
    batch: int,
    length: int,
    noise_removal_model: Optional[int],
) -> Dict[str, Any]:
    """blocks/head/total FLOPs and forwards per model for a full-batch forward at every step."""
    forwards = list(schedule.counts()) + [0] * (len(shapes) - schedule.n_models)
    if noise_removal_model is not None:
        forwards[noise_removal_model] += 1
    blocks = sum(n * block_flops(shapes[k], batch, length) for k, n in enumerate(forwards))
    head = sum(n * head_flops(shapes[k], batch * length) for k, n in enumerate(forwards))
    return {"blocks": blocks, "head": head, "total": blocks + head, "per_model_forwards": tuple(forwards)}


def schedule_flops(
    schedule: ModelSchedule,
    shapes: Sequence[Any],
    batch: int,
    length: int,
    noise_removal_model: Optional[int] = None,
) -> Dict[str, Any]:
    """Analytic FLOPs of a reference-style sampler: every step one full-batch forward, full head.

    ``shapes[k]`` describes model ``k`` (anything :meth:`ModelShape.of` accepts). ``noise_removal_model``:
    model index of the extra final forward (MDLM's noise removal), or None to leave it out.

    Returns a dict with ``blocks``, ``head``, ``total`` (FLOPs), ``per_model_forwards`` (tuple, one
    entry per supplied model), ``head_fraction`` (``head / total``: the part of the work that depth
    does not scale, cf. eq. 4), ``predicted_saving`` (eq. 3: block counts only) and
    ``all_heavy_total`` (the FLOPs of the all-heavy schedule, same batch, length and noise removal:
    the baseline every saving is measured against) and ``analytic_saving`` (``1 - total /
    all_heavy_total``), which is smaller than the prediction by however much the head dilutes it.
    """
    shapes = [ModelShape.of(s) for s in shapes]
    if not shapes:
        raise ScheduleError("schedule_flops needs at least one model shape")
    schedule = ModelSchedule.coerce(schedule).validate_for(len(shapes))
    batch, length = _count(batch, "batch"), _count(length, "length")
    if noise_removal_model is not None and not 0 <= noise_removal_model < len(shapes):
        raise ScheduleError(f"noise_removal_model index {noise_removal_model} but {len(shapes)} model(s) supplied")

    result = _schedule_totals(schedule, shapes, batch, length, noise_removal_model)
    baseline = _schedule_totals(ModelSchedule.all_heavy(schedule.steps), shapes, batch, length, noise_removal_model)
    total = result["total"]
    result["head_fraction"] = result["head"] / total if total else 0.0
    result["predicted_saving"] = schedule.predicted_saving([s.n_blocks for s in shapes])
    result["all_heavy_total"] = baseline["total"]
    result["analytic_saving"] = 1.0 - total / baseline["total"] if baseline["total"] else 0.0
    return result


# ----------------------------------------------------------------------------------------------
# What a sampler actually ran
# ----------------------------------------------------------------------------------------------


class ExecutedFlops:
    """Mutable accumulator of the FLOPs a sampler actually executed.

    Call :meth:`add_trunk` for each trunk (blocks) forward with the number of rows it ran on, and
    :meth:`add_head` for each head projection with the number of positions it projected. Forwards
    over zero rows are not counted as forwards (nothing ran).
    """

    def __init__(self):
        self.blocks = 0
        self.head = 0
        self.head_positions = 0
        self.forwards: Dict[int, int] = {}
        self.rows: Dict[int, int] = {}

    @property
    def total(self) -> int:
        """Blocks plus head FLOPs."""
        return self.blocks + self.head

    def add_trunk(
        self, model_index: int, shape: Any, rows: int, length: int, last_block_queries: Optional[int] = None
    ) -> int:
        """Record one trunk forward of model ``model_index`` over ``rows`` rows; returns its FLOPs.

        ``last_block_queries``: see :func:`block_flops`."""
        model_index = _count(model_index, "model_index")
        flops = block_flops(shape, rows, length, last_block_queries)
        if rows:
            self.forwards[model_index] = self.forwards.get(model_index, 0) + 1
            self.rows[model_index] = self.rows.get(model_index, 0) + int(rows)
        self.blocks += flops
        return flops

    def add_head(self, shape: Any, positions: int) -> int:
        """Record a head projection at ``positions`` positions; returns its FLOPs."""
        flops = head_flops(shape, positions)
        self.head += flops
        self.head_positions += int(positions)
        return flops

    def _per_model(self, counts: Dict[int, int]) -> List[int]:
        """Dict keyed by model index -> list indexed by model index (0 where a model never ran)."""
        size = max(counts, default=-1) + 1
        return [counts.get(k, 0) for k in range(size)]

    def as_dict(self) -> Dict[str, Any]:
        """JSON-friendly summary; per-model counts as lists indexed by model index."""
        return {
            "blocks": self.blocks,
            "head": self.head,
            "total": self.total,
            "head_positions": self.head_positions,
            "forwards": self._per_model(self.forwards),
            "rows": self._per_model(self.rows),
        }

    def __repr__(self) -> str:
        return (
            f"ExecutedFlops(total={self.total:.3e}, blocks={self.blocks:.3e}, head={self.head:.3e}, "
            f"forwards={self._per_model(self.forwards)})"
        )


__all__ = [
    "ModelShape",
    "ExecutedFlops",
    "block_flops",
    "head_flops",
    "forward_flops",
    "schedule_flops",
]

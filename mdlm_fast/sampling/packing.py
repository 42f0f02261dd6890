"""The engine's packing policy: which sequences the next forward runs.

Every live sequence is ready for exactly one (model, length) group: the model of its next
non-empty step and its own length (the DiT attends over the whole row, so a forward runs rows of
one length: packing is by length bucket). A forward takes one group:

  * the largest group, capped at the row budget (ties: the group holding the oldest ready row),
    which keeps forwards full;
  * unless some row has waited ``patience`` forwards or more since it became ready: then the
    group of the oldest ready row, so nothing starves. A row that has waited ``patience``
    forwards runs within the next (older rows) forwards, each of which runs the oldest row left.

Inside the group, the oldest ready rows go first (by when they became ready, then request
handle, then row). The trade-off: a larger ``patience`` lets the minority model's rows collect
into fuller forwards at the cost of their latency; ``patience = 0`` is strict oldest-first.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdlm_fast.sampling.engine_state import RowState


@dataclass
class Pack:
    model_index: int
    length: int
    rows: list[RowState]


def _age_key(row: RowState) -> tuple[int, int, int]:
    return row.ready_since, row.request.handle, row.row


def group_of(row: RowState) -> tuple[int, int]:
    return row.request.model_at(row.next_step), row.request.length


def choose_pack(ready: list[RowState], max_rows: int, forward_count: int, patience: int) -> Pack | None:
    """The rows of the next forward, or None when nothing is ready."""
    if not ready:
        return None
    groups: dict[tuple[int, int], list[RowState]] = {}
    for row in ready:
        groups.setdefault(group_of(row), []).append(row)
    for rows in groups.values():
        rows.sort(key=_age_key)
    oldest_group = min(groups, key=lambda g: _age_key(groups[g][0]))
    if forward_count - groups[oldest_group][0].ready_since >= patience:
        chosen = oldest_group
    else:
        chosen = max(groups, key=lambda g: (min(len(groups[g]), max_rows), [-v for v in _age_key(groups[g][0])]))
    model_index, length = chosen
    return Pack(model_index, length, groups[chosen][:max_rows])

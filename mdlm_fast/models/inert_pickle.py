"""Read torch pickles without running anything they name: tensors come back, objects become records.

A pickle rebuilds objects by calling whatever globals it names, so ``torch.load(weights_only=False)``
on an untrusted file can run arbitrary code, and ``weights_only=True`` refuses the objects MDLM's
``.ckpt`` files do hold (an OmegaConf config, a pickled tokenizer). This unpickler resolves only an
allowlist of globals that build tensors and plain values. Every other global resolves to a stand-in
class: "calling" it (REDUCE, NEWOBJ) builds an :class:`InertRecord` holding the class's qualified
name, the constructor arguments, the ``__setstate__`` state and any list/dict items, exactly as the
pickle stored them. Nothing of the named class is imported or called, so the config and the mask
token can be read from the records as data.

Use it through :func:`load`, which hands the unpickler to ``torch.load`` as its ``pickle_module``
(torch's own wrapper still loads the tensor storages from the zip archive).
"""

from __future__ import annotations

import collections
import io
import pickle
import types
from typing import Any

import torch

__all__ = ["InertRecord", "load", "plain"]


class InertRecord:
    """An object the pickle asked to build, kept as data.

    ``qualname`` is ``module.name`` of the global the pickle named; ``args``/``kwargs`` are what it
    would have been called with, ``state`` what ``__setstate__`` would have received,
    ``list_items``/``dict_items`` what ``append``/``__setitem__`` would have received.
    """

    qualname = "?"
    args: tuple
    kwargs: dict
    state: Any
    list_items: list
    dict_items: dict

    def __new__(cls, *args: Any, **kwargs: Any) -> "InertRecord":
        record = object.__new__(cls)
        record.args, record.kwargs = args, kwargs
        record.state, record.list_items, record.dict_items = None, [], {}
        return record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ kept the arguments; REDUCE calls the class, so both must accept them

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.list_items.append(item)

    def extend(self, items: Any) -> None:
        self.list_items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.dict_items[key] = value

    def __call__(self, *args: Any, **kwargs: Any) -> "InertRecord":
        # A pickle may call what a REDUCE returned (getattr(cls, "method") then the method):
        # the call is recorded too, with the record it was made on as ``callee``.
        call = _CallRecord(*args, **kwargs)
        call.callee = self
        return call

    def attribute(self, name: str, default: Any = None) -> Any:
        """What ``obj.name`` would have been after ``__setstate__`` with a ``__dict__`` state
        (or a ``(dict, slots)`` pair)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}
        return state.get(name, default) if isinstance(state, dict) else default

    def __repr__(self) -> str:
        return f"InertRecord({self.qualname})"


class _CallRecord(InertRecord):
    qualname = "<call>"
    callee: InertRecord | None = None

    def __repr__(self) -> str:
        return f"InertRecord(call of {self.callee!r})"


def _rebuild_from_type_v2(func, new_type, args, state):
    # torch wraps tensor subclasses in this; only plain tensors and parameters are rebuilt.
    if new_type not in (torch.Tensor, torch.nn.Parameter) or func not in _TENSOR_REBUILDERS:
        return _stand_in("torch._tensor", "_rebuild_from_type_v2")(func, new_type, args, state)
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


def _encode(text, encoding="utf-8", *rest):
    # Protocol 2 pickles bytes as _codecs.encode(str, "latin1"); no other codec is looked up.
    if isinstance(text, str) and encoding in ("latin1", "latin-1") and not rest:
        return text.encode("latin1")
    return _stand_in("_codecs", "encode")(text, encoding, *rest)


# Functions that only rebuild tensors from storages torch has already read from the archive.
_TENSOR_REBUILDERS = {
    torch._utils._rebuild_tensor,
    torch._utils._rebuild_tensor_v2,
    torch._utils._rebuild_parameter,
    torch._utils._rebuild_parameter_with_state,
}
_ALLOWED: dict[tuple[str, str], Any] = {
    **{("torch._utils", f.__name__): f for f in _TENSOR_REBUILDERS},
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("_codecs", "encode"): _encode,
    ("torch", "Tensor"): torch.Tensor,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("builtins", t.__name__): t for t in (set, frozenset, complex, slice, range)},
}
_STAND_INS: dict[tuple[str, str], type] = {}


def _stand_in(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STAND_INS:
        # A class, not a function: NEWOBJ requires the pickle's "class" to be a type.
        _STAND_INS[key] = type(name, (InertRecord,), {"qualname": f"{module}.{name}", "__module__": __name__})
    return _STAND_INS[key]


class Unpickler(pickle.Unpickler):
    """A pickle.Unpickler that resolves only the allowlist; see the module doc."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        if module == "__builtin__":  # protocol 2 names builtins the Python 2 way
            return self.find_class("builtins", name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _stand_in(module, name)


def _pickle_load(file, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()


# What ``torch.load(pickle_module=...)`` uses: ``Unpickler`` and ``load``.
_PICKLE_MODULE: Any = types.ModuleType(f"{__name__}.pickle_module")
_PICKLE_MODULE.Unpickler = Unpickler
_PICKLE_MODULE.load = _pickle_load
_PICKLE_MODULE.loads = lambda data, **kwargs: _pickle_load(io.BytesIO(data), **kwargs)


def load(file) -> Any:
    """``torch.load`` of a zip-format torch file onto the CPU through the inert unpickler."""
    return torch.load(file, map_location="cpu", pickle_module=_PICKLE_MODULE, weights_only=False)


def plain(obj: Any, _depth: int = 0) -> Any:
    """Records of containers as plain dicts and lists: an OmegaConf ``DictConfig``/``ListConfig``
    (state ``_content``) and its value nodes (state ``_val``), dict and list subclasses (their
    items). Interpolations (``"${...}"``) stay strings; other records stay records."""
    if _depth > 64:  # a cyclic or absurdly deep structure: stop rather than recurse forever
        return obj
    nested = _depth + 1
    if isinstance(obj, InertRecord):
        if isinstance(obj.state, dict) and "_content" in obj.state:
            return plain(obj.state["_content"], nested)
        if isinstance(obj.state, dict) and "_val" in obj.state:
            return plain(obj.state["_val"], nested)
        if obj.dict_items:
            return {k: plain(v, nested) for k, v in obj.dict_items.items()}
        if obj.list_items:
            return [plain(v, nested) for v in obj.list_items]
        return obj
    if isinstance(obj, dict):
        return {k: plain(v, nested) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, nested) for v in obj]
    return obj

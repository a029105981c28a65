"""Plain per-feature dashboard data, with JSON and safetensors round-trips.

Everything the app and the exports draw comes from :class:`FeatureData`. It holds
Python numbers and lists only (no tensors), so it can be shipped to the UI, to JSON,
or packed into safetensors bytes for the memo layer.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load

#: 3: the metadata JSON keeps the order of every dict (a table's columns are shown in it);
#: 2 sorted the keys, so a feature read back from the memo showed its columns reordered
SCHEMA_VERSION = 3


@dataclass
class Histogram:
    """Bar heights over equal-width bins: ``len(edges) == len(counts) + 1``."""

    edges: list[float]
    counts: list[int]


@dataclass
class Example:
    """One highlighted context.

    Attributes:
        seq: sequence index in the token set.
        pos: position of the qualifying token in that sequence.
        value: the feature's activation at the qualifying token.
        start: position of the first shown token (the window is clipped at the edges).
        token_ids: ids of the shown tokens.
        tokens: their strings.
        acts: the feature's activation on each shown token.
        effects: optional per-token extras filled by later stages (e.g. loss effects).
    """

    seq: int
    pos: int
    value: float
    start: int
    token_ids: list[int]
    tokens: list[str]
    acts: list[float]
    effects: dict[str, Any] = field(default_factory=dict)

    @property
    def qualifying_index(self) -> int:
        """Index of the qualifying token inside the shown window."""
        return self.pos - self.start


@dataclass
class IntervalGroup:
    """Examples sampled from one activation interval ``(lo, hi]``."""

    lo: float
    hi: float
    n_active: int
    share: float
    examples: list[Example]


@dataclass
class Table:
    """A ranked table: indices with one or more value columns."""

    indices: list[int]
    columns: dict[str, list[float]]


@dataclass
class LogitTable:
    token_ids: list[int]
    tokens: list[str]
    values: list[float]


@dataclass
class FeatureData:
    """Everything a feature's dashboard shows."""

    index: int
    n_tokens: int
    n_active: int
    density: float
    max_act: float
    mean_act: float
    act_hist: Histogram
    logit_hist: Histogram
    top_logits: LogitTable
    bottom_logits: LogitTable
    neuron_alignment: Table
    correlated_neurons: Table
    correlated_features: Table
    top_examples: list[Example]
    intervals: list[IntervalGroup]
    decoder_norm: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    # --- signed dictionaries (projections on given directions) -----------------------
    # kept in ``extras`` (``min_act``, ``bottom_examples``) so that the bytes of every
    # non-negative feature stay as they were
    @property
    def signed(self) -> bool:
        """True for a feature whose activations can be negative (a given direction)."""
        return "bottom_examples" in self.extras

    @property
    def min_act(self) -> float:
        """The lowest activation (at most 0; 0 for non-negative features)."""
        return float(self.extras.get("min_act", 0.0))

    @property
    def bottom_examples(self) -> list[Example]:
        """The most negative examples, most negative first (empty unless :attr:`signed`)."""
        return [Example(**e) for e in self.extras.get("bottom_examples", [])]

    # --- JSON ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureData:
        def ex(e: dict[str, Any]) -> Example:
            return Example(**e)

        return cls(
            index=int(d["index"]),
            n_tokens=int(d["n_tokens"]),
            n_active=int(d["n_active"]),
            density=float(d["density"]),
            max_act=float(d["max_act"]),
            mean_act=float(d["mean_act"]),
            act_hist=Histogram(**d["act_hist"]),
            logit_hist=Histogram(**d["logit_hist"]),
            top_logits=LogitTable(**d["top_logits"]),
            bottom_logits=LogitTable(**d["bottom_logits"]),
            neuron_alignment=Table(**d["neuron_alignment"]),
            correlated_neurons=Table(**d["correlated_neurons"]),
            correlated_features=Table(**d["correlated_features"]),
            top_examples=[ex(e) for e in d["top_examples"]],
            intervals=[
                IntervalGroup(
                    lo=g["lo"],
                    hi=g["hi"],
                    n_active=g["n_active"],
                    share=g["share"],
                    examples=[ex(e) for e in g["examples"]],
                )
                for g in d["intervals"]
            ],
            decoder_norm=float(d.get("decoder_norm", 0.0)),
            extras=dict(d.get("extras", {})),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> FeatureData:
        return cls.from_dict(json.loads(text))

    # --- safetensors -----------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Pack as safetensors: long numeric lists become arrays, the rest JSON metadata.

        The layout is that of ``dataclasses.asdict`` with every list of at least 8 plain
        ``int`` (or ``int``/``float``) values moved into an array ``a<n>`` (numbered in field
        order); :func:`features_to_bytes` packs many at once.
        """
        packer = _Packer()
        skeleton = packer.pack(self)
        # one metadata key: safetensors writes several keys in hash order, which would make
        # the bytes differ between processes. Key order is kept, not sorted: the order of a
        # table's columns is the order they are shown in.
        skeleton["__schema__"] = SCHEMA_VERSION
        return _safetensors_bytes(packer.ints, packer.floats, _JSON.encode(skeleton))

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureData:
        arrays = st_load(data)
        meta = _safetensors_metadata(data)
        skeleton = json.loads(meta["feature"])
        schema = skeleton.pop("__schema__", None)
        if schema != SCHEMA_VERSION:
            raise ValueError(f"feature data schema {schema!r} != {SCHEMA_VERSION}")
        return cls.from_dict(_restore_arrays(skeleton, arrays))


def features_to_bytes(features: Iterable[FeatureData]) -> list[bytes]:
    """``[f.to_bytes() for f in features]``, with the garbage collector paused meanwhile
    (packing allocates many short-lived containers and no cycles)."""
    with gc_paused():
        return [f.to_bytes() for f in features]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many acyclic objects.

    Reference counting still frees everything; only the collector's passes over every
    live object, which building thousands of features triggers again and again (most of
    the cost of building and packing them), are put off until the end.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_REF = "__array__"
_MIN_ARRAY = 8
#: the types a list can hold and still be written to JSON as it is
_ATOMS = frozenset({str, int, float, bool, type(None)})
_INT = frozenset({int})
_NUMBER = frozenset({int, float})
_FIELDS: dict[type, tuple[str, ...] | None] = {}
_JSON = json.JSONEncoder(ensure_ascii=False)


def _field_names(cls: type) -> tuple[str, ...] | None:
    """The field names of a dataclass type (``None`` for any other type), cached."""
    if cls in _FIELDS:
        return _FIELDS[cls]
    names = (
        tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None
    )
    _FIELDS[cls] = names
    return names


class _Packer:
    """``dataclasses.asdict`` and the extraction of numeric lists in one pass, without
    asdict's deep copy.

    Lists of at least 8 values that are all ``int`` become int64 arrays, all ``int`` or
    ``float`` float64 arrays (``{"__array__": name[, "float": true]}`` in their place; names
    ``a0, a1, ...`` in the order met); lists of plain JSON values are written as they are.
    Tuples are converted as asdict converts them but never searched for arrays (as before).
    """

    def __init__(self) -> None:
        self.ints: list[tuple[str, list[int]]] = []
        self.floats: list[tuple[str, list[int | float]]] = []

    def pack(self, obj: Any) -> Any:
        cls = type(obj)
        if cls in _ATOMS:
            return obj
        if isinstance(obj, list):
            types = set(map(type, obj))
            if len(obj) >= _MIN_ARRAY:
                if types == _INT:
                    name = f"a{len(self.ints) + len(self.floats)}"
                    self.ints.append((name, obj))
                    return {_REF: name}
                if types <= _NUMBER:
                    name = f"a{len(self.ints) + len(self.floats)}"
                    self.floats.append((name, obj))
                    return {_REF: name, "float": True}
            if types <= _ATOMS:
                return obj
            return [self.pack(v) for v in obj]
        if isinstance(obj, dict):
            return {k: self.pack(v) for k, v in obj.items()}
        names = _field_names(cls)
        if names is not None:
            return {name: self.pack(getattr(obj, name)) for name in names}
        if isinstance(obj, tuple):
            return _plain(obj)
        return obj


def _plain(obj: Any) -> Any:
    """What ``dataclasses.asdict`` makes of a value, as far as JSON can tell."""
    names = _field_names(type(obj))
    if names is not None:
        return {name: _plain(getattr(obj, name)) for name in names}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _safetensors_bytes(
    ints: list[tuple[str, list[int]]], floats: list[tuple[str, list[int | float]]], meta: str
) -> bytes:
    """The bytes ``safetensors.numpy.save`` writes for 1-D int64 arrays ``ints`` and float64
    arrays ``floats`` with metadata ``{"feature": meta}``, built here in one go.

    The format: an 8-byte little-endian header length; a compact JSON header holding
    ``__metadata__`` first, then every tensor as ``{"dtype", "shape", "data_offsets"}``,
    int64 before float64 (safetensors orders dtypes by its own dtype codes, descending)
    and by name within a dtype; spaces up to a multiple of 8 bytes; then the tensors'
    little-endian data in that order. Writing it here packs all arrays of a dtype with one conversion and pins
    the layout (tested against ``safetensors.numpy.save``).
    """
    parts = ['{"__metadata__":{"feature":', json.dumps(meta, ensure_ascii=False), "}"]
    data: list[bytes] = []
    offset = 0
    for code, dtype, lists in (("I64", "<i8", ints), ("F64", "<f8", floats)):
        if not lists:
            continue
        ordered = sorted(lists, key=itemgetter(0))
        for name, values in ordered:
            end = offset + 8 * len(values)
            parts.append(
                f',"{name}":{{"dtype":"{code}","shape":[{len(values)}],'
                f'"data_offsets":[{offset},{end}]}}'
            )
            offset = end
        flat = np.array(list(chain.from_iterable(v for _, v in ordered)), dtype=dtype)
        data.append(flat.tobytes())
    parts.append("}")
    header = "".join(parts).encode()
    header += b" " * (-len(header) % 8)
    return b"".join([len(header).to_bytes(8, "little"), header, *data])


def _restore_arrays(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if _REF in obj:
            arr = arrays[obj[_REF]]
            # tolist() gives the same Python numbers when the dtype is the one written
            if obj.get("float"):
                return arr.tolist() if arr.dtype == np.float64 else [float(v) for v in arr]
            return arr.tolist() if arr.dtype == np.int64 else [int(v) for v in arr]
        return {k: _restore_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_arrays(v, arrays) for v in obj]
    return obj


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise ValueError("safetensors payload too short")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("safetensors header length out of range")
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__", {}))


@dataclass
class SweepInfo:
    """What a sweep covered, stored next to its features."""

    model: dict[str, Any]
    dictionary: dict[str, Any]
    dataset: dict[str, Any]
    config: dict[str, Any]
    n_sequences: int
    context_length: int
    n_tokens: int
    forward_passes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepInfo:
        return cls(**d)

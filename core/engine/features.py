"""Plain per-feature dashboard data, with JSON and safetensors round-trips.

Everything the app and the exports draw comes from :class:`FeatureData`. It holds
Python numbers and lists only (no tensors), so it can be shipped to the UI, to JSON,
or packed into safetensors bytes for the memo layer.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

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
        """Pack as safetensors: long numeric lists become arrays, the rest JSON metadata."""
        arrays: dict[str, np.ndarray] = {}
        skeleton = _extract_arrays(self.to_dict(), arrays)
        # one metadata key: safetensors writes several keys in hash order, which would make
        # the bytes differ between processes. Key order is kept, not sorted: the order of a
        # table's columns is the order they are shown in.
        skeleton["__schema__"] = SCHEMA_VERSION
        meta = {"feature": json.dumps(skeleton, ensure_ascii=False)}
        return st_save(arrays, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureData:
        arrays = st_load(data)
        meta = _safetensors_metadata(data)
        skeleton = json.loads(meta["feature"])
        schema = skeleton.pop("__schema__", None)
        if schema != SCHEMA_VERSION:
            raise ValueError(f"feature data schema {schema!r} != {SCHEMA_VERSION}")
        return cls.from_dict(_restore_arrays(skeleton, arrays))


_REF = "__array__"


def _extract_arrays(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Replace numeric lists of length >= 8 by references into ``arrays``."""
    if isinstance(obj, dict):
        return {k: _extract_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        if len(obj) >= 8 and all(type(v) is int for v in obj):
            name = f"a{len(arrays)}"
            arrays[name] = np.asarray(obj, dtype=np.int64)
            return {_REF: name}
        if len(obj) >= 8 and all(type(v) in (int, float) for v in obj):
            name = f"a{len(arrays)}"
            arrays[name] = np.asarray(obj, dtype=np.float64)
            return {_REF: name, "float": True}
        return [_extract_arrays(v, arrays) for v in obj]
    return obj


def _restore_arrays(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if _REF in obj:
            arr = arrays[obj[_REF]]
            return [float(v) for v in arr] if obj.get("float") else [int(v) for v in arr]
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

"""Plain per-feature dashboard data, with a JSON round-trip.

Everything the app and the exports draw comes from :class:`FeatureData`. It holds
Python numbers and lists only (no tensors), so it can be shipped to the UI or to JSON.
The memo stores a feature as its row of the sweep's columns instead
(:mod:`core.engine.rows`), which builds it back.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

#: the version of a feature's stored form (part of every memo key). 4: a feature is its row
#: of the sweep's columns (:mod:`core.engine.rows`); 3 was the dataclass packed as JSON with
#: its numeric lists as arrays
SCHEMA_VERSION = 4


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

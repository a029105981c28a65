"""Hand-built :class:`~core.engine.features.FeatureData` for the explain tests."""

from __future__ import annotations

from core.engine.features import (
    Example,
    FeatureData,
    Histogram,
    IntervalGroup,
    LogitTable,
    Table,
)


def example(tokens: list[str], acts: list[float], seq: int = 0) -> Example:
    """An example whose qualifying token is the one with the largest activation."""
    pos = max(range(len(acts)), key=lambda i: acts[i])
    return Example(
        seq=seq,
        pos=pos,
        value=acts[pos],
        start=0,
        token_ids=list(range(len(tokens))),
        tokens=tokens,
        acts=acts,
    )


def feature(
    index: int,
    top: list[Example],
    intervals: list[list[Example]] | None = None,
    logits: list[str] | None = None,
) -> FeatureData:
    """A feature with these examples; ``n_active`` is the number of top examples."""
    logits = logits or []
    empty = Table(indices=[], columns={})
    return FeatureData(
        index=index,
        n_tokens=1000,
        n_active=len(top),
        density=len(top) / 1000,
        max_act=max((e.value for e in top), default=0.0),
        mean_act=sum(e.value for e in top) / max(1, len(top)),
        act_hist=Histogram(edges=[0.0, 1.0], counts=[len(top)]),
        logit_hist=Histogram(edges=[0.0, 1.0], counts=[0]),
        top_logits=LogitTable(
            token_ids=list(range(len(logits))),
            tokens=logits,
            values=[float(-i) for i in range(len(logits))],
        ),
        bottom_logits=LogitTable(token_ids=[], tokens=[], values=[]),
        neuron_alignment=empty,
        correlated_neurons=empty,
        correlated_features=empty,
        top_examples=top,
        intervals=[
            IntervalGroup(lo=0.0, hi=1.0, n_active=len(g), share=0.5, examples=g)
            for g in intervals or []
        ],
    )


def returns_feature(index: int = 0) -> FeatureData:
    """Fires on " returns" after a newline; promotes " None" and " self"."""
    top = [
        example(["\n", " returns", " the", " value"], [0.0, 3.0 - 0.1 * k, 0.0, 0.0], seq=k)
        for k in range(4)
    ]
    top.append(example(["x", ",", " y"], [0.0, 2.0, 0.0], seq=9))
    interval = [
        example(["a", "\n", " returns", " it"], [0.0, 0.0, 1.0, 0.0], seq=20 + k) for k in range(4)
    ]
    return feature(index, top, [interval], logits=[" None", " self", " x"])

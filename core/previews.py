"""Short previews of computed features, for result tables that list many features."""

from __future__ import annotations

from core.engine.features import FeatureData


def feature_preview(fd: FeatureData, n: int = 3) -> dict[str, list[str]]:
    """What a result table shows of a computed feature: the distinct tokens it fires on
    most (the max token of its top examples, strongest first) and its top promoted tokens."""
    fires: list[str] = []
    for ex in fd.top_examples:
        q = ex.qualifying_index
        if 0 <= q < len(ex.tokens) and ex.tokens[q] not in fires:
            fires.append(ex.tokens[q])
        if len(fires) == n:
            break
    return {"fires_on": fires, "promotes": list(fd.top_logits.tokens[:n])}

"""Short previews of computed features, for result tables that list many features, and the
summary table built from them."""

from __future__ import annotations

from collections.abc import Iterable

from core.engine.features import FeatureData

#: tokens a preview lists
PREVIEW_TOKENS = 3


def feature_preview(fd: FeatureData, n: int = PREVIEW_TOKENS) -> dict[str, list[str]]:
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


#: columns of a summary table (one row per feature); the version is part of the stored
#: table's key, bumped when a column is added so an older table is rebuilt
SUMMARY_COLUMNS = (
    "feature",
    "density",
    "max_act",
    "mean_act",
    "n_active",
    "top_tokens",
    "fires_on",
)
SUMMARY_VERSION = 2


def summary_table(features: Iterable[FeatureData]) -> dict[str, list]:
    """The whole-dictionary table of the app's Features view and of a precompute output
    (one builder for both): :data:`SUMMARY_COLUMNS`, one entry per feature in the given
    order."""
    out: dict[str, list] = {k: [] for k in SUMMARY_COLUMNS}
    for fd in features:
        out["feature"].append(fd.index)
        out["density"].append(fd.density)
        out["max_act"].append(fd.max_act)
        out["mean_act"].append(fd.mean_act)
        out["n_active"].append(fd.n_active)
        out["top_tokens"].append(fd.top_logits.tokens[:PREVIEW_TOKENS])
        out["fires_on"].append(feature_preview(fd)["fires_on"])
    return out

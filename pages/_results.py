"""Result tables of the search pages: features listed with a short preview each.

A preview (the tokens a feature fires on most and the tokens it promotes most) is shown
only for features whose data is already computed: listing hundreds of features never
starts a computation.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core import charts
from core.feature_source import FeatureSource
from core.previews import feature_preview
from pages import _knowledge as knowledge
from pages import _links as links
from pages import _workspaces as workspaces

#: previews of the features of precomputed outputs, by (workspace identity, feature)
_STORED: dict[tuple[str, int], dict[str, list[str]]] = {}

PREVIEW_COLUMNS = {
    "fires_on": st.column_config.TextColumn(
        "fires on",
        help="The tokens this feature fires on most (the max token of its top examples); "
        "blank until the feature is computed.",
    ),
    "promotes": st.column_config.TextColumn(
        "promotes",
        help="The tokens whose logits its decoder direction raises most; blank until the "
        "feature is computed.",
    ),
}


def previews(ws: FeatureSource, indices: list[int]) -> dict[int, dict[str, list[str]]]:
    """Previews of those ``indices`` whose data is computed (nothing is computed here)."""
    if hasattr(ws, "previews"):  # a live workspace reads its memo
        return ws.previews(indices)
    held = getattr(ws, "features", None)  # a precomputed output lists what it holds
    if not isinstance(held, list):
        return {}
    have, ident, out = set(held), workspaces.identity(ws), {}
    for i in indices:
        if i not in have:
            continue
        if (ident, i) not in _STORED:
            try:
                _STORED[(ident, i)] = feature_preview(ws.feature(i))
            except Exception:  # a damaged entry: the feature page says what is wrong
                continue
        out[i] = _STORED[(ident, i)]
    return out


def with_previews(ws: FeatureSource, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with ``fires_on`` and ``promotes`` text for the computed features (blank
    for the others)."""
    got = previews(ws, [int(r["feature"]) for r in rows])
    out = []
    for r in rows:
        p = got.get(int(r["feature"]))
        out.append(
            {
                **r,
                "fires_on": charts.tokens_text(p["fires_on"]) if p else "",
                "promotes": charts.tokens_text(p["promotes"]) if p else "",
            }
        )
    return out


def feature_table(
    ws: FeatureSource,
    rows: list[dict[str, Any]],
    key: str,
    columns: dict[str, Any] | None = None,
    height: int | str = "auto",
    preview: bool = True,
) -> None:
    """Results with a ``feature`` column: click a row to open it here, or the link column
    to open it in a new tab. ``preview`` adds what each computed feature fires on and
    promotes."""
    if not rows:
        st.caption("no features")
        return
    if preview:
        rows = with_previews(ws, rows)
    df = pd.DataFrame(rows)
    df.insert(1, "open", [links.feature_href(ws, int(f)) for f in df["feature"]])
    named = knowledge.labels(ws, {int(f) for f in df["feature"]})  # one batched read
    if named:
        df.insert(2, "label", [named.get(int(f), "") for f in df["feature"]])
    config: dict[str, Any] = {
        "feature": st.column_config.NumberColumn("feature", format="%d", width="small"),
        "open": st.column_config.LinkColumn(
            "link", display_text="open ↗", width="small", help="open in a new tab"
        ),
        "label": st.column_config.TextColumn(
            "label", help="What people named the feature (edit it on the feature page)."
        ),
        **PREVIEW_COLUMNS,
        **(columns or {}),
    }
    event = st.dataframe(
        df,
        hide_index=True,
        column_config=config,
        on_select="rerun",
        selection_mode="single-row",
        key=key,
        height=height,
    )
    top = list(dict.fromkeys(int(f) for f in df["feature"]))[:4]
    if len(top) >= 2:
        st.markdown(
            f"[:material/compare_arrows: Compare the first {len(top)} side by side]"
            f"({links.compare_href(ws, top)})"
        )
    picked = event.selection.rows if event is not None else []
    if picked:
        links.open_feature(ws, int(df["feature"].iloc[picked[0]]))

"""The Altair scatter of the feature map (no torch: the page and exports can use it).

:func:`map_chart` draws the columns of :func:`core.feature_map.map_table`: one point per
drawn feature, coloured by density or max activation (log scale: both span orders of
magnitude) or by label, a tooltip with the index, label and top tokens, the searched
features drawn larger on top, and a click selection named :data:`SELECTION` on the
``feature`` field; :func:`picked_feature` reads it back from ``st.altair_chart``'s event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import altair as alt
import pandas as pd

SELECTION = "pick"
#: colourings :func:`map_chart` knows, and their legend titles
COLOURS = {"none": "feature", "density": "density", "max_act": "max activation", "label": "label"}


def colour_options(table: Mapping[str, list]) -> list[str]:
    """The colourings the table can show (``none`` always; the others when their column
    is there and holds values)."""
    return ["none"] + [
        c for c in ("density", "max_act", "label") if any(v for v in table.get(c, []))
    ]


def map_chart(
    table: Mapping[str, list],
    colour: str = "none",
    highlight: list[int] | tuple[int, ...] = (),
    title: str = "",
) -> alt.LayerChart:
    """A scatter of ``table`` (``feature``, ``x``, ``y`` and optional ``density``,
    ``max_act``, ``label``, ``top_tokens``) with a click selection on ``feature``."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colouring {colour!r}; use one of {', '.join(COLOURS)}")
    df = pd.DataFrame(dict(table))
    tips = [alt.Tooltip("feature:Q", title="feature")]
    for col, title_, fmt in (
        ("label", "label", None),
        ("fires_on", "fires on", None),
        ("top_tokens", "promotes", None),
        ("density", "density", ".2e"),
        ("max_act", "max activation", ".3f"),
    ):
        if col in df:
            kind = "N" if fmt is None else "Q"
            tips.append(alt.Tooltip(f"{col}:{kind}", title=title_, format=fmt or ""))
    pick = alt.selection_point(name=SELECTION, fields=["feature"], on="click")
    enc: dict[str, Any] = {}
    if colour in ("density", "max_act"):
        # zeros (dead features) have no place on a log scale: drawn grey
        df.loc[~(pd.to_numeric(df[colour], errors="coerce") > 0), colour] = None
        enc["color"] = alt.Color(
            f"{colour}:Q",
            title=COLOURS[colour],
            scale=alt.Scale(type="log", scheme="viridis"),
        )
    elif colour == "label":
        df["label"] = df["label"].replace("", None)
        enc["color"] = alt.Color("label:N", title="label", legend=None)
    base = (alt.Chart(df, title=title) if title else alt.Chart(df)).encode(
        x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None), tooltip=tips
    )
    points = base.mark_circle(size=14, opacity=0.7, color="#8a8f98").encode(**enc)
    points = points.add_params(pick)
    layers: list[alt.Chart] = [points]
    if highlight:
        shown = df[df["feature"].isin([int(h) for h in highlight])]
        ring = alt.Chart(shown).encode(x="x:Q", y="y:Q", tooltip=tips)
        layers.append(ring.mark_point(size=220, strokeWidth=2.5, color="#d6336c", filled=False))
    return alt.layer(*layers).properties(height=620).interactive()


def picked_feature(event: Any) -> int | None:
    """The feature clicked in ``st.altair_chart(..., on_select="rerun")``'s event (or its
    dict form), ``None`` when nothing is selected."""
    if event is None:
        return None
    selection = event.get("selection", {}) if isinstance(event, Mapping) else event.selection
    points = (selection or {}).get(SELECTION) or []
    for point in points:
        value = point.get("feature") if isinstance(point, Mapping) else None
        if value is not None:
            return int(value)
    return None

"""Direct feature attribution (``extras["dfa"]``, :mod:`core.engine.dfa`) for people: a bar
chart over an example's source positions and the example's text with its strongest sources
highlighted (escaped HTML), shared by the Feature page and the standalone HTML export."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

from core.charts import NEG_COLOR, POS_COLOR, esc, visible_token
from core.engine.features import Example, FeatureData

#: sources highlighted in the text of each example
N_STRONG = 3

DFA_CSS = """
.fs-dfa-src{border-radius:3px;padding:1px 0;position:relative}
.fs-dfa-dest{outline:1.5px solid #1a202c;font-weight:600;border-radius:3px}
.fs-dfa-note{color:#718096;font-size:11px;margin:0 0 8px 4px}
"""


def dfa_pairs(fd: FeatureData) -> list[tuple[Example, dict[str, Any]]]:
    """The top examples that carry an attribution, each with it (empty for any dictionary
    that does not read an attention output)."""
    dfa = fd.extras.get("dfa") or []
    return [(ex, d) for ex, d in zip(fd.top_examples, dfa, strict=False) if d]


def _label(ex: Example, j: int) -> str:
    return f"{ex.start + j}: {visible_token(ex.tokens[j])}"


def dfa_frame(ex: Example, dfa: dict[str, Any]) -> pd.DataFrame:
    """One row per source position ``start..pos``: its contribution and strongest heads."""
    rows = []
    for k, value in enumerate(dfa["sources"]):
        j = dfa["start"] + k - ex.start
        heads = ", ".join(
            f"head {h}: {v:+.3f}"
            for h, v in zip(dfa["heads"][k], dfa["head_values"][k], strict=True)
        )
        rows.append(
            {
                "order": k,
                "source": _label(ex, j) if 0 <= j < len(ex.tokens) else str(dfa["start"] + k),
                "contribution": float(value),
                "heads": heads,
            }
        )
    return pd.DataFrame(rows, columns=["order", "source", "contribution", "heads"])


def dfa_chart(ex: Example, dfa: dict[str, Any]) -> alt.Chart:
    """Bars over the source positions of one example's destination token."""
    frame = dfa_frame(ex, dfa)
    j = dfa["pos"] - ex.start
    dest = visible_token(ex.tokens[j]) if 0 <= j < len(ex.tokens) else str(dfa["pos"])
    return (
        alt.Chart(frame, title=f"Contributions to the pre-activation at {dest!r}")
        .mark_bar()
        .encode(
            x=alt.X("source:N", sort=alt.SortField("order"), title="source token"),
            y=alt.Y("contribution:Q", title="contribution"),
            color=alt.condition(
                alt.datum.contribution >= 0, alt.value(POS_COLOR), alt.value(NEG_COLOR)
            ),
            tooltip=["source", alt.Tooltip("contribution:Q", format="+.4f"), "heads"],
        )
        .properties(height=220)
    )


def _strong_bg(value: float, scale: float) -> str:
    if scale <= 0 or value == 0:
        return "transparent"
    a = 0.15 + 0.7 * min(1.0, abs(value) / scale)
    return f"rgba(43,108,176,{a:.3f})" if value > 0 else f"rgba(197,48,48,{a:.3f})"


def dfa_example_html(ex: Example, dfa: dict[str, Any], n_strong: int = N_STRONG) -> str:
    """The example's text, its ``n_strong`` strongest sources highlighted (blue adds to the
    feature, red takes away), the destination outlined; the sum below."""
    sources = dfa["sources"]
    ranked = sorted(range(len(sources)), key=lambda k: -abs(sources[k]))[:n_strong]
    scale = max((abs(sources[k]) for k in ranked), default=0.0)
    strong = {dfa["start"] + k: sources[k] for k in ranked if sources[k] != 0}
    parts = [f'<span class="fs-meta">seq {ex.seq}</span>']
    for j, tok in enumerate(ex.tokens):
        pos = ex.start + j
        text = esc(visible_token(tok))
        if pos == dfa["pos"]:
            parts.append(f'<span class="fs-dfa-dest" title="destination">{text}</span>')
        elif pos in strong:
            tip = esc(f"position {pos}: contribution {strong[pos]:+.4f}")
            bg = _strong_bg(strong[pos], scale)
            parts.append(
                f'<span class="fs-dfa-src" style="background:{bg}" title="{tip}">{text}</span>'
            )
        else:
            parts.append(f"<span>{text}</span>")
    note = (
        f"pre-activation {dfa['pre']:+.4f} = sources shown {sum(sources):+.4f} + earlier "
        f"sources {dfa['outside']:+.4f} + bias {dfa['const']:+.4f}"
    )
    return f'<div class="fs-ex">{"".join(parts)}</div><div class="fs-dfa-note">{esc(note)}</div>'


def dfa_examples_html(fd: FeatureData) -> str:
    """Every top example with its strongest sources highlighted ("" when there is none)."""
    pairs = dfa_pairs(fd)
    if not pairs:
        return ""
    head = (
        '<div class="fs-group">Direct feature attribution <small>the source tokens whose '
        "attention output most moved the feature at the outlined token</small></div>"
    )
    return head + "".join(dfa_example_html(ex, d) for ex, d in pairs)

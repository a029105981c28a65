"""Chart and table builders shared by the app and the HTML export.

Charts are Altair specifications built from :class:`~core.engine.features.FeatureData`
only; HTML fragments (highlighted examples, tables) are strings in which every piece
of text that came from data (token strings, labels) is escaped. The app shows the
same objects the exported page embeds, so both look alike.
"""

from __future__ import annotations

import html
import math
from typing import Any

import altair as alt
import pandas as pd

from core.engine.features import Example, FeatureData, Histogram, LogitTable, Table

POS_COLOR = "#2b6cb0"
NEG_COLOR = "#c53030"
ACT_RGB = (234, 88, 12)  # orange: feature activation highlight
NEG_RGB = (37, 99, 235)  # blue: negative activation of a signed feature (a given direction)

#: dashboard components, in their default order (the layout control picks from these)
COMPONENTS = [
    "summary",
    "act_hist",
    "logit_hist",
    "logit_tables",
    "neuron_alignment",
    "correlated_neurons",
    "correlated_features",
    "top_examples",
    "intervals",
    "extras",
]


# ---- Altair charts -------------------------------------------------------------------------------
def parse_layout(layout: str | list[str] | tuple[str, ...] | None) -> tuple[list[str], list[str]]:
    """A dashboard layout (``"summary,act_hist"`` or a list) as ``(known, unknown)``: the
    names of :data:`COMPONENTS` in the given order without repeats, and the other names.
    ``None`` is every component. The app shows the known ones and says which were
    unknown; the HTML export and the runner refuse unknown ones."""
    if layout is None:
        return list(COMPONENTS), []
    names = layout.split(",") if isinstance(layout, str) else list(layout)
    names = [str(n).strip() for n in names if str(n).strip()]
    known = [n for n in dict.fromkeys(names) if n in COMPONENTS]
    return known, [n for n in names if n not in COMPONENTS]


def _hist_frame(h: Histogram) -> pd.DataFrame:
    lo = h.edges[:-1]
    hi = h.edges[1:]
    return pd.DataFrame(
        {
            "lo": lo,
            "hi": hi,
            "count": h.counts,
            "mid": [(a + b) / 2 for a, b in zip(lo, hi, strict=True)],
        }
    )


def activation_histogram(
    fd: FeatureData, width: int | str = "container", height: int = 160
) -> alt.Chart:
    """Histogram of the feature's non-zero activations, bins ``(lo, hi]`` up to the max."""
    df = _hist_frame(fd.act_hist)
    title = f"Activation density {fd.density:.3%} (non-zero activations)"
    return (
        alt.Chart(df, title=title)
        .mark_bar(color="#ea580c")
        .encode(
            x=alt.X("lo:Q", title="activation", bin="binned"),
            x2="hi:Q",
            y=alt.Y("count:Q", title="tokens"),
            tooltip=[
                alt.Tooltip("lo:Q", format=".3f", title="from"),
                alt.Tooltip("hi:Q", format=".3f", title="to"),
                alt.Tooltip("count:Q", title="tokens"),
            ],
        )
        .properties(width=width, height=height)
    )


def logit_histogram(
    fd: FeatureData, width: int | str = "container", height: int = 160
) -> alt.Chart:
    """Histogram of the decoder direction's logit effect over the whole vocabulary."""
    df = _hist_frame(fd.logit_hist)
    df["sign"] = ["negative" if m < 0 else "positive" for m in df["mid"]]
    return (
        alt.Chart(df, title="Logit effect over the vocabulary")
        .mark_bar()
        .encode(
            x=alt.X("lo:Q", title="logit effect", bin="binned"),
            x2="hi:Q",
            y=alt.Y("count:Q", title="tokens"),
            color=alt.Color(
                "sign:N",
                scale=alt.Scale(domain=["negative", "positive"], range=[NEG_COLOR, POS_COLOR]),
                legend=None,
            ),
            tooltip=[
                alt.Tooltip("lo:Q", format=".3f", title="from"),
                alt.Tooltip("hi:Q", format=".3f", title="to"),
                alt.Tooltip("count:Q", title="tokens"),
            ],
        )
        .properties(width=width, height=height)
    )


def density_overview(
    summary: dict[str, list], width: int | str = "container", height: int = 200
) -> alt.Chart:
    """Log10 density of every feature in the dictionary (dead features counted apart):
    each bar counts the features whose density falls in its bin."""
    dens = [d for d in summary["density"] if d > 0]
    df = pd.DataFrame({"log10_density": [math.log10(d) for d in dens]})
    dead = len(summary["density"]) - len(dens)
    bins = alt.Bin(maxbins=50)
    return (
        alt.Chart(df, title=f"Feature density (log10); {plural(dead, 'dead feature')} not shown")
        .mark_bar(color="#4a5568")
        .encode(
            x=alt.X("log10_density:Q", bin=bins, title="log10 density (share of tokens active)"),
            y=alt.Y("count():Q", title="features"),
            tooltip=[
                alt.Tooltip("log10_density:Q", bin=bins, title="log10 density", format=".2f"),
                alt.Tooltip("count():Q", title="features"),
            ],
        )
        .properties(width=width, height=height)
    )


# ---- HTML fragments --------------------------------------------------------------------------------
CSS = """
.fs-ex{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px;line-height:1.9;
 margin:2px 0;padding:2px 4px;border-bottom:1px solid #edf2f7;white-space:pre-wrap;word-break:break-all}
.fs-tok{position:relative;border-radius:3px;padding:1px 0;cursor:default}
.fs-tok.fs-q{outline:1.5px solid #1a202c;font-weight:600}
.fs-tok .fs-tip{visibility:hidden;opacity:0;position:absolute;z-index:10;left:0;top:1.8em;min-width:150px;
 background:#1a202c;color:#f7fafc;padding:4px 6px;border-radius:4px;font-size:12px;line-height:1.4;
 white-space:pre;transition:opacity .1s}
.fs-tok:hover .fs-tip{visibility:visible;opacity:1}
.fs-meta{color:#718096;font-size:11px;margin-right:6px}
.fs-table{border-collapse:collapse;font-size:13px;margin:2px 0 8px 0}
.fs-table td,.fs-table th{padding:2px 8px;border-bottom:1px solid #edf2f7;text-align:left}
.fs-table th{color:#4a5568;font-weight:600}
.fs-pos{color:#2b6cb0}.fs-neg{color:#c53030}
.fs-group{margin:10px 0 4px 0;font-weight:600;color:#2d3748;font-size:14px}
.fs-group small{font-weight:400;color:#718096}
"""


def esc(text: Any) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(text), quote=True)


def visible_token(tok: str) -> str:
    """Token text with whitespace made visible, for display (escape separately)."""
    return (
        tok.replace("\n", "↵").replace("\t", "⇥")
        if tok.strip()
        else tok.replace(" ", "·").replace("\n", "↵")
    )


def _bg(act: float, max_act: float, min_act: float = 0.0) -> str:
    if act < 0 and min_act < 0:  # signed features: negative values in blue, scaled by min
        a = min(1.0, act / min_act)
        r, g, b = NEG_RGB
        return f"rgba({r},{g},{b},{0.12 + 0.78 * a:.3f})"
    if act <= 0 or max_act <= 0:
        return "transparent"
    a = min(1.0, act / max_act)
    r, g, b = ACT_RGB
    return f"rgba({r},{g},{b},{0.12 + 0.78 * a:.3f})"


def example_html(
    ex: Example, max_act: float, extra_lines: list[str] | None = None, min_act: float = 0.0
) -> str:
    """One highlighted context; hovering a token shows token, activation and position.
    ``min_act < 0`` (a signed feature) shades negative activations too."""
    parts = [f'<span class="fs-meta">seq {ex.seq}</span>']
    q = ex.qualifying_index
    for j, (tok, act) in enumerate(zip(ex.tokens, ex.acts, strict=True)):
        pos = ex.start + j
        tip = f"token {tok!r}\nactivation {act:.4f}\nposition {pos}"
        eff = ex.effects.get("per_token") if ex.effects else None
        if eff and j < len(eff) and eff[j]:
            tip += "\n" + str(eff[j])
        cls = "fs-tok fs-q" if j == q else "fs-tok"
        parts.append(
            f'<span class="{cls}" style="background:{_bg(act, max_act, min_act)}" data-act="{act:.4f}" data-pos="{pos}">'
            f'{esc(visible_token(tok))}<span class="fs-tip">{esc(tip)}</span></span>'
        )
    for line in extra_lines or []:
        parts.append(f'<span class="fs-meta">{esc(line)}</span>')
    return f'<div class="fs-ex">{"".join(parts)}</div>'


def examples_html(
    examples: list[Example], max_act: float, title: str | None = None, min_act: float = 0.0
) -> str:
    head = f'<div class="fs-group">{esc(title)}</div>' if title else ""
    if not examples:
        return head + '<div class="fs-meta">no examples</div>'
    return head + "".join(example_html(e, max_act, min_act=min_act) for e in examples)


def signed_examples_html(fd: FeatureData, a: int = 0, b: int | None = None) -> str:
    """A signed feature's most positive and most negative examples (``[a:b]`` of each)."""
    return examples_html(
        fd.top_examples[a:b], fd.max_act, "Most positive", min_act=fd.min_act
    ) + examples_html(fd.bottom_examples[a:b], fd.max_act, "Most negative", min_act=fd.min_act)


def plural(n: int, word: str) -> str:
    """``"1 token"``, ``"2 tokens"``, ``"1,024 tokens"``."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def intervals_html(fd: FeatureData) -> str:
    """Interval groups, strongest first; bins without any activation are left out and
    counted in a closing note."""
    out = []
    empty = 0
    for g in reversed(fd.intervals):
        if g.n_active == 0 and not g.examples:
            empty += 1
            continue
        title = f"Interval ({g.lo:.3f}, {g.hi:.3f}]"
        if fd.signed:  # intervals of a signed feature are over |activation|
            title = f"|activation| in ({g.lo:.3f}, {g.hi:.3f}]"
        sub = f" {plural(g.n_active, 'token')}, {g.share:.2%} of activations"
        out.append(
            f'<div class="fs-group">{esc(title)}<small>{esc(sub)}</small></div>'
            + (
                "".join(example_html(e, fd.max_act, min_act=fd.min_act) for e in g.examples)
                or '<div class="fs-meta">no examples</div>'
            )
        )
    if empty:
        were = "was" if empty == 1 else "were"
        out.append(
            f'<div class="fs-meta fs-empty-bins">{plural(empty, "empty interval")} of '
            f"{len(fd.intervals)} {were} not shown (no activation in that range)</div>"
        )
    return "".join(out)


def logit_table_html(top: LogitTable, bottom: LogitTable) -> str:
    rows = []
    for j in range(max(len(top.tokens), len(bottom.tokens))):
        neg = (
            f'<td>{esc(visible_token(bottom.tokens[j]))}</td><td class="fs-neg">{bottom.values[j]:+.3f}</td>'
            if j < len(bottom.tokens)
            else "<td></td><td></td>"
        )
        pos = (
            f'<td>{esc(visible_token(top.tokens[j]))}</td><td class="fs-pos">{top.values[j]:+.3f}</td>'
            if j < len(top.tokens)
            else "<td></td><td></td>"
        )
        rows.append(f"<tr>{neg}{pos}</tr>")
    return (
        '<table class="fs-table"><tr><th>negative logits</th><th></th><th>positive logits</th><th></th></tr>'
        + "".join(rows)
        + "</table>"
    )


#: display names of table columns: correlated neurons and features are measured on
#: activations over the swept tokens (unlike the nearest features by decoder cosine)
COLUMN_TITLES = {
    "pearson": "activation pearson",
    "cosine": "activation cosine",
    "l1_share": "l1 share",
}
COLUMN_HELP = {
    "pearson": "Pearson correlation of the two activations over the swept tokens",
    "cosine": "cosine similarity of the two activation vectors over the swept tokens",
    "l1_share": "share of the decoder row's L1 norm",
}


def table_html(
    table: Table, index_name: str, link: str | None = None, names: dict[int, str] | None = None
) -> str:
    """A ranked table; ``link`` (e.g. ``"?feature={}"``) makes indices links, ``names``
    (index -> label) are shown next to them, escaped. Column names are shown as
    :data:`COLUMN_TITLES` says, with :data:`COLUMN_HELP` on hover."""
    if not table.indices:
        return '<div class="fs-meta">none</div>'
    cols = list(table.columns)
    head = f"<th>{esc(index_name)}</th>" + "".join(
        f'<th title="{esc(COLUMN_HELP.get(c, c))}">{esc(COLUMN_TITLES.get(c, c))}</th>'
        for c in cols
    )
    rows = []
    for j, idx in enumerate(table.indices):
        cell = f'<a href="{esc(link.format(idx))}" target="_self">{idx}</a>' if link else str(idx)
        if names and idx in names:
            cell += f' <span class="fs-label">{esc(names[idx])}</span>'
        vals = "".join(f"<td>{table.columns[c][j]:+.3f}</td>" for c in cols)
        rows.append(f"<tr><td>{cell}</td>{vals}</tr>")
    return f'<table class="fs-table"><tr>{head}</tr>{"".join(rows)}</table>'


def summary_html(fd: FeatureData) -> str:
    return (
        '<table class="fs-table">'
        f"<tr><th>density</th><td>{fd.density:.4%}</td><th>active tokens</th><td>{fd.n_active:,}</td></tr>"
        f"<tr><th>max activation</th><td>{fd.max_act:.4f}</td><th>mean (active)</th><td>{fd.mean_act:.4f}</td></tr>"
        f"<tr><th>decoder norm</th><td>{fd.decoder_norm:.4f}</td><th>tokens swept</th><td>{fd.n_tokens:,}</td></tr>"
        "</table>"
    )


# ---- additions for the app ---------------------------------------------------------------------------
def tokens_html(tokens: list[str], acts: list[float], max_act: float | None = None) -> str:
    """A user's text highlighted by one feature's activation (same hover as examples).

    ``max_act`` sets the colour scale (e.g. the feature's max over the dataset, so the
    colours compare with the examples); the text's own max is used when it is ``None``.
    """
    scale = max_act if max_act and max_act > 0 else max([a for a in acts if a > 0], default=0.0)
    parts = []
    for pos, (tok, act) in enumerate(zip(tokens, acts, strict=True)):
        tip = f"token {tok!r}\nactivation {act:.4f}\nposition {pos}"
        parts.append(
            f'<span class="fs-tok" style="background:{_bg(act, scale)}" data-act="{act:.4f}" data-pos="{pos}">'
            f'{esc(visible_token(tok))}<span class="fs-tip">{esc(tip)}</span></span>'
        )
    return f'<div class="fs-ex">{"".join(parts)}</div>'


def effects_summary_html(summary: dict[str, Any]) -> str:
    """The exact-effects summary (``extras["effects"]``) as sentences, not JSON."""
    lines = []
    method = summary.get("method", "exact ablation")
    where = summary.get("write_hook")
    lines.append(f"Effects: {method}" + (f" at {where}" if where else ""))
    mean = summary.get("mean_loss_qualifying")
    if mean is not None:
        lines.append(
            f"mean loss effect at the max token {float(mean):+.4f} (positive: the feature helps)"
        )
    if summary.get("k"):
        lines.append(f"the {summary['k']} tokens most raised / lowered are in each token's hover")
    if summary.get("scope"):
        lines.append(str(summary["scope"]))
    if summary.get("legend"):
        lines.append(str(summary["legend"]))
    return "".join(f'<div class="fs-meta fs-effects-line">{esc(t)}</div>' for t in lines)


def extras_html(extras: dict[str, Any]) -> str:
    """A feature's extras for people: the effects summary as sentences, a cross-layer
    transcoder's decoder norms per target layer as a table, anything else as short text."""
    parts = []
    rest = dict(extras)
    effects = rest.pop("effects", None)
    rest.pop("dfa", None)  # drawn on its own (core.charts_dfa)
    rest.pop("bottom_examples", None)  # drawn with the top examples (signed features)
    layers = rest.pop("decoder_layers", None)
    norms = rest.pop("decoder_norms_by_layer", None)
    if layers is not None and norms is not None:
        rows = "".join(
            f"<tr><td>{esc(layer)}</td><td>{float(n):.4f}</td></tr>"
            for layer, n in zip(layers, norms, strict=False)
        )
        parts.append(
            '<table class="fs-table"><tr><th>target layer</th><th>decoder norm</th></tr>'
            f"{rows}</table>"
        )
    elif layers is not None or norms is not None:
        rest.update({"decoder_layers": layers} if layers is not None else {})
        rest.update({"decoder_norms_by_layer": norms} if norms is not None else {})
    if rest:
        rows = "".join(
            f"<tr><th>{esc(k.replace('_', ' '))}</th><td>{esc(_short_text(v))}</td></tr>"
            for k, v in rest.items()
        )
        parts.append(f'<table class="fs-table">{rows}</table>')
    if isinstance(effects, dict):
        parts.append(effects_summary_html(effects))
    return "".join(parts)


def _short_text(v: Any, limit: int = 300) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple) and all(isinstance(x, int | float) for x in v):
        text = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v)
    else:
        text = str(v)
    return text if len(text) <= limit else text[:limit] + "…"


def tokens_text(tokens: list[str]) -> str:
    """Tokens for a table cell: whitespace made visible, quoted, space-separated."""
    return " ".join(repr(visible_token(t)) for t in tokens)

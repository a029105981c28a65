"""Standalone HTML dashboards: one self-contained file that opens offline.

The page shows, for one or several features, the components of the app's feature
page (:data:`core.charts.COMPONENTS`): summary, activation and logit histograms
(Vega-Lite charts), logit tables, neuron alignment, correlated neurons and
features, top examples and interval groups with highlighted tokens whose hover
details use the CSS tooltips of :data:`core.charts.CSS`.

Size is kept small by sharing everything that can be shared:

* the Vega / Vega-Lite / vega-embed JavaScript (from ``vl_convert``, no CDN) is
  inlined **once** per file, by default gzip-compressed and base64-encoded (about
  0.4 MB instead of 0.9 MB) and unpacked in the browser with ``DecompressionStream``;
* each chart type's Vega-Lite specification is embedded once as a template; the
  charts are built in the browser from each feature's bin edges and counts;
* feature data is embedded once as compact JSON: token strings go into one table
  shared by all features, examples refer to it by position, activations are rounded
  to 4 decimals;
* the small tables (summary, logits, alignment, correlations) are rendered in Python
  by the same functions the app uses (:mod:`core.charts`), so they look the same.

Safety: every string that came from data (tokens, labels, meta values) is either
escaped in Python (:func:`core.charts.esc`) or inserted in the browser with
``textContent``, never as markup. JSON embedded in ``<script>`` elements has ``<``,
``>``, ``&`` and the line separators escaped as ``\\uXXXX``, so no token can close
the script element or open a comment.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import hashlib
import importlib.resources
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from core import charts, charts_dfa
from core.charts import COMPONENTS, esc, parse_layout, visible_token
from core.engine.features import Example, FeatureData, Histogram
from core.export import ExportError
from core.export.map_html import MapExport, map_spec
from core.export.notes import notes_html
from core.settings import data_dir
from core.storage import atomic_write

JsMode = Literal["gzip", "plain"]

#: section headings, one per component
TITLES = {
    "summary": "Summary",
    "act_hist": "Activation density",
    "logit_hist": "Logit effects",
    "logit_tables": "Top and bottom logits",
    "neuron_alignment": "Neuron alignment (decoder weights)",
    "correlated_neurons": "Correlated neurons",
    "correlated_features": "Correlated features",
    "top_examples": "Top activations",
    "intervals": "Activation intervals",
    "extras": "Extras",
}
_CHART_FIELDS = {"lo", "hi", "count", "mid", "sign"}


# ---- the shared JavaScript ------------------------------------------------------------------
def _bundle_cache_dir() -> Path:
    return data_dir() / "vega"


@functools.lru_cache(maxsize=2)
def vega_bundle(mode: JsMode = "gzip") -> str:
    """The vega-embed + Vega-Lite + Vega bundle from ``vl_convert``.

    ``"plain"`` returns the JavaScript source; ``"gzip"`` returns it gzip-compressed
    (fixed timestamp, so the output is reproducible) and base64-encoded. Building the
    bundle takes a few seconds, so the result is cached per process and on disk under
    ``cache/vega/`` (or ``$FEATURESCOPE_DATA_DIR/vega/``), keyed by the vl-convert
    version; an unwritable cache directory only costs time.
    """
    if mode not in ("gzip", "plain"):
        raise ExportError(f"js must be 'gzip' or 'plain', got {mode!r}")
    try:
        import vl_convert
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ExportError(
            "HTML export needs the vl-convert-python package (pip install vl-convert-python)"
        ) from exc
    version = getattr(vl_convert, "__version__", "unknown")
    cache = _bundle_cache_dir() / f"vl-convert-{version}.{'js' if mode == 'plain' else 'js.gz.b64'}"
    text: str | None = None
    with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
        digest, body = cache.read_text(encoding="utf-8").split("\n", 1)
        if hashlib.sha256(body.encode("utf-8")).hexdigest() == digest:
            text = body  # a damaged cache file is rebuilt
    if not text:
        js = vl_convert.javascript_bundle()
        if mode == "plain":
            text = js
        else:
            packed = gzip.compress(js.encode("utf-8"), compresslevel=9, mtime=0)
            text = base64.b64encode(packed).decode("ascii")
        with contextlib.suppress(OSError):
            atomic_write(cache, hashlib.sha256(text.encode()).hexdigest() + "\n" + text)
    if mode == "plain" and ("</script" in text.lower() or "<!--" in text):
        raise ExportError(
            "this vl-convert bundle contains '</script' or '<!--' and cannot be inlined "
            "as plain text; use js='gzip'"
        )
    return text


# ---- JSON in <script> ------------------------------------------------------------------------
def script_json(obj: Any) -> str:
    """Compact JSON that is safe inside a ``<script type="application/json">`` element.

    ``<``, ``>`` and ``&`` only occur inside JSON strings, where ``\\u003c`` etc. mean
    the same characters to ``JSON.parse``; escaping them rules out ``</script>`` and
    ``<!--`` in the element's text. U+2028/U+2029 are escaped for good measure.
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


# ---- compact per-feature data ------------------------------------------------------------------
def _num(v: float, digits: int = 4) -> float | int:
    """Round for the page; zero (and -0.0) become the integer 0 (one byte in JSON)."""
    if not math.isfinite(v):
        return 0
    r = round(float(v), digits)
    return r if r else 0


def _sig(v: float) -> float | int:
    """Six significant digits (bin edges)."""
    if not math.isfinite(v):
        return 0
    r = float(f"{float(v):.6g}")
    return r if r else 0


class _Tokens:
    """Token strings shared by every feature of the page: ``[visible text, repr]``."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.table: list[list[str]] = []

    def ref(self, tok: str) -> int:
        got = self.index.get(tok)
        if got is None:
            got = len(self.table)
            self.index[tok] = got
            self.table.append([visible_token(tok), repr(tok)])
        return got


def _example(ex: Example, toks: _Tokens) -> list[Any]:
    row: list[Any] = [
        ex.seq,
        ex.start,
        ex.qualifying_index,
        [toks.ref(t) for t in ex.tokens],
        [_num(a) for a in ex.acts],
    ]
    per_token = ex.effects.get("per_token") if ex.effects else None
    if per_token:
        row.append([str(p) if p else "" for p in per_token])
    return row


def _hist(h: Histogram) -> list[list[float | int]] | None:
    if not h.counts or len(h.edges) != len(h.counts) + 1:
        return None
    return [[_sig(e) for e in h.edges], [int(c) for c in h.counts]]


def _extras_html(extras: dict[str, Any]) -> str:
    """A two-column table of a dictionary's per-feature extras (values as JSON text)."""
    if not extras:
        return '<div class="fs-meta">none</div>'
    if "decoder_layers" in extras and "decoder_norms_by_layer" in extras:
        layers = extras["decoder_layers"]
        norms = extras["decoder_norms_by_layer"]
        rows = "".join(
            f"<tr><td>{esc(layer)}</td><td>{float(n):.4f}</td></tr>"
            for layer, n in zip(layers, norms, strict=False)
        )
        rest = {
            k: v for k, v in extras.items() if k not in ("decoder_layers", "decoder_norms_by_layer")
        }
        head = (
            '<table class="fs-table"><tr><th>target layer</th><th>decoder norm</th></tr>'
            f"{rows}</table>"
        )
        return head + (_extras_html(rest) if rest else "")
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(_short_json(v))}</td></tr>" for k, v in extras.items()
    )
    return f'<table class="fs-table">{rows}</table>'


def _short_json(v: Any, limit: int = 400) -> str:
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def feature_record(
    fd: FeatureData,
    toks: _Tokens,
    layout: Sequence[str],
    whole: Sequence[Example] = (),
) -> dict[str, Any]:
    """The compact JSON record the page's script renders one feature from; ``whole``: whole
    rows of some top examples, shown after them (escaped HTML)."""
    rec: dict[str, Any] = {"i": fd.index, "mx": _num(fd.max_act, 6)}
    frag: dict[str, str] = {}
    if "summary" in layout:
        frag["summary"] = charts.summary_html(fd)
    if "logit_tables" in layout:
        frag["logit_tables"] = (
            charts.logit_table_html(fd.top_logits, fd.bottom_logits)
            if fd.top_logits.tokens or fd.bottom_logits.tokens
            else '<div class="fs-meta">no logit effects: the decoder does not write to the '
            "residual stream</div>"
        )
    if "neuron_alignment" in layout:
        frag["neuron_alignment"] = charts.table_html(fd.neuron_alignment, "neuron")
    if "correlated_neurons" in layout:
        frag["correlated_neurons"] = charts.table_html(fd.correlated_neurons, "neuron")
    if "correlated_features" in layout:
        frag["correlated_features"] = charts.table_html(
            fd.correlated_features, "feature", link="#feature={}"
        )
    if "extras" in layout:
        shown_apart = ("dfa", "bottom_examples")  # drawn with the top examples
        frag["extras"] = _extras_html({k: v for k, v in fd.extras.items() if k not in shown_apart})
    rec["html"] = frag
    if "act_hist" in layout:
        rec["ah"] = _hist(fd.act_hist)
        rec["aht"] = _act_title(fd)
    if "logit_hist" in layout:
        rec["lh"] = _hist(fd.logit_hist)
    if "top_examples" in layout:
        rec["top"] = [_example(e, toks) for e in fd.top_examples]
        if fd.signed:  # a given direction: its most negative examples too
            frag["bottom"] = charts.examples_html(
                fd.bottom_examples, fd.max_act, "Most negative", min_act=fd.min_act
            )
        dfa = charts_dfa.dfa_examples_html(fd)  # attention-output dictionaries only
        if dfa:
            frag["dfa"] = dfa
        if whole:
            frag["whole"] = whole_rows_html(whole, fd.max_act)
    if "intervals" in layout:
        groups = []
        for g in reversed(fd.intervals):
            groups.append(
                [
                    f"{'|activation| in' if fd.signed else 'Interval'} ({g.lo:.3f}, {g.hi:.3f}]",
                    f" {g.n_active} tokens, {g.share:.2%} of activations",
                    [_example(e, toks) for e in g.examples],
                ]
            )
        rec["iv"] = groups
    return rec


def whole_rows_html(rows: Sequence[Example], max_act: float) -> str:
    """Whole rows of top examples (the feature on every token), each folded."""
    parts = [
        f"<details><summary>Whole sequence of row {r.seq} (top {k + 1})</summary>"
        f"{charts.example_html(r, max(max_act, max(r.acts, default=0.0)))}</details>"
        for k, r in enumerate(rows)
    ]
    return f'<div class="fs-whole">{"".join(parts)}</div>'


_FAST_TITLE: list[bool] = []


def _act_title(fd: FeatureData) -> str:
    """The activation histogram's title, as :func:`core.charts.activation_histogram` sets it.

    Building the Altair chart per feature costs tens of milliseconds, so the title is
    formatted here once it has been checked, on the first feature, to match the chart's.
    """
    fast = f"Activation density {fd.density:.3%} (non-zero activations)"
    if not _FAST_TITLE:
        _FAST_TITLE.append(str(charts.activation_histogram(fd).title) == fast)
    return fast if _FAST_TITLE[0] else str(charts.activation_histogram(fd).title)


_TEMPLATES: dict[str, dict[str, Any]] = {}


def _chart_templates(fd: FeatureData, layout: Sequence[str]) -> dict[str, Any]:
    """Vega-Lite specifications of the app's charts, without data (filled in the browser).

    Built once per process; nothing in them depends on the feature they were built
    from (the data and the activation histogram's title are set in the browser), so a
    page does not depend on what was rendered before it.
    """
    out: dict[str, Any] = {}
    builders = {"act_hist": charts.activation_histogram, "logit_hist": charts.logit_histogram}
    for key, build in builders.items():
        if key not in layout:
            continue
        if key in _TEMPLATES:
            out[key] = _TEMPLATES[key]
            continue
        chart = build(fd)
        cols = set(chart.data.columns)
        if not cols <= _CHART_FIELDS:  # charts.py changed its data: the page would lie
            raise ExportError(
                f"chart {key} uses data columns {sorted(cols - _CHART_FIELDS)} the HTML export "
                "does not provide; update core/export/html.py"
            )
        spec = chart.to_dict()
        spec.pop("datasets", None)
        spec["data"] = {"values": []}
        if key == "act_hist":  # its title names the feature's density: set per feature
            spec["title"] = ""
        _TEMPLATES[key] = spec
        out[key] = spec
    return out


# ---- the page -------------------------------------------------------------------------------
# The page's own stylesheet and script are real files (package data), read once.
_STATIC = importlib.resources.files("core.export") / "static"
_PAGE_CSS = (_STATIC / "page.css").read_text(encoding="utf-8")
_PAGE_JS = (_STATIC / "page.js").read_text(encoding="utf-8")


def check_layout(layout: Sequence[str] | None) -> list[str]:
    """Validate a component list (names from :data:`core.charts.COMPONENTS`), drop repeats."""
    out, unknown = parse_layout(layout)
    if unknown:
        raise ExportError(f"unknown dashboard component {unknown[0]!r}; choose from {COMPONENTS}")
    if not out:
        raise ExportError(f"the layout is empty; choose components from {COMPONENTS}")
    return out


def _meta_value(v: Any) -> str:
    if isinstance(v, dict | list | tuple):
        return _short_json(v, limit=2000)
    return str(v)


def _labels(meta: dict[str, Any]) -> dict[str, str]:
    raw = meta.get("labels") or {}
    if not isinstance(raw, dict):
        raise ExportError("meta['labels'] must map feature indices to label strings")
    return {str(int(k)): str(v) for k, v in raw.items()}


def render_features_html(
    features: Sequence[FeatureData],
    meta: dict[str, Any] | None = None,
    layout: Sequence[str] | None = None,
    *,
    start: int | None = None,
    js: JsMode = "gzip",
    whole: Mapping[int, Sequence[Example]] | None = None,
    feature_map: MapExport | None = None,
) -> str:
    """One self-contained HTML page with the dashboards of ``features``.

    Args:
        features: the features to show, in picker order (a picker appears when there
            are several; the URL fragment ``#feature=N`` selects one).
        meta: what the page says about the run: ``title`` (the heading),
            ``labels`` (optional ``{feature index: label}``), ``notes`` (optional
            ``{feature index: Markdown}``, rendered without raw HTML), and any other key/value
            pairs (model, dictionary, dataset, hook, config...), listed under the
            heading. Values are escaped; dicts and lists are shown as JSON.
        layout: which components show, in which order (names from
            :data:`core.charts.COMPONENTS`); ``None`` shows all in the default order.
        start: the feature shown first (default: the first one).
        js: ``"gzip"`` (default) inlines the chart library compressed (about 0.4 MB,
            unpacked by the browser's ``DecompressionStream``: Chrome 80+, Firefox 113+,
            Safari 16.4+); ``"plain"`` inlines it as is (about 0.9 MB, any browser).
        whole: whole rows of some top examples per feature index (the Feature page's
            download exports its top 3), shown folded under the top examples.
        feature_map: a map of the dictionary already stored (:mod:`core.export.map_html`),
            drawn above the dashboards with the exported features ringed; a click on one
            opens it. Left out, the page has no map (an export never computes one).

    Returns:
        The page as a string. It loads nothing from the network.

    Raises:
        ExportError: no features, unknown component names, bad labels.
    """
    feats = list(features)
    if not feats:
        raise ExportError("no features to export")
    seen: set[int] = set()
    for fd in feats:
        if not isinstance(fd, FeatureData):
            raise ExportError(f"expected FeatureData objects, got {type(fd).__name__}")
        if fd.index in seen:
            raise ExportError(f"feature {fd.index} is given twice")
        seen.add(fd.index)
    meta = dict(meta or {})
    comps = check_layout(layout)
    labels = _labels(meta)
    toks = _Tokens()
    rows = whole or {}
    records = [feature_record(fd, toks, comps, rows.get(fd.index, ())) for fd in feats]
    data = {
        "features": records,
        "tokens": toks.table,
        "layout": comps,
        "titles": {k: TITLES[k] for k in comps},
        "labels": labels,
        "notes": notes_html(meta.get("notes")),
        "rgb": list(charts.ACT_RGB),
        "start": feats[0].index if start is None else int(start),
    }
    specs = _chart_templates(feats[0], comps)
    title = str(meta.get("title") or "Feature dashboards")
    run_rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(_meta_value(v))}</td></tr>"
        for k, v in meta.items()
        if k not in ("title", "labels", "notes")
    )
    n = len(feats)
    run_block = (
        f'<details class="fs-run"><summary>{n} feature{"s" if n != 1 else ""} · run details'
        f"</summary><table>{run_rows}</table></details>"
        if run_rows
        else f'<div class="fs-run">{n} feature{"s" if n != 1 else ""}</div>'
    )
    picker = ""
    if n > 1:
        options = []
        for k, fd in enumerate(feats):
            text = f"Feature {fd.index} · density {fd.density:.3%}"
            if str(fd.index) in labels:
                text += f" · {labels[str(fd.index)]}"
            options.append(f'<option value="{k}">{esc(text)}</option>')
        picker = (
            '<div class="fs-picker"><button id="fs-prev" type="button" title="previous (←)">◀'
            '</button><select id="fs-pick" aria-label="feature">'
            + "".join(options)
            + '</select><button id="fs-next" type="button" title="next (→)">▶</button>'
            '<label>go to <input id="fs-jump" type="number" min="0" placeholder="index">'
            '</label><span id="fs-missing" class="fs-note"></span></div>'
        )
    map_block = ""
    if feature_map is not None:
        spec = map_spec(feature_map, [fd.index for fd in feats])
        map_block = (
            '<details class="fs-map" open><summary>Map of the dictionary</summary>'
            '<div id="fs-map-chart"></div><div class="fs-meta">'
            f"{esc(feature_map.caption)}; the exported features are ringed (click one to open it)"
            f'</div></details><script type="application/json" id="fs-map">{script_json(spec)}'
            "</script>"
        )
    bundle = vega_bundle(js)
    if js == "gzip":
        lib = f'<script type="application/octet-stream" id="fs-vega-gz">{bundle}</script>'
    else:
        lib = f"<script>{bundle}</script>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_PAGE_CSS}{charts.CSS}{charts_dfa.DFA_CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{run_block}{picker}</header>{map_block}"
        '<main id="fs-page"><noscript>This page needs JavaScript to show the dashboards.'
        "</noscript></main>"
        f'<script type="application/json" id="fs-data">{script_json(data)}</script>'
        f'<script type="application/json" id="fs-specs">{script_json(specs)}</script>'
        f"{lib}<script>{_PAGE_JS}</script></body></html>\n"
    )


def save_html(
    path: str | Path,
    features: Sequence[FeatureData],
    meta: dict[str, Any] | None = None,
    layout: Sequence[str] | None = None,
    **kwargs: Any,
) -> Path:
    """Render with :func:`render_features_html` and write the page atomically to ``path``.

    Extra keyword arguments (``start``, ``js``) go to :func:`render_features_html`.
    Returns the path written.
    """
    page = render_features_html(features, meta, layout, **kwargs)
    return atomic_write(path, page)


__all__ = [
    "TITLES",
    "check_layout",
    "feature_record",
    "render_features_html",
    "save_html",
    "script_json",
    "vega_bundle",
]

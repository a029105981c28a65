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
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from core import charts
from core.charts import COMPONENTS, esc, visible_token
from core.engine.features import Example, FeatureData, Histogram
from core.export import ExportError, atomic_write

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
    root = os.environ.get("FEATURESCOPE_DATA_DIR")
    return (Path(root) if root else Path(__file__).resolve().parents[2] / "cache") / "vega"


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


def feature_record(fd: FeatureData, toks: _Tokens, layout: Sequence[str]) -> dict[str, Any]:
    """The compact JSON record the page's script renders one feature from."""
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
        frag["extras"] = _extras_html(fd.extras)
    rec["html"] = frag
    if "act_hist" in layout:
        rec["ah"] = _hist(fd.act_hist)
        rec["aht"] = _act_title(fd)
    if "logit_hist" in layout:
        rec["lh"] = _hist(fd.logit_hist)
    if "top_examples" in layout:
        rec["top"] = [_example(e, toks) for e in fd.top_examples]
    if "intervals" in layout:
        groups = []
        for g in reversed(fd.intervals):
            groups.append(
                [
                    f"Interval ({g.lo:.3f}, {g.hi:.3f}]",
                    f" {g.n_active} tokens, {g.share:.2%} of activations",
                    [_example(e, toks) for e in g.examples],
                ]
            )
        rec["iv"] = groups
    return rec


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
_PAGE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1a202c;margin:0;background:#fff}
header{position:sticky;top:0;z-index:20;background:#f7fafc;border-bottom:1px solid #e2e8f0;padding:8px 16px}
header h1{font-size:18px;margin:0 0 4px 0}
.fs-run{font-size:12px;color:#4a5568}
.fs-run summary{cursor:pointer}
.fs-run table{border-collapse:collapse;margin:4px 0}
.fs-run td,.fs-run th{padding:1px 8px 1px 0;text-align:left;vertical-align:top}
.fs-run th{font-weight:600;color:#2d3748}
.fs-picker{display:flex;gap:6px;align-items:center;margin-top:6px;font-size:13px;flex-wrap:wrap}
.fs-picker select{max-width:420px}
.fs-picker input{width:90px}
main{max-width:1100px;margin:0 auto;padding:8px 16px 40px 16px}
main h2{font-size:17px;margin:10px 0 2px 0}
main section{margin:8px 0 14px 0}
main section>h3{font-size:14px;margin:0 0 4px 0;color:#2d3748;border-bottom:1px solid #e2e8f0}
.fs-chart{width:100%;min-height:40px}
.fs-note{color:#c53030;font-size:13px}
"""

_PAGE_JS = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("fs-data").textContent);
  var S = JSON.parse(document.getElementById("fs-specs").textContent);
  var T = D.tokens, F = D.features, L = D.layout, TITLES = D.titles, RGB = D.rgb;
  var pos = new Map(F.map(function (f, k) { return [f.i, k]; }));
  var current = -1;
  var vegaReady = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function bg(a, mx) {
    if (!(a > 0) || !(mx > 0)) return "transparent";
    var x = Math.min(1, a / mx);
    return "rgba(" + RGB[0] + "," + RGB[1] + "," + RGB[2] + "," + (0.12 + 0.78 * x).toFixed(3) + ")";
  }
  function example(ex, mx) {
    var seq = ex[0], start = ex[1], q = ex[2], ids = ex[3], acts = ex[4], eff = ex[5];
    var div = el("div", "fs-ex");
    div.appendChild(el("span", "fs-meta", "seq " + seq));
    for (var j = 0; j < ids.length; j++) {
      var a = acts[j], p = start + j, t = T[ids[j]];
      var s = el("span", j === q ? "fs-tok fs-q" : "fs-tok");
      s.style.background = bg(a, mx);
      s.setAttribute("data-act", a.toFixed(4));
      s.setAttribute("data-pos", String(p));
      s.appendChild(document.createTextNode(t[0]));
      var tip = "token " + t[1] + "\nactivation " + a.toFixed(4) + "\nposition " + p;
      if (eff && eff[j]) tip += "\n" + eff[j];
      s.appendChild(el("span", "fs-tip", tip));
      div.appendChild(s);
    }
    return div;
  }
  function examples(list, mx, box) {
    if (!list || !list.length) { box.appendChild(el("div", "fs-meta", "no examples")); return; }
    for (var k = 0; k < list.length; k++) box.appendChild(example(list[k], mx));
  }
  function rows(h, signed) {
    var e = h[0], c = h[1], out = [];
    for (var k = 0; k < c.length; k++) {
      var lo = e[k], hi = e[k + 1], mid = (lo + hi) / 2;
      var r = { lo: lo, hi: hi, count: c[k], mid: mid };
      if (signed) r.sign = mid < 0 ? "negative" : "positive";
      out.push(r);
    }
    return out;
  }
  function loadVega() {
    if (vegaReady) return vegaReady;
    if (window.vegaEmbed) { vegaReady = Promise.resolve(); return vegaReady; }
    var packed = document.getElementById("fs-vega-gz");
    if (!packed) { vegaReady = Promise.reject(new Error("no chart library in this file")); return vegaReady; }
    if (typeof DecompressionStream === "undefined") {
      vegaReady = Promise.reject(new Error("this browser has no DecompressionStream; re-export with js='plain'"));
      return vegaReady;
    }
    var bin = atob(packed.textContent.trim());
    var bytes = new Uint8Array(bin.length);
    for (var k = 0; k < bin.length; k++) bytes[k] = bin.charCodeAt(k);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    vegaReady = new Response(stream).text().then(function (code) {
      var s = document.createElement("script");
      s.textContent = code;
      document.head.appendChild(s);
      if (!window.vegaEmbed) throw new Error("the chart library did not load");
    });
    return vegaReady;
  }
  function chart(box, key, f) {
    var h = key === "act_hist" ? f.ah : f.lh;
    if (!h) {
      box.appendChild(el("div", "fs-meta", key === "act_hist" ? "the feature never fires"
        : "no logit effects: the decoder does not write to the residual stream"));
      return;
    }
    var spec = JSON.parse(JSON.stringify(S[key]));
    spec.data = { values: rows(h, key === "logit_hist") };
    if (key === "act_hist" && f.aht) spec.title = f.aht;
    var holder = el("div", "fs-chart");
    box.appendChild(holder);
    loadVega().then(function () {
      return window.vegaEmbed(holder, spec, { actions: false, renderer: "svg" });
    }).catch(function (err) {
      holder.appendChild(el("div", "fs-note", "chart not drawn: " + err.message));
    });
  }
  function render(k) {
    if (k < 0 || k >= F.length) return;
    current = k;
    var f = F[k];
    var main = document.getElementById("fs-page");
    main.textContent = "";
    var label = D.labels[String(f.i)];
    main.appendChild(el("h2", null, "Feature " + f.i + (label ? " \u2014 " + label : "")));
    for (var n = 0; n < L.length; n++) {
      var key = L[n];
      var sec = el("section");
      sec.setAttribute("data-component", key);
      sec.appendChild(el("h3", null, TITLES[key]));
      var box = el("div", "fs-body");
      sec.appendChild(box);
      if (key === "act_hist" || key === "logit_hist") chart(box, key, f);
      else if (key === "top_examples") examples(f.top, f.mx, box);
      else if (key === "intervals") {
        if (!f.iv || !f.iv.length) box.appendChild(el("div", "fs-meta", "no intervals"));
        for (var g = 0; g < (f.iv || []).length; g++) {
          var head = el("div", "fs-group", f.iv[g][0]);
          head.appendChild(el("small", null, f.iv[g][1]));
          box.appendChild(head);
          examples(f.iv[g][2], f.mx, box);
        }
      } else if (f.html[key] !== undefined) box.innerHTML = f.html[key];  // escaped in Python
      main.appendChild(sec);
    }
    var sel = document.getElementById("fs-pick");
    if (sel) sel.value = String(k);
    document.documentElement.setAttribute("data-feature", String(f.i));
  }
  function fromHash() {
    var m = /feature=(-?\d+)/.exec(window.location.hash);
    if (!m) return false;
    var k = pos.get(parseInt(m[1], 10));
    var note = document.getElementById("fs-missing");
    if (k === undefined) {
      if (note) note.textContent = "feature " + m[1] + " is not in this file";
      return false;
    }
    if (note) note.textContent = "";
    render(k);
    return true;
  }
  function go(k) {
    if (k < 0 || k >= F.length) return;
    window.location.hash = "feature=" + F[k].i;
  }
  var sel = document.getElementById("fs-pick");
  if (sel) {
    sel.addEventListener("change", function () { go(parseInt(sel.value, 10)); });
    document.getElementById("fs-prev").addEventListener("click", function () { go(current - 1); });
    document.getElementById("fs-next").addEventListener("click", function () { go(current + 1); });
    var jump = document.getElementById("fs-jump");
    jump.addEventListener("keydown", function (e) {
      if (e.key !== "Enter") return;
      window.location.hash = "feature=" + parseInt(jump.value, 10);
    });
    document.addEventListener("keydown", function (e) {
      var tag = (e.target && e.target.tagName) || "";
      if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
      if (e.key === "ArrowLeft") go(current - 1);
      if (e.key === "ArrowRight") go(current + 1);
    });
  }
  window.addEventListener("hashchange", fromHash);
  if (!fromHash()) render(Math.max(0, pos.has(D.start) ? pos.get(D.start) : 0));
})();
"""


def check_layout(layout: Sequence[str] | None) -> list[str]:
    """Validate a component list (names from :data:`core.charts.COMPONENTS`), drop repeats."""
    if layout is None:
        return list(COMPONENTS)
    if isinstance(layout, str):
        layout = [p.strip() for p in layout.split(",") if p.strip()]
    out: list[str] = []
    for name in layout:
        if name not in COMPONENTS:
            raise ExportError(f"unknown dashboard component {name!r}; choose from {COMPONENTS}")
        if name not in out:
            out.append(name)
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
) -> str:
    """One self-contained HTML page with the dashboards of ``features``.

    Args:
        features: the features to show, in picker order (a picker appears when there
            are several; the URL fragment ``#feature=N`` selects one).
        meta: what the page says about the run: ``title`` (the heading),
            ``labels`` (optional ``{feature index: label}``), and any other key/value
            pairs (model, dictionary, dataset, hook, config...), listed under the
            heading. Values are escaped; dicts and lists are shown as JSON.
        layout: which components show, in which order (names from
            :data:`core.charts.COMPONENTS`); ``None`` shows all in the default order.
        start: the feature shown first (default: the first one).
        js: ``"gzip"`` (default) inlines the chart library compressed (about 0.4 MB,
            unpacked by the browser's ``DecompressionStream``: Chrome 80+, Firefox 113+,
            Safari 16.4+); ``"plain"`` inlines it as is (about 0.9 MB, any browser).

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
    records = [feature_record(fd, toks, comps) for fd in feats]
    data = {
        "features": records,
        "tokens": toks.table,
        "layout": comps,
        "titles": {k: TITLES[k] for k in comps},
        "labels": labels,
        "rgb": list(charts.ACT_RGB),
        "start": feats[0].index if start is None else int(start),
    }
    specs = _chart_templates(feats[0], comps)
    title = str(meta.get("title") or "Feature dashboards")
    run_rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(_meta_value(v))}</td></tr>"
        for k, v in meta.items()
        if k not in ("title", "labels")
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
    bundle = vega_bundle(js)
    if js == "gzip":
        lib = f'<script type="application/octet-stream" id="fs-vega-gz">{bundle}</script>'
    else:
        lib = f"<script>{bundle}</script>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_PAGE_CSS}{charts.CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{run_block}{picker}</header>"
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

"""UI building blocks shared by the pages: the feature dashboard components, tables, CSS.

The HTML fragments and Altair charts come from :mod:`core.charts` (the HTML export uses
the same builders), so the app and the exported page look alike.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from core import charts
from pages import _state as state

#: features computed in the same pass as a requested one (one pass costs the same),
#: so "next" is instant afterwards
PREFETCH = 16
#: default features per pass of a background job
PER_PASS = 2048

COMPONENT_INFO: dict[str, tuple[str, str]] = {
    "summary": ("Summary", "How often and how strongly the feature fires on the swept tokens."),
    "act_hist": (
        "Activation histogram",
        "Distribution of the feature's non-zero activations over the swept tokens.",
    ),
    "logit_hist": (
        "Logit effect histogram",
        "Direct effect of the decoder direction on every vocabulary logit.",
    ),
    "logit_tables": (
        "Logit effects",
        "Tokens whose logits the decoder direction most decreases / increases "
        "(direct path through the unembedding).",
    ),
    "neuron_alignment": (
        "Neuron alignment",
        "Largest decoder weights by basis direction; l1_share is the share of the "
        "decoder's L1 norm.",
    ),
    "correlated_neurons": (
        "Correlated neurons",
        "Basis directions of the input whose values correlate with the feature.",
    ),
    "correlated_features": (
        "Correlated features",
        "Features that fire with this one over the swept tokens (click to open), and the "
        "nearest features by decoder cosine.",
    ),
    "top_examples": (
        "Top activations",
        "Highest-activating contexts, one per sequence; the boxed token is the maximum. "
        "Hover a token for its activation and position.",
    ),
    "intervals": (
        "Activation intervals",
        "Contexts sampled from equal-width activation bins, strongest first.",
    ),
    "extras": ("Extras", "Dictionary-specific data (e.g. a CLT layer's downstream norms)."),
}
#: components drawn in the wide right-hand column; the rest go to the left
WIDE = {"top_examples", "intervals"}


def inject_css() -> None:
    """The highlight/tooltip CSS of :mod:`core.charts` plus a few app tweaks."""
    st.html(
        "<style>"
        + charts.CSS
        + """
.fs-ex{overflow:visible}
.fs-tok .fs-tip{pointer-events:none}
.fs-table a{color:#c2410c;text-decoration:none;font-weight:600}
.fs-table a:hover{text-decoration:underline}
.fs-cap{color:#718096;font-size:12px;margin:-4px 0 4px 0}
div[data-testid="stMainBlockContainer"]{padding-top:2.2rem}
"""
        + "</style>"
    )


def section(name: str) -> None:
    title, help_text = COMPONENT_INFO.get(name, (name, ""))
    st.markdown(f"**{title}**", help=help_text or None)


# ---- layout ---------------------------------------------------------------------------------------
def parse_layout(raw: str | None) -> tuple[list[str], list[str]]:
    """Components named in ``layout=`` (known ones, in order) and the unknown names."""
    if not raw:
        return list(charts.COMPONENTS), []
    names = [n.strip() for n in raw.split(",") if n.strip()]
    known = [n for n in dict.fromkeys(names) if n in charts.COMPONENTS]
    unknown = [n for n in names if n not in charts.COMPONENTS]
    return (known or list(charts.COMPONENTS)), unknown


# ---- feature data --------------------------------------------------------------------------------
def check_index(ws: Any, raw: Any) -> int:
    """The feature index, or ``ValueError`` whose message names the valid range."""
    n = int(ws.n_features)
    if hasattr(ws, "check_index"):
        try:
            return int(ws.check_index(raw))
        except ValueError as exc:
            msg = str(exc)
            if "does not exist" not in msg:
                msg += f"; valid features are 0-{n - 1}"
            raise ValueError(msg) from exc
    try:
        i = int(str(raw).strip())
    except ValueError as exc:
        raise ValueError(
            f"feature index must be a whole number, got {raw!r}; valid features are 0-{n - 1}"
        ) from exc
    if not 0 <= i < n:
        raise ValueError(
            f"feature {i} does not exist: this dictionary has {n} features (0-{n - 1})"
        )
    return i


def get_feature(ws: Any, i: int) -> tuple[Any, str]:
    """Feature ``i``'s data and a caption saying where it came from and how long it took.

    A cached feature comes straight from the memo. A missing one is computed with a
    progress bar, together with the next :data:`PREFETCH` features (the forward pass
    over the dataset dominates, so they cost almost nothing extra).
    """
    t0 = time.perf_counter()
    cached = getattr(ws, "cached", None)
    fd = cached(i) if cached is not None else None
    if fd is not None:
        return fd, f"from the cache in {time.perf_counter() - t0:.2f} s"
    if not hasattr(ws, "features"):  # a precomputed output: everything is there
        fd = ws.feature(i)
        return fd, f"loaded in {time.perf_counter() - t0:.2f} s"
    batch = list(range(i, min(i + PREFETCH, int(ws.n_features))))
    job = state.job_for(ws)
    if job is not None and job.running:
        st.info(
            f"A background job holds the model ({state.job_caption(job)}); this feature is "
            "computed when its current pass ends.",
            icon=":material/hourglass_top:",
        )
    n_tok = ws.describe().get("n_tokens", 0)
    bar = st.progress(0.0, text=f"Computing feature {i}: one pass over {n_tok:,} tokens …")

    def progress(frac: float, msg: str) -> None:
        bar.progress(
            min(max(frac, 0.0), 1.0),
            text=f"Computing features {batch[0]}–{batch[-1]} in one pass: {msg}",
        )

    data = ws.features(batch, progress=progress)
    bar.empty()
    took = time.perf_counter() - t0
    extra = f" with the next {len(batch) - 1} features" if len(batch) > 1 else ""
    return data[i], f"computed{extra} in {took:.1f} s (now cached)"


# ---- dashboard components ------------------------------------------------------------------------
def _table_or_none(html: str) -> None:
    st.html(html)


def render_component(name: str, fd: Any, ws: Any, layout: list[str]) -> None:
    """Draw one dashboard component of feature ``fd``."""
    if name not in ("act_hist", "logit_hist"):  # the charts carry their own titles
        section(name)
    if name == "summary":
        st.html(charts.summary_html(fd))
        if fd.n_active == 0:
            st.warning(
                f"This feature never fired on the {fd.n_tokens:,} swept tokens (dead feature).",
                icon=":material/block:",
            )
    elif name == "act_hist":
        if fd.n_active == 0:
            st.caption("no activations")
        else:
            st.altair_chart(charts.activation_histogram(fd), width="stretch")
    elif name == "logit_hist":
        if sum(fd.logit_hist.counts) == 0:
            st.caption("no logit effects (the dictionary does not write to the residual stream)")
        else:
            st.altair_chart(charts.logit_histogram(fd), width="stretch")
    elif name == "logit_tables":
        if not fd.top_logits.tokens and not fd.bottom_logits.tokens:
            st.caption("none")
        else:
            st.html(charts.logit_table_html(fd.top_logits, fd.bottom_logits))
    elif name == "neuron_alignment":
        st.html(charts.table_html(fd.neuron_alignment, "neuron"))
    elif name == "correlated_neurons":
        st.html(charts.table_html(fd.correlated_neurons, "neuron"))
    elif name == "correlated_features":
        st.html(
            charts.table_html(
                fd.correlated_features, "feature", link=state.feature_link_template(ws, layout)
            )
        )
        similar_pills(ws, fd.index)
    elif name == "top_examples":
        st.html(charts.examples_html(fd.top_examples, fd.max_act))
    elif name == "intervals":
        if not fd.intervals:
            st.caption("no intervals")
        else:
            with st.container(height=520, border=False):
                st.html(charts.intervals_html(fd))
    elif name == "extras":
        if not fd.extras:
            st.caption("nothing extra for this dictionary")
        else:
            st.json(fd.extras, expanded=1)


def similar_pills(ws: Any, i: int, k: int = 8) -> None:
    """Nearest features by decoder cosine, as chips that open the feature in this session."""
    if not hasattr(ws, "similar"):
        return
    try:
        near = ws.similar(i, k=k)
    except Exception as exc:
        st.caption(f"nearest by decoder: {state.error_message(exc)}")
        return
    if not near:
        return
    labels = {r["feature"]: f"{r['feature']} · {r['cosine']:.2f}" for r in near}
    st.pills(
        "Nearest by decoder cosine",
        list(labels),
        format_func=labels.__getitem__,
        key=f"fs_sim_{i}",
        on_change=_go_to_selected,
        args=(f"fs_sim_{i}",),
        help="Features whose decoder directions point the same way; click to open.",
    )


def _go_to_selected(key: str) -> None:
    """Callback: open the feature chosen in widget ``key`` (on the feature page)."""
    value = st.session_state.get(key)
    if value is not None:
        st.query_params["feature"] = str(value)


def render_dashboard(fd: Any, ws: Any, layout: list[str]) -> None:
    """The layout's components: narrow ones on the left, examples on the right, in order."""
    left = [c for c in layout if c not in WIDE]
    right = [c for c in layout if c in WIDE]
    if left and right:
        col_l, col_r = st.columns([2, 3], gap="medium")
    else:
        col_l = col_r = st.container()
    with col_l:
        for name in left:
            render_component(name, fd, ws, layout)
    with col_r:
        for name in right:
            render_component(name, fd, ws, layout)


# ---- result tables -------------------------------------------------------------------------------
def feature_table(
    ws: Any,
    rows: list[dict[str, Any]],
    key: str,
    columns: dict[str, Any] | None = None,
    height: int | str = "auto",
) -> None:
    """Results with a ``feature`` column: click a row to open it here, or the link column
    to open it in a new tab."""
    if not rows:
        st.caption("no features")
        return
    df = pd.DataFrame(rows)
    df.insert(1, "open", [state.feature_href(ws, int(f)) for f in df["feature"]])
    config: dict[str, Any] = {
        "feature": st.column_config.NumberColumn("feature", format="%d", width="small"),
        "open": st.column_config.LinkColumn(
            "link", display_text="open ↗", width="small", help="open in a new tab"
        ),
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
    picked = event.selection.rows if event is not None else []
    if picked:
        state.open_feature(ws, int(df["feature"].iloc[picked[0]]))


# ---- export ----------------------------------------------------------------------------------------
def export_meta(ws: Any, index: int, params: dict[str, str]) -> dict[str, Any]:
    """What the exported page says about the run (heading and key/value lines)."""
    meta: dict[str, Any] = {"title": f"Feature {index}"}
    for label, value in state.describe_lines(ws):
        meta[label.lower()] = value
    meta["workspace id"] = state.identity(ws)
    meta["app link"] = "feature?" + urlencode(params)
    return meta


def export_page(ws: Any, fd: Any, layout: list[str], params: dict[str, str]) -> str:
    """This dashboard as one standalone HTML page (``core.export.html``), in ``layout``."""
    from core.export.html import render_features_html  # type: ignore[import-not-found]

    return render_features_html([fd], export_meta(ws, fd.index, params), layout=layout)


def export_button(ws: Any, fd: Any, layout: list[str], params: dict[str, str]) -> None:
    """Download button; the page is built only when clicked."""
    st.download_button(
        "HTML",
        data=lambda: export_page(ws, fd, list(layout), dict(params)),
        file_name=f"feature_{fd.index}.html",
        mime="text/html",
        icon=":material/download:",
        on_click="ignore",
        help="Download this dashboard (current layout) as a standalone HTML page",
    )


# ---- background jobs -----------------------------------------------------------------------------
def job_panel(ws: Any) -> Any:
    """Progress of this workspace's background job (polled while it runs); returns the job."""
    job = state.job_for(ws)
    if job is None:
        return None
    if job.running:
        _live_job(ws)
    elif job.error:
        st.error(f"{job.label} failed: {job.error}", icon=":material/error:")
    elif job.stopped:
        st.warning(f"{job.label}: {job.message}", icon=":material/pause_circle:")
    else:
        st.success(
            f"{job.label}: {job.message} in {state.format_seconds(job.elapsed())}",
            icon=":material/check_circle:",
        )
    return job


@st.fragment(run_every=1.0)
def _live_job(ws: Any) -> None:
    job = state.job_for(ws)
    if job is None or not job.running:
        st.rerun()  # the whole page: show the results
    cols = st.columns([6, 1], vertical_alignment="center")
    cols[0].progress(min(job.fraction, 1.0), text=state.job_caption(job))
    cols[1].button(
        "Stop",
        icon=":material/stop_circle:",
        key="fs_job_stop",
        on_click=state.stop_job,
        args=(ws,),
        help="Stop after the current batch; finished passes are kept",
    )


def default_per_pass(ws: Any) -> int:
    """Features per pass for background jobs: big passes are fastest (the forward pass
    over the dataset dominates), smaller ones keep progress more often."""
    return max(1, min(int(ws.n_features), PER_PASS))

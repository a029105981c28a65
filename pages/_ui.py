"""UI building blocks shared by the pages: the feature dashboard components, tables, CSS.

The HTML fragments and Altair charts come from :mod:`core.charts` (the HTML export uses
the same builders), so the app and the exported page look alike.
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from core import charts
from core.errors import FeaturescopeError
from core.feature_source import FeatureSource
from pages import _auth as auth
from pages import _jobs as jobs
from pages import _knowledge as knowledge
from pages import _links as links
from pages import _messages as messages
from pages import _sequence as sequence
from pages import _workspaces as workspaces

#: features computed in the same pass as a requested one (one pass costs the same),
#: so "next" is instant afterwards
PREFETCH = 16
#: default features per pass of a background job
PER_PASS = 4096

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
        "Features that fire with this one over the swept tokens (activation pearson and "
        "cosine, click to open), and the nearest features by the cosine of their decoder "
        "directions (the chips).",
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
div[data-testid="stMainBlockContainer"]{padding-top:2.2rem}
.fs-scroll{overflow-x:auto;max-width:100%}
.st-key-fs_dash{container-type:inline-size}
@container (max-width: 720px){
 .st-key-fs_dash div[data-testid="stHorizontalBlock"]{flex-wrap:wrap}
 .st-key-fs_dash div[data-testid="stColumn"]{flex:1 1 100% !important;width:100% !important;
  min-width:100% !important}
}
"""
        + "</style>"
    )


def section(name: str) -> None:
    title, help_text = COMPONENT_INFO.get(name, (name, ""))
    st.markdown(f"**{title}**", help=help_text or None)


# ---- layout ---------------------------------------------------------------------------------------
def parse_layout(raw: str | None) -> tuple[list[str], list[str]]:
    """Components named in ``layout=`` (known ones, in order) and the unknown names."""
    known, unknown = charts.parse_layout(raw or None)
    return (known or list(charts.COMPONENTS)), unknown


# ---- feature data --------------------------------------------------------------------------------
def check_index(ws: FeatureSource, raw: Any) -> int:
    """The feature index, or ``ValueError`` whose message names the valid range."""
    n = int(ws.n_features)
    try:
        return ws.check_index(raw)
    except FeaturescopeError as exc:
        msg = exc.args[0] if exc.args else str(exc)
        if "does not exist" not in msg:
            msg += f"; valid features are 0-{n - 1}"
        raise ValueError(msg) from exc


def get_feature(ws: FeatureSource, i: int) -> tuple[Any, str]:
    """Feature ``i``'s data and a caption saying where it came from and how long it took.

    A cached feature comes straight from the memo. A missing one is computed with a
    progress bar, together with the next :data:`PREFETCH` features (the forward pass
    over the dataset dominates, so they cost almost nothing extra).
    """
    t0 = time.perf_counter()
    fd = ws.cached(i) if workspaces.is_live(ws) else None
    if fd is not None:
        return fd, f"from the cache in {time.perf_counter() - t0:.2f} s"
    if not workspaces.is_live(ws):  # a precomputed output: everything is there
        fd = ws.feature(i)
        return fd, f"loaded in {time.perf_counter() - t0:.2f} s"
    batch = list(range(i, min(i + PREFETCH, int(ws.n_features))))
    job = jobs.job_for(ws)
    if job is not None and job.running:
        st.info(
            f"A background job holds the model ({jobs.job_caption(job)}); this feature is "
            "computed when its current pass ends.",
            icon=":material/hourglass_top:",
        )
    n_tok = ws.describe().get("n_tokens", 0)
    note = st.caption(
        f"Feature {i} is not computed yet: that takes one pass over the {n_tok:,} tokens, which "
        f"costs about as much as computing many features, so the next {len(batch) - 1} come "
        "with it. Precompute the whole dictionary on the Sources page to make every page "
        "instant (you can keep browsing while it runs)."
    )
    bar = st.progress(0.0, text=f"Computing feature {i}: one pass over {n_tok:,} tokens …")

    def progress(frac: float, msg: str) -> None:
        bar.progress(
            min(max(frac, 0.0), 1.0),
            text=f"Computing features {batch[0]}–{batch[-1]} in one pass: {msg}",
        )

    data = ws.features(batch, progress=progress)
    bar.empty()
    note.empty()
    took = time.perf_counter() - t0
    extra = f" with the next {len(batch) - 1} features" if len(batch) > 1 else ""
    return data[i], f"computed{extra} in {took:.1f} s (now cached)"


# ---- dashboard components ------------------------------------------------------------------------
def render_component(name: str, fd: Any, ws: FeatureSource, layout: list[str]) -> None:
    """Draw one dashboard component of feature ``fd`` (tables scroll sideways in a column
    too narrow for them instead of spilling into the next one)."""
    if name not in ("act_hist", "logit_hist"):  # the charts carry their own titles
        section(name)
    if name == "summary":
        _html(charts.summary_html(fd))
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
            _html(charts.logit_table_html(fd.top_logits, fd.bottom_logits))
    elif name == "neuron_alignment":
        _html(charts.table_html(fd.neuron_alignment, "neuron"))
    elif name == "correlated_neurons":
        _html(charts.table_html(fd.correlated_neurons, "neuron"))
    elif name == "correlated_features":
        _html(
            charts.table_html(
                fd.correlated_features,
                "feature",
                link=links.feature_link_template(ws, layout),
                names=knowledge.labels(ws, fd.correlated_features.indices),
            )
        )
        partners = [j for j in fd.correlated_features.indices if j != fd.index][:3]
        if partners:
            st.markdown(
                f"[:material/compare_arrows: Compare side by side]"
                f"({links.compare_href(ws, [fd.index, *partners])})"
            )
        similar_pills(ws, fd.index)
    elif name == "top_examples":
        sequence.top_examples(fd)
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
            _html(charts.extras_html(fd.extras))


def _html(fragment: str) -> None:
    st.html(f'<div class="fs-scroll">{fragment}</div>')


def similar_pills(ws: FeatureSource, i: int, k: int = 8) -> None:
    """Nearest features by decoder cosine, as chips that open the feature in this session."""
    if not workspaces.is_live(ws):
        return
    try:
        near = ws.similar(i, k=k)
    except Exception as exc:
        st.caption(f"nearest by decoder: {messages.error_message(exc)}")
        return
    if not near:
        return
    labels = knowledge.with_labels(
        ws, {r["feature"]: f"{r['feature']} · {r['cosine']:.2f}" for r in near}
    )
    st.pills(
        "Nearest by decoder cosine",
        list(labels),
        wrap=True,
        format_func=labels.__getitem__,
        key=f"fs_sim_{i}",
        on_change=_go_to_selected,
        args=(f"fs_sim_{i}",),
        help="Features whose decoder directions point the same way: feature · cosine of the "
        "two decoder directions (not of activations); click to open.",
    )


def _go_to_selected(key: str) -> None:
    """Callback: open the feature chosen in widget ``key`` (on the feature page)."""
    value = st.session_state.get(key)
    if value is not None:
        st.query_params["feature"] = str(value)


def render_dashboard(fd: Any, ws: FeatureSource, layout: list[str]) -> None:
    """The layout's components: narrow ones on the left, examples on the right, in order."""
    left = [c for c in layout if c not in WIDE]
    right = [c for c in layout if c in WIDE]
    # the container's key gives it a CSS class: below 720 px wide its columns stack
    box = st.container(key="fs_dash")
    if left and right:
        col_l, col_r = box.columns([2, 3], gap="medium")
    else:
        col_l = col_r = box
    with col_l:
        for name in left:
            render_component(name, fd, ws, layout)
    with col_r:
        for name in right:
            render_component(name, fd, ws, layout)


# ---- background jobs -----------------------------------------------------------------------------
def job_panel(ws: FeatureSource) -> Any:
    """Progress of this workspace's background job (polled while it runs); returns the job."""
    job = jobs.job_for(ws)
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
            f"{job.label}: {job.message} in {jobs.format_seconds(job.elapsed())}",
            icon=":material/check_circle:",
        )
    return job


@st.fragment(run_every=1.0)
def _live_job(ws: FeatureSource) -> None:
    job = jobs.job_for(ws)
    if job is None or not job.running:
        st.rerun()  # the whole page: show the results
    cols = st.columns([6, 1], vertical_alignment="center")
    cols[0].progress(min(job.fraction, 1.0), text=jobs.job_caption(job))
    cols[1].button(
        "Stop",
        icon=":material/stop_circle:",
        key="fs_job_stop",
        on_click=jobs.stop_job,
        args=(ws,),
        help="Stop after the current batch; finished passes are kept",
    )


def default_per_pass(ws: FeatureSource) -> int:
    """Features per pass for background jobs: big passes are fastest (the forward pass
    over the dataset dominates), smaller ones keep progress more often."""
    return max(1, min(int(ws.n_features), PER_PASS))


# ---- effects and steering ------------------------------------------------------------------------
def can_explain(ws: FeatureSource) -> bool:
    """True when the workspace can compute exact effects and steer (a live model)."""
    return workspaces.is_live(ws) and callable(getattr(ws, "effects", None))


def get_effects(ws: FeatureSource, i: int) -> tuple[Any, str]:
    """Feature ``i`` with exact per-token ablation effects on its examples (memoised)."""
    t0 = time.perf_counter()
    bar = st.progress(0.0, text=f"Ablating feature {i} on each shown example …")

    def progress(frac: float, msg: str) -> None:
        bar.progress(min(max(frac, 0.0), 1.0), text=f"Effects of feature {i}: {msg}")

    fd = ws.effects(i, progress=progress)
    bar.empty()
    stats = getattr(ws, "last_effects_stats", {}) or {}
    took = time.perf_counter() - t0
    how = "effects from the cache" if stats.get("from_memo") else f"effects in {took:.1f} s"
    return fd, how


def continuation_html(prompt: str, tokens: list[str], diverges_at: int | None) -> str:
    """A prompt (muted) and its continuation, tokens from the divergence point marked."""
    parts = [f'<span style="color:#718096">{charts.esc(prompt)}</span>']
    for j, tok in enumerate(tokens):
        text = charts.esc(tok)
        if diverges_at is not None and j >= diverges_at:
            parts.append(f'<span style="background:rgba(234,88,12,0.18)">{text}</span>')
        else:
            parts.append(text)
    return (
        '<div class="fs-ex" style="font-family:inherit;font-size:14px;line-height:1.6">'
        + "".join(parts)
        + "</div>"
    )


def steer_panel(ws: FeatureSource, index: int, fd: Any, ident: str) -> None:
    """Generate with the feature added or clamped, next to the unsteered continuation."""
    with st.form("fs_steer_form", border=False, enter_to_submit=False):
        prompt = st.text_area(
            "Prompt",
            key="fs_steer_prompt",
            height=68,
            label_visibility="collapsed",
            placeholder="A prompt to continue, e.g. 'The function returns'",
        )
        c1, c2, c3, c4 = st.columns([2, 2, 2, 1], vertical_alignment="bottom")
        mode = c1.segmented_control(
            "Mode",
            ["add", "clamp"],
            default="add",
            required=True,
            key="fs_steer_mode",
            help="add: add value × the decoder direction at every position (negative pushes "
            "away). clamp: hold the feature's activation at value (0 ablates it).",
        )
        value = c2.number_input(
            "Value",
            value=round(2.0 * max(fd.max_act, 1.0), 1),
            step=1.0,
            key="fs_steer_value",
            help=f"The feature's max activation on the dataset is {fd.max_act:.2f}.",
        )
        cfg = auth.hosted()
        top = 96 if cfg is None else max(4, min(96, int(cfg.limits.max_new_tokens)))
        n_new = c3.slider("New tokens", 4, top, min(24, top), key="fs_steer_tokens")
        go = c4.form_submit_button("Steer", icon=":material/alt_route:")
    if go:
        with messages.shown_errors():
            kwargs = {"coefficient": value} if mode == "add" else {"clamp": value}
            res = ws.steer(index, prompt, max_new_tokens=int(n_new), **kwargs)
            st.session_state["fs_steer"] = (ident, index, res)
    got = st.session_state.get("fs_steer")
    if got and got[0] == ident and got[1] == index:
        res = got[2]
        d = res.get("diverges_at")
        left, right = st.columns(2, gap="medium")
        with left:
            st.caption("unsteered")
            st.html(continuation_html(res["prompt"], res["unsteered_tokens"], d))
        with right:
            st.caption(
                f"steered: {res['value']:+g} × the decoder direction"
                if res["mode"] == "coefficient"
                else f"steered: the feature clamped at {res['value']:g}"
            )
            st.html(continuation_html(res["prompt"], res["steered_tokens"], d))
        st.caption(
            "identical continuations"
            if d is None
            else f"the continuations part at generated token {d} (marked)"
        )


def try_panel(ws: FeatureSource, index: int, fd: Any, ident: str) -> None:
    """The feature's activation on each token of a user's text."""
    st.caption(
        "The feature's activation on each token of your text, coloured on the same scale as "
        "the examples above (its max over the dataset). Hover a token for the numbers."
    )
    with st.form("fs_try_form", border=False, enter_to_submit=False):
        text = st.text_area(
            "Text",
            key="fs_try_text",
            height=80,
            label_visibility="collapsed",
            placeholder="Type or paste text, then Run",
        )
        run = st.form_submit_button("Run", icon=":material/play_arrow:")
    if run:
        with messages.shown_errors():
            st.session_state["fs_try"] = (ident, index, ws.feature_on_text(index, text))
    got = st.session_state.get("fs_try")
    if got and got[0] == ident and got[1] == index:
        res = got[2]
        toks, acts = res["tokens"], res["acts"]
        st.html(charts.tokens_html(toks, acts, fd.max_act))
        if acts:
            top = max(range(len(acts)), key=acts.__getitem__)
            st.caption(
                f"max activation {acts[top]:.3f} at position {top} "
                f"({messages.md(charts.visible_token(toks[top]))}); "
                f"{sum(a > 0 for a in acts)} of {len(acts)} tokens active"
            )

"""Feature page: the whole dashboard of one feature.

The URL is the state: ``?feature=12&ws=<identity>&src=<sources>&layout=a,b`` opens the
same dashboard for someone else. Prev/next, the jump box and clicks on related features
rewrite ``feature=``; the layout control rewrites ``layout=``.
"""

from __future__ import annotations

import random
from urllib.parse import urlencode

import streamlit as st

from core import charts, charts_dfa
from pages import _annotate as annotate
from pages import _export as export
from pages import _knowledge as knowledge
from pages import _links as links
from pages import _messages as messages
from pages import _sequence as sequence
from pages import _state as state
from pages import _ui as ui
from pages import _workspaces as workspaces

ui.inject_css()
ws = state.require_workspace()
n = int(ws.n_features)
ident = workspaces.identity(ws)

if st.session_state.get("fs_link_error"):
    st.warning(
        f"{st.session_state.pop('fs_link_error')}; showing the default sources instead.",
        icon=":material/link_off:",
    )

# --- the link's workspace identity ------------------------------------------------------------
link_ws = st.query_params.get("ws")
if link_ws and link_ws != ident:
    st.warning(
        f"This link was made for workspace `{link_ws}`, but the loaded workspace is `{ident}` "
        f"({messages.md(links.sources_label(links.sources()))}): the model, dictionary or token set "
        "differ, so feature numbers may not mean the same thing. Load the link's sources on "
        "the Sources page to see what its author saw.",
        icon=":material/warning:",
    )

# --- layout (kept in the URL) ---------------------------------------------------------------------
raw_layout = st.query_params.get("layout")
url_layout, unknown = ui.parse_layout(raw_layout)
if unknown:
    st.warning(
        f"Unknown layout component(s) {', '.join(unknown)} ignored; components are "
        f"{', '.join(charts.COMPONENTS)}.",
        icon=":material/view_quilt:",
    )
if st.session_state.get("fs_layout_url") != raw_layout or "fs_layout" not in st.session_state:
    st.session_state["fs_layout"] = url_layout
    st.session_state["fs_layout_url"] = raw_layout


def _layout_changed() -> None:
    chosen = [c for c in charts.COMPONENTS if c in st.session_state["fs_layout"]]
    order = [c for c in st.session_state["fs_layout"] if c in chosen]
    if not order or order == list(charts.COMPONENTS):
        st.query_params.pop("layout", None)
        st.session_state["fs_layout_url"] = None
    else:
        st.query_params["layout"] = ",".join(order)
        st.session_state["fs_layout_url"] = ",".join(order)


# --- exact effects (kept in the URL) -------------------------------------------------------
effects_on = st.query_params.get("effects") == "1" and ui.can_explain(ws)
st.session_state["fs_effects"] = effects_on


def _effects_changed() -> None:
    if st.session_state.get("fs_effects"):
        st.query_params["effects"] = "1"
    else:
        st.query_params.pop("effects", None)


# --- which feature --------------------------------------------------------------------------------
raw = st.query_params.get("feature")
if raw is None:
    raw = str(st.session_state.get("fs_last_feature", 0))


def _go(i: int) -> None:
    st.query_params["feature"] = str(i % n)


def _jump() -> None:
    text = (st.session_state.get("fs_jump") or "").strip()
    if text:
        st.query_params["feature"] = text
    st.session_state["fs_jump"] = ""


def _random() -> None:
    stored = getattr(ws, "features", None)  # a precomputed output lists what it holds
    if isinstance(stored, list) and stored:
        st.query_params["feature"] = str(random.choice(stored))
    else:
        st.query_params["feature"] = str(random.randrange(n))


try:
    index: int | None = ui.check_index(ws, raw)
except ValueError as exc:
    index = None
    bad_message = messages.error_message(exc)

current = index if index is not None else int(st.session_state.get("fs_last_feature", 0))
if current >= n:
    current = 0

# --- header: title and navigation ----------------------------------------------------------------
head = st.container(horizontal=True, vertical_alignment="bottom", gap="small")
with head:
    title = f"Feature {index}" if index is not None else "Feature"
    if index is not None and (named := knowledge.labels(ws, [index]).get(index)):
        title += f" · {messages.md(named)}"
    st.markdown(f"## {title}", width="content")
    st.button(
        "",
        icon=":material/chevron_left:",
        help="previous feature",
        key="fs_prev",
        shortcut="Shift+Left",
        on_click=_go,
        args=(current - 1,),
    )
    st.button(
        "",
        icon=":material/chevron_right:",
        help="next feature",
        key="fs_next",
        shortcut="Shift+Right",
        on_click=_go,
        args=(current + 1,),
    )
    st.text_input(
        "Jump to feature",
        key="fs_jump",
        placeholder=f"0–{n - 1}",
        on_change=_jump,
        width=120,
        label_visibility="collapsed",
        help="type a feature index and press Enter",
    )
    st.button(
        "", icon=":material/casino:", key="fs_random", on_click=_random, help="a random feature"
    )
    if ui.can_explain(ws):
        st.toggle(
            "Effects",
            key="fs_effects",
            on_change=_effects_changed,
            help="Exact effect of each token's feature activation on the model's predictions: "
            "the feature is ablated on every shown example and the model rerun. Shown in the "
            "token hover (loss effect, tokens made more / less likely). Cached.",
        )
    with st.popover("Layout", icon=":material/view_quilt:"):
        st.multiselect(
            "Components, in order",
            charts.COMPONENTS,
            key="fs_layout",
            on_change=_layout_changed,
            format_func=lambda c: ui.COMPONENT_INFO.get(c, (c, ""))[0],
            help="Which parts of the dashboard show, in the order picked; kept in the link "
            "and used by the HTML download.",
        )
        st.caption("Narrow parts go to the left column, examples to the right.")

if index is None:
    st.error(bad_message, icon=":material/error:")
    st.caption(
        f"This dictionary has {n:,} features. Type an index in the box above, or use the "
        "arrows to continue from the last feature."
    )
    st.stop()

st.session_state["fs_last_feature"] = index
layout = [c for c in st.session_state["fs_layout"] if c in charts.COMPONENTS] or list(
    charts.COMPONENTS
)
params = links.feature_params(ws, index, layout)
if effects_on:
    params["effects"] = "1"
for k, v in params.items():
    if st.query_params.get(k) != v:
        st.query_params[k] = v

# --- data -------------------------------------------------------------------------------------------
fd, how = None, ""
with messages.shown_errors():
    fd, how = ui.get_feature(ws, index)
if fd is None:
    st.stop()
if effects_on:
    with messages.shown_errors("Effects: "):
        fd, how_effects = ui.get_effects(ws, index)
        how += f" · {how_effects}"

desc = ws.describe()


def _loss_note(fd) -> str:
    mean = (fd.extras.get("effects") or {}).get("mean_loss_qualifying")
    if mean is None:
        return ""
    return f" · mean loss effect at the max token **{mean:+.4f}** (positive: the feature helps)"


with head, st.popover("Share", icon=":material/share:"):
    st.caption("A link to this dashboard (feature, layout, sources):")
    try:
        link = export.share_url("feature?" + urlencode(params))
    except ValueError as exc:  # a malformed FEATURESCOPE_BASE_URL: say so, keep a link
        st.warning(str(exc), icon=":material/link_off:")
        link = "feature?" + urlencode(params)
    st.code(link, language=None, wrap_lines=True)
    export.export_button(ws, fd, layout, params)

st.caption(
    f"density **{fd.density:.4%}** · max **{fd.max_act:.3f}** · mean (active) "
    f"**{fd.mean_act:.3f}** · {fd.n_active:,} of {fd.n_tokens:,} tokens · "
    f"{messages.md(str(desc.get('hook', '')))} · {n:,} features · {how}" + _loss_note(fd)
)

with st.container(border=True, key="fs_notes"):
    annotate.panel(ws, index, fd)

ui.render_dashboard(fd, ws, layout)
if workspaces.is_live(ws) and ("top_examples" in layout or "intervals" in layout):
    sequence.whole_sequence_panel(ws, fd)

# --- direct feature attribution (dictionaries on an attention output) ----------------------------
dfa_pairs = charts_dfa.dfa_pairs(fd) if "top_examples" in layout else []
if dfa_pairs:
    st.subheader("Direct feature attribution")
    st.caption(
        "Which source tokens the feature's pre-activation at a top example's token came from, "
        "through the attention pattern and value vectors (exact: the parts add up)."
    )
    pick = st.selectbox(
        "Destination token (top example)",
        range(len(dfa_pairs)),
        format_func=lambda k: (
            f"seq {dfa_pairs[k][0].seq}, position {dfa_pairs[k][0].pos}: "
            f"{charts.visible_token(dfa_pairs[k][0].tokens[dfa_pairs[k][0].qualifying_index])!r}"
            f" ({dfa_pairs[k][0].value:.3f})"
        ),
        key="fs_dfa_pick",
    )
    ex, dfa = dfa_pairs[pick]
    st.altair_chart(charts_dfa.dfa_chart(ex, dfa), width="stretch")
    st.html(f"<style>{charts_dfa.DFA_CSS}</style>" + charts_dfa.dfa_example_html(ex, dfa))
    with st.expander("Strongest sources of every top example"):
        st.html(f"<style>{charts_dfa.DFA_CSS}</style>" + charts_dfa.dfa_examples_html(fd))

# --- your own text, steering ---------------------------------------------------------------------
if workspaces.is_live(ws):
    st.divider()
    names = ["Test on your own text"] + (["Steer"] if ui.can_explain(ws) else [])
    tabs = st.tabs(names)
    with tabs[0]:
        ui.try_panel(ws, index, fd, ident)
    if len(tabs) > 1:
        with tabs[1]:
            ui.steer_panel(ws, index, fd, ident)

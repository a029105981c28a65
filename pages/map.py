"""Map page: every feature of the dictionary on a 2-D map of its decoder directions.

PCA is shown at once (exact, seconds even at 131,072 features); UMAP (cosine) is computed
on demand and kept in the memo, so it is computed once per dictionary. Points are coloured
by density or max activation once the whole-dictionary summary exists (built by a job on
the Search page), or by label when labels are known; a click opens the feature. At most
:data:`MAX_POINTS` points are drawn (an even stride over the indices, plus the searched
feature); the map itself always places every feature.

URL: ``?method=umap&find=12&colour=density``.
"""

from __future__ import annotations

import streamlit as st

from core import feature_map as fm
from core import map_chart
from pages import _jobs as jobs
from pages import _knowledge as knowledge
from pages import _links as links
from pages import _messages as messages
from pages import _state as state
from pages import _ui as ui

MAX_POINTS = 20_000
METHOD_LABELS = {"pca": "PCA (fast)", "umap": "UMAP (cosine)"}

ui.inject_css()
ws = state.require_workspace()
n = int(ws.n_features)
st.title("Feature map")

dictionary = getattr(ws, "dictionary", None)
if dictionary is None:
    st.info(
        "The map is computed from the dictionary's decoder directions: load the sources "
        "with a model and dictionary on the Sources page (a precomputed output has none).",
        icon=":material/scatter_plot:",
    )
    st.page_link(links.LOAD_PAGE, label="Sources", icon=":material/database:")
    st.stop()
memo = getattr(ws, "memo", None)


def _labels(shown: list[int]) -> dict[int, str] | None:
    """The knowledge store's labels of the ``shown`` features (one batched read), or ``None``."""
    return knowledge.labels(ws, shown) or None


# --- controls (kept in the URL) ------------------------------------------------------------------
method = st.query_params.get("method", "pca")
if method not in METHOD_LABELS:
    st.warning(f"Unknown map method {method!r} in the link: showing PCA.", icon=":material/map:")
    method = "pca"
find_raw = st.query_params.get("find")
find: int | None = None
if find_raw:
    try:
        find = ui.check_index(ws, find_raw)
    except ValueError as exc:
        st.warning(messages.error_message(exc), icon=":material/search_off:")

row = st.container(horizontal=True, vertical_alignment="bottom")
with row:
    chosen = st.segmented_control(
        "Method",
        list(METHOD_LABELS),
        default=method,
        format_func=METHOD_LABELS.get,
        key="fs_map_method",
    )
    if chosen and chosen != method:
        st.query_params["method"] = chosen
        method = chosen
    typed = st.number_input(
        "Find feature", min_value=0, max_value=n - 1, value=find, step=1, key="fs_map_find"
    )
    if typed is not None and typed != find:
        find = int(typed)
        st.query_params["find"] = str(find)

# --- the map -------------------------------------------------------------------------------------
try:
    fmap = fm.stored_map(dictionary, method, memo)
    if fmap is None and method == "pca":
        with st.spinner(f"PCA of {n:,} decoder directions …", show_time=True):
            fmap = fm.feature_map(dictionary, "pca", memo)
except fm.FeatureMapError as exc:
    st.error(messages.error_message(exc), icon=":material/error:")
    st.stop()
if fmap is None:  # UMAP, not computed yet
    st.info(
        f"UMAP of {n:,} features is computed once for this dictionary and kept (it can take "
        "minutes for large dictionaries). The PCA map is shown meanwhile.",
        icon=":material/hourglass_top:",
    )
    if st.button("Compute UMAP", icon=":material/play_arrow:", key="fs_map_umap"):
        try:
            # waits its turn in the compute queue like every sweep
            spin = st.spinner(f"UMAP of {n:,} decoder directions …", show_time=True)
            with spin, ws.gate():
                fmap = fm.feature_map(dictionary, "umap", memo)
        except fm.FeatureMapError as exc:
            st.error(messages.error_message(exc), icon=":material/error:")
    if fmap is None:
        fmap = fm.feature_map(dictionary, "pca", memo)

summary = jobs.summary_if_ready(ws)
keep = [find] if find is not None else []
shown = fm.draw_indices(n, MAX_POINTS, keep)
table = fm.map_table(fmap, shown, summary, _labels([int(i) for i in shown]))
options = map_chart.colour_options(table)
colour = st.query_params.get("colour", "density" if "density" in options else "none")
if colour not in options:
    colour = "none"
colour = (
    st.segmented_control(
        "Colour",
        options,
        default=colour,
        format_func=map_chart.COLOURS.get,
        key="fs_map_colour",
    )
    or "none"
)
if colour != st.query_params.get("colour", colour):
    st.query_params["colour"] = colour
if summary is None:
    st.caption(
        "Colour by density or max activation appears once the whole-dictionary summary is "
        "computed (Search page, by statistics)."
    )
caption = f"{METHOD_LABELS[fmap.method]} of {n:,} features"
if len(shown) < n:
    caption += f"; {len(shown):,} drawn (every {max(1, n // MAX_POINTS)}th, plus the one found)"
st.caption(caption + ". Click a point to open the feature.")

event = st.altair_chart(
    map_chart.map_chart(table, colour, keep),
    on_select="rerun",
    selection_mode=map_chart.SELECTION,
    key="fs_map_chart",
    width="stretch",
)
picked = map_chart.picked_feature(event)
if picked is not None:
    links.open_feature(ws, picked)

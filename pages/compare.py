"""Compare page: 2-4 features side by side.

``?features=1,2,3`` names them (links from the Feature page's correlated features and
from search results open it). Shown: their summaries, pairwise decoder cosine and
co-activation, logit tables, densities and top examples in columns; and, for one of them,
the nearest features by decoder cosine in another loaded dictionary of the same model.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import charts
from core import compare as cmp
from pages import _knowledge as knowledge
from pages import _links as links
from pages import _messages as messages
from pages import _state as state
from pages import _ui as ui
from pages import _workspaces as workspaces

ui.inject_css()
ws = state.require_workspace()
n = int(ws.n_features)
ident = workspaces.identity(ws)
st.title("Compare features")


def parse_features(raw: str | None) -> list[int]:
    """``"1, 2,3"`` as indices (order kept); a :class:`~core.compare.CompareError` naming a
    part that is not a whole number."""
    out: list[int] = []
    for part in (raw or "").replace(" ", ",").split(","):
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise cmp.CompareError(
                f"{part!r} is not a feature number: write the features like 1,2,3"
            ) from None
    return out


def _edited() -> None:
    text = (st.session_state.get("fs_compare_list") or "").strip()
    if text:
        st.query_params["features"] = text


raw = st.query_params.get("features", "")
st.text_input(
    f"Features (2 to {cmp.MAX_COMPARE}, of 0..{n - 1})",
    value=raw,
    placeholder="e.g. 3, 17, 42",
    key="fs_compare_list",
    on_change=_edited,
)
try:
    indices = cmp.check_indices(parse_features(raw), n)
except cmp.CompareError as exc:
    if raw:
        st.warning(messages.error_message(exc), icon=":material/compare_arrows:")
    else:
        st.info(
            "Name 2 to 4 features above, or open this page from a feature's correlated "
            "features or from search results.",
            icon=":material/compare_arrows:",
        )
    st.stop()

try:
    with st.spinner(f"Features {', '.join(map(str, indices))} …", show_time=True):
        result = cmp.compare(ws, indices)
except Exception as exc:
    st.error(messages.error_message(exc), icon=":material/error:")
    st.stop()

named = knowledge.labels(ws, indices)  # one batched read
names = [f"#{i} · {named[i]}" if i in named else f"#{i}" for i in indices]
left, right = st.columns(2)
with left:
    st.markdown("**Co-activation** (Pearson over tokens)")
    co = pd.DataFrame(result.coactivation, index=names, columns=names, dtype=float)
    st.dataframe(co.style.format("{:.3f}", na_rep="—"), width="stretch")
    st.caption(f"from {result.coactivation_source}")
with right:
    if result.decoder_cosine:
        st.markdown("**Decoder cosine**")
        cos = pd.DataFrame(result.decoder_cosine, index=names, columns=names)
        st.dataframe(cos.style.format("{:.3f}"), width="stretch")

cols = st.columns(len(indices))
for col, i in zip(cols, indices, strict=True):
    fd = result.features[i]
    with col:
        st.markdown(f"#### [Feature {i}]({links.feature_href(ws, i)})")
        if i in named:
            st.caption(messages.md(named[i]), help="its label (edit it on the feature page)")
        for name in ("summary", "act_hist", "logit_tables", "top_examples"):
            ui.render_component(name, fd, ws, [name])

# --- across dictionaries -------------------------------------------------------------------------
others = [
    w
    for w in workspaces.WORKSPACES.values()
    if w is not ws and getattr(w, "dictionary", None) is not None
]
st.subheader("Nearest features in another dictionary")
if not others or getattr(ws, "dictionary", None) is None:
    st.caption(
        "Load another dictionary of the same model (another width of this hook, or an "
        "adjacent layer) on the Sources page to list, for each feature here, its nearest "
        "features there by decoder cosine."
    )
    st.stop()
labels = {workspaces.identity(w): w for w in others}
other_id = st.selectbox(
    "Other dictionary",
    list(labels),
    format_func=lambda k: f"{k} · {labels[k].describe().get('dictionary', '')}",
    key="fs_compare_other",
)
of = st.selectbox("Nearest to feature", indices, key="fs_compare_of")
try:
    near = cmp.nearest_in_workspace(ws, int(of), labels[other_id], k=10)
except cmp.CompareError as exc:
    st.warning(messages.error_message(exc), icon=":material/warning:")
else:
    st.html(
        charts.table_html(
            charts.Table(
                indices=[r["feature"] for r in near],
                columns={"cosine": [r["cosine"] for r in near]},
            ),
            "feature",
        )
    )

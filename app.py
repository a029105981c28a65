"""FeatureScope: feature dashboards for sparse dictionaries on TransformerLens models.

Run with ``streamlit run app.py``. Pages (``pages/``): Sources (what is loaded,
precomputing), Search (by prompt, token, statistics, similarity), Feature (the
dashboard of one feature), Map (every feature on a 2-D map), Compare (2-4 features
side by side) and Lists (named lists of features, ``?list=<slug>``). The sidebar
always names the loaded model, dictionary,
dataset and device.

A link such as ``/?feature=12&ws=<id>&src=<sources>`` opens the Feature page directly,
loading the sources the link names (see ``pages/_links.py``).
"""

import logging

import streamlit as st

from core.queue import COMPUTE_QUEUE
from pages import _auth as auth
from pages import _knowledge as knowledge
from pages import _links as links
from pages import _sidebar as sidebar
from pages import _state as state
from pages import _workspaces as workspaces

log = logging.getLogger("featurescope.app")

st.set_page_config(
    page_title="FeatureScope",
    page_icon=":material/biotech:",
    layout="wide",
    initial_sidebar_state="expanded",
)

# Hosted mode (a hosted configuration exists, see core/hosted.py): nobody sees more than
# the sign-in until the login gate lets them in; the navigation then holds that page only.
try:
    hosted = auth.hosted()
except ValueError as exc:  # a broken hosted configuration: the operator must fix it
    log.error("hosted configuration: %s", exc)
    st.error(f"The server's hosted configuration is invalid: {exc}", icon=":material/error:")
    st.stop()
# Without hosted mode any path can be loaded: such a server serves this machine only,
# unless the operator opted in (core/hosted.py network_problem).
refusal = auth.network_refusal(hosted)
if refusal is not None:
    st.error(refusal, icon=":material/lan:")
    st.stop()
if hosted is not None:
    COMPUTE_QUEUE.set_slots(hosted.limits.max_concurrent_computations)
    if not auth.may_enter(hosted):
        st.navigation(
            [
                st.Page(
                    lambda: auth.access_gate(hosted),
                    title="Sign in",
                    url_path="signin",
                    default=True,
                )
            ],
            position="hidden",
        ).run()
        st.stop()

load_page = st.Page(
    links.LOAD_PAGE, title="Sources", icon=":material/database:", url_path="sources", default=True
)
# The default page is served at the root only; ``/load`` (the Sources page's name in links)
# opens it there instead of "Page not found".
load_alias = st.Page(
    lambda: st.switch_page(load_page, query_params=st.query_params.to_dict()),
    title="Sources",
    url_path="load",
    visibility="hidden",
)
search_page = st.Page(
    links.SEARCH_PAGE, title="Search", icon=":material/search:", url_path="search"
)
feature_page = st.Page(
    links.FEATURE_PAGE, title="Feature", icon=":material/insights:", url_path="feature"
)
map_page = st.Page(links.MAP_PAGE, title="Map", icon=":material/scatter_plot:", url_path="map")
compare_page = st.Page(
    links.COMPARE_PAGE, title="Compare", icon=":material/compare_arrows:", url_path="compare"
)
lists_page = st.Page(
    knowledge.LISTS_PAGE, title="Lists", icon=":material/format_list_bulleted:", url_path="lists"
)
page = st.navigation(
    [load_page, search_page, feature_page, map_page, compare_page, lists_page, load_alias]
)
links.init_session()  # after the navigation, so the page list shows at once
if links.link_confirmation():  # a link names sources not loaded here: ask first
    st.stop()

# A deep link to the root (``/?feature=12``) opens the feature page.
if page.url_path == load_page.url_path and "feature" in st.query_params:
    st.switch_page(feature_page, query_params=st.query_params.to_dict())

with st.sidebar:
    st.markdown("### :material/biotech: FeatureScope")
with workspaces.queue_notice():  # shows this session's place while it waits for the model
    ws = state.workspace()
    sidebar.sidebar(ws)
    page.run()

"""FeatureScope: feature dashboards for sparse dictionaries on TransformerLens models.

Run with ``streamlit run app.py``. Three pages (``pages/``): Sources (what is loaded,
precomputing), Search (by prompt, token, statistics, similarity) and Feature (the
dashboard of one feature). The sidebar always names the loaded model, dictionary,
dataset and device.

A link such as ``/?feature=12&ws=<id>&src=<sources>`` opens the Feature page directly,
loading the sources the link names (see ``pages/_state.py``).
"""

import streamlit as st

from pages import _state as state

st.set_page_config(
    page_title="FeatureScope",
    page_icon=":material/biotech:",
    layout="wide",
    initial_sidebar_state="expanded",
)

load_page = st.Page(
    state.LOAD_PAGE, title="Sources", icon=":material/database:", url_path="load", default=True
)
search_page = st.Page(
    state.SEARCH_PAGE, title="Search", icon=":material/search:", url_path="search"
)
feature_page = st.Page(
    state.FEATURE_PAGE, title="Feature", icon=":material/insights:", url_path="feature"
)
page = st.navigation([load_page, search_page, feature_page])
state.init_session()  # after the navigation, so the page list shows at once

# A deep link to the root (``/?feature=12``) opens the feature page.
if page.url_path == load_page.url_path and "feature" in st.query_params:
    st.switch_page(feature_page, query_params=st.query_params.to_dict())

with st.sidebar:
    st.markdown("### :material/biotech: FeatureScope")
ws = state.workspace()
state.sidebar(ws)
page.run()

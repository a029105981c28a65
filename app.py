"""Streamlit entry point (the full app arrives with the app issue)."""

import streamlit as st

st.set_page_config(page_title="Feature dashboards", layout="wide")
st.title("Feature dashboards")
st.write("Compute core is in `core/`; run `python -m core --help` for the command line.")

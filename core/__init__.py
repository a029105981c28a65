"""Compute core: sources, the sweep engine, the memo layer, charts and exports.

Nothing in this package imports Streamlit; the app pages only read the plain data it returns.
"""

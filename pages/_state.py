"""This session's workspace: the one the pages show, loaded with a spinner.

The rest of the app's state lives in rooms of its own: :mod:`pages._links` (the session's
sources, URLs and the link question), :mod:`pages._workspaces` (workspaces shared by every
session), :mod:`pages._jobs` (background jobs), :mod:`pages._auth` (hosted mode and the
login gate), :mod:`pages._sidebar`, :mod:`pages._messages` (errors shown to the user) and
:mod:`pages._through_app` (every run goes through ``app.py``). Nothing here imports torch
directly; the workspace does that.
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from pages._links import LOAD_PAGE, sources, sources_label
from pages._messages import error_message
from pages._through_app import through_app
from pages._workspaces import open_workspace


def workspace() -> Any | None:
    """This session's workspace, loading it with a spinner; ``None`` (and the error kept
    in ``st.session_state["fs_load_error"]``) when it cannot be loaded. A page that
    Streamlit ran without ``app.py`` stops here and reruns through it."""
    through_app()
    src = sources()
    err_key = json.dumps(src, sort_keys=True)
    if st.session_state.get("fs_load_error_for") == err_key:
        return None
    try:
        with st.spinner(f"Loading {sources_label(src)} …", show_time=True):
            return open_workspace(src)
    except Exception as exc:
        st.session_state["fs_load_error"] = error_message(exc)
        st.session_state["fs_load_error_for"] = err_key
        return None


def retry_load() -> None:
    """Forget a failed load so the next run tries again."""
    st.session_state.pop("fs_load_error_for", None)
    st.session_state.pop("fs_load_error", None)


def require_workspace() -> Any:
    """The workspace, or an explanation plus a link to the Sources page and ``st.stop()``."""
    ws = workspace()
    if ws is None:
        st.error(
            "Nothing is loaded: " + st.session_state.get("fs_load_error", "unknown error"),
            icon=":material/error:",
        )
        st.page_link(LOAD_PAGE, label="Choose sources", icon=":material/database:")
        st.stop()
    return ws

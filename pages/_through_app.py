"""The one workaround for Streamlit's ``pages/`` folder: every run goes through ``app.py``.

Why it exists. The app's layout is fixed: the page files live in ``pages/`` next to
``app.py``. Streamlit treats such a folder as its old multipage mode: until a run of
``app.py`` has called ``st.navigation``, a request for ``/feature`` or ``/search`` runs
that page file by itself, skipping ``app.py`` (the login gate, the navigation, the queue
notice). On a fresh server, whoever first opened such a URL skipped the login gate, and so
did everyone after them until someone opened ``/``. Streamlit offers no setting to turn the
mode off (``client.showSidebarNavigation`` only hides the page list).

What it does. :func:`through_app` looks up the call stack for ``app.py``; when a page runs
without it, it turns the mode off for the process, as ``st.navigation`` itself does, and
reruns (the same page, now through ``app.py`` and behind the gate). A session that has been
through ``app.py`` is let be: on a server the mode stays off from then on; only
``AppTest`` turns it back on before every run.

What it relies on (checked against Streamlit 1.67, the version ``requirements.txt`` pins):
``sys._getframe`` (CPython) and the class attribute
``streamlit.runtime.pages_manager.PagesManager.uses_pages_directory``, which the script
runner reads before each run and ``st.navigation`` sets to ``False``.
``tests/app/test_through_app.py`` fails when that attribute goes; then find the new switch
in ``streamlit/commands/navigation.py`` (what ``st.navigation`` sets) and use it here.
"""

from __future__ import annotations

import logging
import os
import sys

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

log = logging.getLogger("featurescope.app")

APP_FILE = os.path.realpath(os.path.join(os.path.dirname(__file__), os.pardir, "app.py"))
_SEEN_KEY = "fs_through_app"


def through_app() -> None:
    """Make sure this session entered through ``app.py``; otherwise turn Streamlit's
    pages-folder mode off and start the run again (through ``app.py``)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.endswith("app.py") and os.path.realpath(name) == APP_FILE:
            st.session_state[_SEEN_KEY] = True
            return
        frame = frame.f_back
    if st.session_state.get(_SEEN_KEY):
        return
    log.warning("a page ran without app.py (Streamlit's pages-folder mode): rerunning")
    PagesManager.uses_pages_directory = False
    st.rerun()

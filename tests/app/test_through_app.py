"""The pages-folder workaround (``pages/_through_app.py``) against the pinned Streamlit.

It relies on a private Streamlit attribute; these tests fail, saying what to do, when an
upgrade removes it or when Streamlit is upgraded without the workaround being checked again.
"""

from __future__ import annotations

import inspect
import re

import streamlit
from streamlit.commands import navigation
from streamlit.runtime.pages_manager import PagesManager

from pages import _through_app
from tests.app.conftest import ROOT, run_app, texts

UPGRADE = (
    "pages/_through_app.py relies on this; read streamlit/commands/navigation.py for the "
    "switch st.navigation now sets to leave the pages-folder mode, use it in "
    "through_app, and update the module docstring with the version checked"
)


def test_the_private_switch_still_exists():
    assert hasattr(PagesManager, "uses_pages_directory"), (
        f"PagesManager.uses_pages_directory is gone from Streamlit {streamlit.__version__}: "
        + UPGRADE
    )
    # through_app does what st.navigation does to leave the pages-folder mode
    assert "PagesManager.uses_pages_directory = False" in inspect.getsource(navigation), (
        f"st.navigation no longer sets PagesManager.uses_pages_directory in Streamlit "
        f"{streamlit.__version__}: " + UPGRADE
    )


def test_checked_against_the_pinned_version():
    pin = re.search(r"^streamlit==(\d+\.\d+)", (ROOT / "requirements.txt").read_text(), re.M)
    assert pin is not None, "requirements.txt no longer pins streamlit==X.Y.*"
    assert streamlit.__version__.startswith(pin.group(1) + "."), (
        f"Streamlit {streamlit.__version__} is installed but requirements.txt pins {pin.group(1)}"
    )
    doc = _through_app.__doc__ or ""
    assert f"Streamlit {pin.group(1)}" in doc, (
        f"requirements.txt pins Streamlit {pin.group(1)}, but pages/_through_app.py was "
        "checked against another version: check the workaround again (the tests here and "
        "the hosted app tests) and update its docstring"
    )


def test_a_page_run_without_app_py_is_run_again_through_it(tiny_ws):
    # AppTest turns the pages-folder mode back on before every run, so a page asked for
    # by name runs on its own first, like the first visitor of /feature on a fresh server
    at = run_app("pages/feature.py", feature="1")
    assert at.session_state["fs_through_app"]
    assert "FeatureScope" in texts(at.sidebar.markdown)  # app.py's sidebar: it ran
    assert "## Feature 1" in texts(at.markdown)

"""What the user reads when something goes wrong, and markdown escaping of shown data.

* :func:`error_message` turns an exception into one plain sentence, told apart by type:
  the project's own errors (:class:`~core.errors.FeaturescopeError`) and the library errors
  core lets through on purpose verbatim, anything else named as unexpected and logged with
  its traceback.
* :func:`shown_errors` shows such a message as ``st.error`` and lets the page carry on.
* :func:`md` escapes markdown specials in data shown through ``st.markdown``/``st.caption``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import streamlit as st

from core.errors import FeaturescopeError

log = logging.getLogger("featurescope.app")


def md(text: str) -> str:
    """Escape markdown specials in data shown through ``st.markdown``/``st.caption``."""
    for ch in "\\`*_[]<>#|~$":
        text = text.replace(ch, "\\" + ch)
    return text


#: errors whose message is meant for the user: every error of ours, and the library errors
#: that core lets through on purpose (a bad value, a missing key or file)
SHOWN_AS_IS = (FeaturescopeError, ValueError, KeyError, FileNotFoundError)


def error_message(exc: BaseException) -> str:
    """A plain message for the user: our own errors (and :data:`SHOWN_AS_IS`) verbatim,
    others named as unexpected and logged with their traceback."""
    if isinstance(exc, SHOWN_AS_IS):
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return text[0].upper() + text[1:] if text else type(exc).__name__
    log.exception("unexpected error in the app")
    return f"{type(exc).__name__}: {exc} (unexpected; the server log has the details)"


@contextlib.contextmanager
def shown_errors(prefix: str = "") -> Iterator[None]:
    """Show any error raised inside as ``st.error`` (no traceback) and carry on."""
    try:
        yield
    except Exception as exc:
        st.error(f"{prefix}{error_message(exc)}", icon=":material/error:")

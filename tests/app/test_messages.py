"""Errors shown to the user are told apart by type (``pages/_messages.py``)."""

from __future__ import annotations

from core.errors import FeaturescopeError
from core.memo import MemoError
from core.precomputed import PrecomputedError
from pages._messages import error_message, md


def test_our_errors_are_shown_verbatim_whatever_their_builtin_base():
    assert error_message(MemoError("the cache is damaged")) == "The cache is damaged"
    assert error_message(PrecomputedError("feature 7 was not computed")) == (
        "Feature 7 was not computed"  # a KeyError: its message, not its repr
    )

    class Ours(FeaturescopeError, RuntimeError):
        pass

    assert error_message(Ours("no such layer")) == "No such layer"


def test_library_errors_core_lets_through_are_shown_verbatim():
    assert error_message(ValueError("bad value")) == "Bad value"
    assert error_message(KeyError("missing")) == "Missing"
    assert error_message(FileNotFoundError("no file")) == "No file"


def test_other_errors_are_named_unexpected_even_with_one_of_our_names():
    class SourceError(RuntimeError):  # our name, not our type
        pass

    for exc in (RuntimeError("boom"), SourceError("boom")):
        text = error_message(exc)
        assert text.startswith(f"{type(exc).__name__}: boom") and "unexpected" in text


def test_markdown_specials_are_escaped():
    assert md("a*b_[c]") == "a\\*b\\_\\[c\\]"

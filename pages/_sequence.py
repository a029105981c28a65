"""Feature page: top examples 20 at a time, and any example expanded to its whole stored
row (the feature's activation on every token, computed on demand) with, for text datasets,
the text of its document around it (:mod:`core.corpus_search`)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core import charts
from core.engine.features import Example
from pages import _messages as messages

#: top examples shown at a time
PAGE = 20
#: characters of the surrounding document shown on each side
DOC_CHARS = 3000


def page_bounds(n: int, page: int, per_page: int = PAGE) -> tuple[int, int]:
    """``[start, stop)`` of 1-based ``page`` over ``n`` items (clamped to the last page)."""
    pages = max(1, -(-n // per_page))
    page = min(max(1, int(page)), pages)
    return (page - 1) * per_page, min(n, page * per_page)


def _next(key: str, pages: int) -> None:
    st.session_state[key] = min(pages, int(st.session_state.get(key, 1)) + 1)


def top_examples(fd: Any) -> None:
    """The top examples, :data:`PAGE` at a time when the pool is larger; for a signed
    feature (a given direction) the most positive and the most negative ones."""
    n = max(len(fd.top_examples), len(fd.bottom_examples))
    if n <= PAGE:
        if fd.signed:
            st.html(charts.signed_examples_html(fd))
        else:
            st.html(charts.examples_html(fd.top_examples, fd.max_act))
        return
    key = f"fs_top_page_{fd.index}"
    pages = -(-n // PAGE)
    row = st.container(horizontal=True, vertical_alignment="bottom")
    page = row.number_input(f"Page (of {pages})", 1, pages, key=key, width=140)
    row.button(
        f"Next {PAGE}",
        key=f"{key}_next",
        disabled=page >= pages,
        on_click=_next,
        args=(key, pages),
        icon=":material/chevron_right:",
    )
    a, b = page_bounds(n, page)
    row.caption(f"examples {a + 1}–{b} of {n}")
    if fd.signed:
        st.html(charts.signed_examples_html(fd, a, b))
    else:
        st.html(charts.examples_html(fd.top_examples[a:b], fd.max_act))


def _choices(fd: Any) -> list[tuple[str, Example]]:
    out = [(f"top {k + 1}", e) for k, e in enumerate(fd.top_examples)]
    out += [(f"bottom {k + 1}", e) for k, e in enumerate(fd.bottom_examples)]
    for g in reversed(fd.intervals):
        out += [(f"interval ({g.lo:.2f}, {g.hi:.2f}]", e) for e in g.examples]
    return out


def whole_sequence_panel(ws: Any, fd: Any) -> None:
    """Pick a top example or interval sample: its whole row, scrollable, with the feature's
    activation on every token, and the surrounding document when rows are cut from one."""
    choices = _choices(fd)
    if not choices:
        return
    with st.expander("Whole sequence of an example", icon=":material/unfold_more:"):
        k = st.selectbox(
            "Example",
            range(len(choices)),
            format_func=lambda j: (
                f"{choices[j][0]}: seq {choices[j][1].seq}, position {choices[j][1].pos} "
                f"({choices[j][1].value:.3f})"
            ),
            key=f"fs_seq_pick_{fd.index}",
        )
        ex = choices[k][1]
        with messages.shown_errors():
            got = ws.sequence_activations(fd.index, ex.seq)
            row = Example(
                seq=ex.seq,
                pos=ex.pos,
                value=ex.value,
                start=0,
                token_ids=got["token_ids"],
                tokens=got["tokens"],
                acts=got["acts"],
            )
            doc = ws.document_rows(ex.seq)
            st.caption(
                f"All {len(row.tokens)} tokens of row {ex.seq} (the example's token outlined); "
                "hover a token for its activation."
            )
            with st.container(height=360, key="fs_whole_seq"):
                if doc and doc["before_text"]:
                    st.text("…" + doc["before_text"][-DOC_CHARS:])
                st.html(charts.example_html(row, max(fd.max_act, max(row.acts, default=0.0))))
                if doc and doc["after_text"]:
                    st.text(doc["after_text"][:DOC_CHARS] + "…")
            if doc is not None:
                st.caption(
                    f"Document around it: {len(doc['before'])} row(s) before, "
                    f"{len(doc['after'])} after (rows are cut from one stream of documents)."
                )

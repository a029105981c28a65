"""Search page, mode "In the dataset": find a string or a regular expression in the loaded
token set, list the occurrences with context (paged), and show the features most active at
a chosen one (:mod:`core.corpus_search`)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core import charts
from pages import _messages as messages
from pages import _results as results

#: occurrences per page of the list
PAGE = 20


def _run(ws: Any, ident: str, query: str, regex: bool, case: bool) -> None:
    with messages.shown_errors():
        hits = ws.corpus_search(query, regex=regex, case_sensitive=case)
        st.session_state["fs_corpus_result"] = {
            "ident": ident,
            "query": query,
            "total": hits.total,
            "complete": hits.complete,
            "rows_searched": hits.rows_searched,
            "n_rows": hits.n_rows,
            "occurrences": [(o.seq, o.pos, o.before, o.match, o.after) for o in hits.occurrences],
        }
        st.session_state["fs_corpus_page"] = 1


def _context(before: str, match: str, after: str) -> str:
    show = charts.visible_token
    return f"…{show(before)}【{show(match)}】{show(after)}…"


def corpus_panel(ws: Any, ident: str) -> None:
    """The mode's form, its paged occurrences and the features at the chosen one."""
    with st.form("fs_corpus_form", border=False):
        query = st.text_input(
            "Find in the dataset",
            key="fs_corpus_q",
            placeholder="e.g. iterable  or  \\bdef\\s+\\w+",
            max_chars=200,
        )
        c1, c2, c3 = st.columns([1, 1, 3], vertical_alignment="bottom")
        regex = c1.checkbox("Regular expression", key="fs_corpus_re")
        case = c2.checkbox("Match case", value=True, key="fs_corpus_case")
        go = c3.form_submit_button("Find", type="primary", icon=":material/search:")
    if go:
        _run(ws, ident, query, regex, case)
    res = st.session_state.get("fs_corpus_result")
    if not res or res["ident"] != ident:
        st.caption(
            "Each row of the token set is read as its tokens' text joined (BOS as a line "
            "break); a match belongs to the token holding its first character."
        )
        return
    occ = res["occurrences"]
    where = (
        f"all {res['n_rows']:,} rows"
        if res["complete"]
        else f"the first {res['rows_searched']:,} of {res['n_rows']:,} rows (time limit)"
    )
    shown = f"; the first {len(occ):,} are listed" if res["total"] > len(occ) else ""
    st.caption(
        f"**{res['total']:,}** occurrence{'s' if res['total'] != 1 else ''} of "
        f"{messages.md(repr(res['query']))} in {where}{shown}."
    )
    if not occ:
        return
    pages = (len(occ) + PAGE - 1) // PAGE
    page = 1
    if pages > 1:
        page = int(
            st.number_input(f"Page (of {pages:,})", 1, pages, key="fs_corpus_page", width=160)
        )
    first = (page - 1) * PAGE
    part = occ[first : first + PAGE]
    df = pd.DataFrame(
        {
            "#": range(first + 1, first + len(part) + 1),
            "row": [o[0] for o in part],
            "position": [o[1] for o in part],
            "context": [_context(*o[2:]) for o in part],
        }
    )
    event = st.dataframe(
        df,
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        key=f"fs_corpus_table_{page}",
        column_config={"context": st.column_config.TextColumn(width="large")},
    )
    picked = event.selection.rows if event is not None else []
    if not picked:
        st.caption("Pick an occurrence to see the features most active at its token.")
        return
    seq, pos = part[picked[0]][:2]
    st.markdown(f"**Features most active at row {seq}, position {pos}** (whole dictionary)")
    with messages.shown_errors():
        top = ws.features_at(seq, pos, k=20)
        results.feature_table(
            ws,
            [{"feature": r["feature"], "activation": r["act"]} for r in top],
            key=f"fs_corpus_feats_{seq}_{pos}",
            columns={"activation": st.column_config.NumberColumn(format="%.3f")},
        )

"""Lists page: named collections of features (from one or several dictionaries), each
with a note per entry.

``?list=<slug>`` opens a list (its link). Lists are created here, features are added from
the Feature page ("Add to list"); a list downloads as CSV and, for the features of the
loaded dictionary, as one standalone HTML page. Accounts that may only read (hosted
``[knowledge] writers``) see the lists without the editing controls.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.knowledge.listing import list_csv, list_rows
from pages import _export as export
from pages import _knowledge as knowledge
from pages import _links as links
from pages import _messages as messages
from pages import _state as state
from pages import _ui as ui

ui.inject_css()
ws = state.require_workspace()
store = knowledge.store()
ed = knowledge.editor()
key = knowledge.dictionary_key(ws)

st.title("Lists")
knowledge.read_only_notice(ed)


def _create() -> None:
    name = st.session_state.get("fs_list_new_name", "")
    with messages.shown_errors():
        view = ed.create_list(name, st.session_state.get("fs_list_new_desc", ""))
        st.query_params["list"] = view.slug
        st.session_state["fs_list_new_name"] = ""
        st.session_state["fs_list_new_desc"] = ""


if ed.can_write:
    new = st.popover("New list", icon=":material/playlist_add:")
    with new, st.form("fs_list_new", border=False):
        st.text_input("Name", key="fs_list_new_name")
        st.text_area("Description", key="fs_list_new_desc", height=68)
        st.form_submit_button("Create", type="primary", on_click=_create)

lists = {v.slug: v for v in store.lists()}
want = st.query_params.get("list")
if want and want not in lists:
    st.warning(
        f"There is no list {messages.md(repr(want))}; it may have been deleted.",
        icon=":material/link_off:",
    )
if not lists:
    st.info(
        "No lists yet. Create one above, then add features from their pages (Add to list).",
        icon=":material/list:",
    )
    st.stop()
if st.session_state.get("fs_list_url") != want or "fs_list_pick" not in st.session_state:
    st.session_state["fs_list_pick"] = want if want in lists else next(iter(lists))
    st.session_state["fs_list_url"] = want
if st.session_state["fs_list_pick"] not in lists:  # deleted meanwhile
    st.session_state["fs_list_pick"] = next(iter(lists))


def _picked() -> None:
    st.query_params["list"] = st.session_state["fs_list_pick"]
    st.session_state["fs_list_url"] = st.session_state["fs_list_pick"]


slug = st.selectbox(
    "List",
    list(lists),
    key="fs_list_pick",
    format_func=lambda s: f"{lists[s].name} ({len(lists[s].entries)})",
    on_change=_picked,
)
if st.query_params.get("list") != slug:
    st.query_params["list"] = slug
    st.session_state["fs_list_url"] = slug
view = lists[slug]
st.caption(
    f"{messages.md(view.description)}  \ncreated by {messages.md(view.created_by)} · "
    f"{len(view.entries)} features"
)
with st.popover("Link", icon=":material/link:"):
    try:
        st.code(export.share_url(f"lists?list={slug}"), language=None, wrap_lines=True)
    except ValueError as exc:
        st.warning(str(exc), icon=":material/link_off:")

rows = list_rows(store, view)
if not rows:
    st.caption("This list is empty: add features from their pages (Add to list).")
else:
    df = pd.DataFrame(rows)
    df["open"] = [
        links.feature_href(ws, int(r["feature"])) if r["dictionary_key"] == key else None
        for r in rows
    ]
    df["dictionary"] = [
        r["dictionary"]
        or ("this dictionary" if r["dictionary_key"] == key else "")
        or r["dictionary_key"][:12]
        for r in rows
    ]
    st.dataframe(
        df[["feature", "open", "label", "note", "dictionary"]],
        hide_index=True,
        key="fs_list_table",
        column_config={
            "feature": st.column_config.NumberColumn(format="%d", width="small"),
            "open": st.column_config.LinkColumn(
                "link",
                display_text="open ↗",
                width="small",
                help="features of the loaded dictionary",
            ),
        },
    )
    here = [int(r["feature"]) for r in rows if r["dictionary_key"] == key]
    c1, c2 = st.columns(2)
    with c1:
        st.download_button(
            "Download as CSV",
            data=list_csv(store, view),
            file_name=f"{slug}.csv",
            mime="text/csv",
            icon=":material/download:",
            on_click="ignore",
            key="fs_list_csv",
        )
    with c2:
        export.export_features_button(ws, here, key="fs_list_html")

if ed.can_write:
    with st.expander("Edit this list"):
        if rows:
            with st.form("fs_list_entry", border=False):
                pick = st.selectbox(
                    "Entry",
                    range(len(rows)),
                    format_func=lambda k: (
                        f"feature {rows[k]['feature']} "
                        f"({rows[k]['dictionary'] or rows[k]['dictionary_key'][:12]})"
                    ),
                    key="fs_list_entry_pick",
                )
                note = st.text_input("Note", key="fs_list_entry_note")
                save = st.form_submit_button("Save note")
                remove = st.form_submit_button("Remove from list")
            if save or remove:
                r = rows[pick]
                with messages.shown_errors():
                    if save:
                        ed.add_to_list(slug, r["dictionary_key"], int(r["feature"]), note=note)
                    else:
                        ed.remove_from_list(slug, r["dictionary_key"], int(r["feature"]))
                    st.rerun()
        with st.form("fs_list_rename", border=False):
            new_name = st.text_input("Name", value=view.name, key=f"fs_list_name_{slug}")
            new_desc = st.text_area(
                "Description", value=view.description, key=f"fs_list_desc_{slug}", height=68
            )
            if st.form_submit_button("Rename"):
                with messages.shown_errors():
                    ed.rename_list(slug, new_name, new_desc)
                    st.rerun()
        if st.button("Delete this list", icon=":material/delete:", key="fs_list_delete"):
            with messages.shown_errors():
                ed.delete_list(slug)
                st.query_params.pop("list", None)
                st.rerun()

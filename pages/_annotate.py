"""The feature page's notes panel: label, Markdown notes, tags, history, delete and undo,
the automatic label (shown as "auto", never in the label field), stored explanations,
and "Add to list".

Notes are Markdown rendered by ``st.markdown`` without raw HTML; every other stored string
is escaped (:func:`pages._messages.md`). Writes go through the session's
:class:`core.knowledge.access.Editor`, which refuses read-only accounts in core.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.explain.autolabel import auto_label
from core.feature_source import FeatureSource
from core.knowledge.access import Editor
from pages import _explain as explain
from pages import _knowledge as knowledge
from pages import _messages as messages
from pages import _sidebar as sidebar


def _save(ed: Editor, key: str, index: int, widget: str) -> None:
    label = st.session_state.get(f"{widget}_label", "")
    notes = st.session_state.get(f"{widget}_notes", "")
    tags = [t.strip() for t in str(st.session_state.get(f"{widget}_tags", "")).split(",")]
    with messages.shown_errors():
        ed.annotate(key, index, label=label, notes=notes, tags=[t for t in tags if t])
        st.session_state["fs_ann_saved"] = index


def _delete(ed: Editor, key: str, index: int, undo: bool) -> None:
    with messages.shown_errors():
        if undo:
            ed.undo_delete(key, index)
        else:
            ed.delete(key, index)


def _change(entry: Any) -> str:
    parts = []
    for name, after in entry.after.items():
        before = entry.before.get(name)
        if name == "notes":
            parts.append("notes edited")
        elif name == "deleted":
            parts.append("deleted" if after else "restored")
        else:
            parts.append(f"{name}: {before!r} → {after!r}")
    return "; ".join(parts)


def auto_text(fd: Any) -> str | None:
    """The automatic label of ``fd`` (no language model), or ``None`` for a dead feature."""
    got = auto_label(fd)
    return got.text if got is not None else None


def panel(ws: FeatureSource, index: int, fd: Any) -> None:
    """Everything people and models said about feature ``index``, editable when allowed."""
    key = knowledge.dictionary_key(ws)
    if key is None:
        st.caption("Notes cannot be kept for this output (no dictionary fingerprint).")
        return
    store = knowledge.store()
    ed = knowledge.editor()
    ann = store.annotation(key, index, include_deleted=True)
    deleted = ann is not None and ann.deleted
    auto = auto_text(fd)
    if auto:
        st.caption(f"auto: {messages.md(auto)}", help="An automatic label (no language model).")
    knowledge.read_only_notice(ed)
    if deleted:
        st.info("This feature's notes were deleted.", icon=":material/delete:")
        if ed.can_write:
            st.button(
                "Undo delete",
                key="fs_ann_undo",
                icon=":material/undo:",
                on_click=_delete,
                args=(ed, key, index, True),
            )
    else:
        if ann is not None and ann.notes.strip():
            st.markdown(ann.notes)  # Markdown, raw HTML not rendered
        if ann is not None and ann.tags:
            st.caption("tags: " + ", ".join(f"`{messages.md(t)}`" for t in ann.tags))
        if ed.can_write:
            widget = f"fs_ann_{index}_{ann.version if ann else 0}"
            with st.form(widget, border=False):
                st.text_input("Label", value=ann.label if ann else "", key=f"{widget}_label")
                st.text_area(
                    "Notes (Markdown)",
                    value=ann.notes if ann else "",
                    key=f"{widget}_notes",
                    height=100,
                )
                st.text_input(
                    "Tags (comma-separated)",
                    value=", ".join(ann.tags) if ann else "",
                    key=f"{widget}_tags",
                )
                st.form_submit_button(
                    "Save",
                    icon=":material/save:",
                    on_click=_save,
                    args=(ed, key, index, widget),
                )
            if ann is not None:
                st.button(
                    "Delete notes",
                    key="fs_ann_delete",
                    icon=":material/delete:",
                    on_click=_delete,
                    args=(ed, key, index, False),
                    help="Undoable: the notes are kept and can be brought back.",
                )
    history = store.history(key, index)
    if history:
        with st.expander(f"History ({len(history)} edits)"):
            for entry in reversed(history):
                st.caption(
                    f"v{entry.version} · {entry.at:%Y-%m-%d %H:%M} · "
                    f"{messages.md(entry.author)} · {entry.action}: {messages.md(_change(entry))}"
                )
    if ed.can_write:
        add_to_list(ws, ed, key, index)
    explanations(store.explanations(key, index))
    explain.button(ws, ed, key, index)


def _add(ed: Editor, key: str, index: int, name: str) -> None:
    slug = st.session_state.get("fs_add_list")
    note = st.session_state.get("fs_add_list_note", "")
    with messages.shown_errors():
        ed.describe_dictionary(key, name)
        ed.add_to_list(slug, key, index, note=note)
        st.session_state["fs_add_list_note"] = ""
        st.toast(f"Feature {index} added to the list.", icon=":material/playlist_add_check:")


def add_to_list(ws: FeatureSource, ed: Editor, key: str, index: int) -> None:
    """ "Add to list": pick a list, an optional note, add (again: updates the note)."""
    lists = {v.slug: v.name for v in ed.store.lists()}
    with st.popover("Add to list", icon=":material/playlist_add:"):
        if not lists:
            st.caption("No lists yet: create one on the Lists page.")
        else:
            st.selectbox("List", list(lists), format_func=lists.__getitem__, key="fs_add_list")
            st.text_input("Note", key="fs_add_list_note")
            name = dict(sidebar.describe_lines(ws)).get("Dictionary", "")
            st.button("Add", key="fs_add_list_go", on_click=_add, args=(ed, key, index, name))
        st.page_link(knowledge.LISTS_PAGE, label="Lists", icon=":material/format_list_bulleted:")


def explanations(items: list[Any]) -> None:
    """Stored explanations with their scores and explainer."""
    if not items:
        return
    st.markdown("**Explanations**")
    for e in items:
        scores = " · ".join(f"{k} {v:.2f}" for k, v in sorted(e.scores.items()))
        st.markdown(f"{messages.md(e.text)}")
        st.caption(
            f"{messages.md(e.explainer)} · {messages.md(e.method)} · prompt "
            f"{messages.md(e.prompt_version)} · {scores or 'not scored'}"
        )

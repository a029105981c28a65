"""AppTest of the Lists page: create a list, add the current feature from its page with a
note, open the list by its link, CSV contents, remove, delete."""

from __future__ import annotations

import csv
import io

import pytest

from core.knowledge.access import shared_store
from core.knowledge.listing import list_csv
from tests.app.conftest import run_app, texts

pytestmark = pytest.mark.usefixtures("app_env")


def test_create_add_open_and_export_a_list(tiny_ws):
    key = tiny_ws.dictionary_key()
    at = run_app("pages/lists.py")
    assert "No lists yet" in texts(at.info)
    at.text_input(key="fs_list_new_name").input("Code features")
    at.text_area(key="fs_list_new_desc").input("things about **code**")
    next(b for b in at.button if b.label == "Create").click().run()
    assert not at.exception
    assert at.query_params["list"] == "code-features"

    shared_store().annotate(key, 12, label="=cmd|' /C calc'!A0", author="tester")
    for feature, note in (("12", "the first"), ("3", "")):
        at = run_app("pages/feature.py", feature=feature)
        at.selectbox(key="fs_add_list").set_value("code-features")
        at.text_input(key="fs_add_list_note").input(note)
        at.button(key="fs_add_list_go").click().run()
        assert not at.exception, [e.value for e in at.exception]
    view = shared_store().list_by_slug("code-features")
    assert [(e.feature, e.note) for e in view.entries] == [(12, "the first"), (3, "")]

    at = run_app("pages/lists.py", list="code-features")
    table = at.dataframe[0].value
    assert list(table["feature"]) == [12, 3]
    assert list(table["label"]) == ["=cmd|' /C calc'!A0", ""]
    assert list(table["note"]) == ["the first", ""]
    assert table["open"][0].startswith("feature?feature=12")
    csv_button = next(d for d in at.get("download_button") if "CSV" in d.proto.label)
    assert csv_button is not None
    rows = list(csv.DictReader(io.StringIO(list_csv(shared_store(), view))))
    assert [(r["feature"], r["note"], r["dictionary_key"]) for r in rows] == [
        ("12", "the first", key),
        ("3", "", key),
    ]
    assert rows[0]["label"] == "'=cmd|' /C calc'!A0"  # never run as a formula

    at.selectbox(key="fs_list_entry_pick").set_value(1)
    at.text_input(key="fs_list_entry_note").input("second note")
    next(b for b in at.button if b.label == "Save note").click().run()
    assert list(at.dataframe[0].value["note"]) == ["the first", "second note"]
    at.selectbox(key="fs_list_entry_pick").set_value(0)
    next(b for b in at.button if b.label == "Remove from list").click().run()
    assert list(at.dataframe[0].value["feature"]) == [3]

    at.text_input(key="fs_list_name_code-features").input("Code, renamed")
    next(b for b in at.button if b.label == "Rename").click().run()
    assert shared_store().list_by_slug("code-features").name == "Code, renamed"
    assert "Code, renamed (1)" in at.selectbox(key="fs_list_pick").options

    at = run_app("pages/lists.py", list="no-such-list")
    assert "There is no list" in texts(at.warning)
    at.button(key="fs_list_delete").click().run()
    assert [v.slug for v in shared_store().lists()] == []

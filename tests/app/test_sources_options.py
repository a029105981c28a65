"""The Sources page's sweep option (top examples per feature): kept with the sources, in
links, and in the loaded workspace's config."""

from __future__ import annotations

import pytest

from core.source_guard import SourceError
from pages import _links as links
from pages import _workspaces as workspaces
from tests.app.conftest import run_app, texts
from tests.app.fixtures import WORDS, fill_local_sources, save_local_sources


def test_run_options_round_trip_in_links():
    src = links.canonical({**links.DEMO_SOURCES, "run": {"n_top_examples": 50}})
    assert src["run"] == {"n_top_examples": 50}
    assert links.decode_sources(links.encode_sources(src)) == src
    plain = links.canonical({**links.DEMO_SOURCES, "run": {"n_top_examples": 20}})
    assert "run" not in plain and links.encode_sources(plain) == "demo"  # the default
    with pytest.raises(SourceError, match="n_top_examples must be a positive integer"):
        links.canonical({**links.DEMO_SOURCES, "run": {"n_top_examples": 0}})
    with pytest.raises(SourceError, match="must be among n_top_examples"):
        links.canonical({**links.DEMO_SOURCES, "run": {"batch_size": 4}})
    clean = {"ignore_positions": [3, 0, 3], "max_norm_ratio": 10}
    src = links.canonical({**links.DEMO_SOURCES, "run": clean})
    assert src["run"] == {"ignore_positions": [0, 3], "max_norm_ratio": 10.0}
    assert links.decode_sources(links.encode_sources(src)) == src
    with pytest.raises(SourceError, match="max_norm_ratio must be a positive number"):
        links.canonical({**links.DEMO_SOURCES, "run": {"max_norm_ratio": -1}})


def test_sources_page_sets_top_examples(tmp_path, tiny_ws):
    save_local_sources(tmp_path)
    (tmp_path / "text.txt").write_text(" ".join(WORDS * 40))

    at = run_app()
    fill_local_sources(at, tmp_path, tmp_path / "text.txt")
    at.number_input(key="fs_run_top").set_value(30).run()
    at.text_input(key="fs_run_positions").input("first two").run()
    assert "cannot read positions 'first two'" in texts(at.error)
    at.text_input(key="fs_run_positions").input("0:2").run()
    at.number_input(key="fs_run_ratio").set_value(8.0).run()
    at.button(key="fs_load_btn").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, texts(at.error)
    src = at.session_state[links.SOURCES_KEY]
    assert src["run"] == {"n_top_examples": 30, "ignore_positions": [0, 1], "max_norm_ratio": 8.0}
    config = workspaces.open_workspace(src).config
    assert config.n_top_examples == 30
    assert config.ignore_positions == [0, 1] and config.max_norm_ratio == 8.0
    # a local text file is one stream of documents: a row's neighbours are its document
    ws = workspaces.open_workspace(src)
    doc = ws.document_rows(1)
    assert doc["before"] == [0] and doc["after"] == [2, 3, 4, 5]  # DOCUMENT_ROWS
    texts_, starts = ws.decoded_rows()
    assert doc["before_text"] == texts_[0][starts[0][1] :]

"""The Sources page's advanced dataset options: text put around every document."""

from __future__ import annotations

import pytest

from tests.app.conftest import run_app
from tests.app.fixtures import WORDS, fill_local_sources, make_tokenizer, save_local_sources

pytestmark = pytest.mark.usefixtures("app_env")


def test_prefix_and_suffix_from_the_sources_page(tmp_path):
    from pages import _links as links
    from pages import _workspaces as workspaces

    save_local_sources(tmp_path)
    (tmp_path / "docs.jsonl").write_text(
        "".join(f'{{"text": "{WORDS[2]} {WORDS[3]}"}}\n' for _ in range(200))
    )
    at = run_app()
    fill_local_sources(at, tmp_path, tmp_path / "docs.jsonl")
    at.text_input(key="fs_t_prefix").input(WORDS[0]).run()
    at.text_input(key="fs_t_suffix").input(WORDS[1]).run()
    at.button(key="fs_load_btn").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error
    src = at.session_state[links.SOURCES_KEY]
    assert src["dataset"]["prefix"] == WORDS[0] and src["dataset"]["suffix"] == WORDS[1]
    tok = make_tokenizer()
    ids = [tok.convert_tokens_to_ids(w) for w in (WORDS[0], WORDS[2], WORDS[3], WORDS[1])]
    doc = [*ids, 0]  # prefix, the document, suffix, then the BOS separator
    row = workspaces.open_workspace(src).tokens[0].tolist()
    assert row[:6] == [0, *doc]  # rows start with BOS
    # without the options the sources (and so the token set) are the plain ones
    plain = links.canonical({**src, "dataset": {**src["dataset"], "prefix": "", "suffix": ""}})
    assert "prefix" not in plain["dataset"] and plain != src

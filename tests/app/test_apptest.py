"""Headless tests of every page with ``streamlit.testing.v1.AppTest``, from ``app.py``.

The app builds its workspace from ``tests.app.fixtures:make_workspace`` (a tiny random
model and SAE); ``tiny_ws`` is an identical workspace the tests use for expected values.
"""

from __future__ import annotations

import base64
import copy
import html
import json
import time

import pytest
from streamlit.testing.v1 import AppTest

from core import charts
from tests.app.conftest import run_app, texts
from tests.app.fixtures import PROMPT, WORDS, fill_local_sources, save_local_sources

pytestmark = pytest.mark.usefixtures("app_env")


def html_text(at: AppTest) -> str:
    return "\n".join(str(h.value) for h in at.get("html"))


def wait_for_job(at: AppTest, ws, timeout: float = 90) -> None:
    from pages import _jobs as jobs

    t0 = time.time()
    while True:
        job = jobs.job_for(ws)
        if job is not None and not job.running:
            break
        assert time.time() - t0 < timeout, "background job did not finish"
        time.sleep(0.2)
    assert job.error is None, job.error
    at.run()


# ---- load page and sidebar -----------------------------------------------------------------------
def test_load_page_describes_workspace_and_precomputes(tiny_ws):
    at = run_app()
    side = texts(at.sidebar.caption)
    for word in ("tiny-test", "tiny-test-sae", "64 features", "random words", "cpu"):
        assert word in side
    assert tiny_ws.identity_key() in side
    assert "Sources" in texts(at.markdown)
    assert [m.value for m in at.metric][:2] == ["64", "1,152"]

    at.text_input(key="fs_pre_features").input("40:56").run()
    at.number_input(key="fs_pre_per_pass").set_value(8).run()
    assert "16 features in 2 pass(es)" in texts(at.caption)
    assert "peak memory about" in texts(at.caption)
    next(b for b in at.button if b.label == "Compute").click().run()
    wait_for_job(at, tiny_ws)
    assert "16 features: done" in texts(at.success)
    assert all(tiny_ws.cached(i) is not None for i in range(40, 56))

    at.text_input(key="fs_pre_features").input("0:70").run()
    err = texts(at.error).lower()  # checked on the range's text, before expanding it
    assert "feature range 0:70 is out of range" in err and "valid indices 0-63" in err


def test_load_form_local_sources_and_errors(tmp_path, tiny_ws):
    save_local_sources(tmp_path)
    (tmp_path / "text.txt").write_text(" ".join(WORDS * 40))

    at = run_app()
    at.radio(key="fs_m_kind").set_value("local").run()
    at.text_input(key="fs_m_path").input(str(tmp_path / "missing")).run()
    at.button(key="fs_load_btn").click().run()
    assert not at.exception
    assert "does not exist" in texts(at.error)
    assert "tiny-test" in texts(at.markdown)  # the old workspace is kept

    fill_local_sources(at, tmp_path, tmp_path / "text.txt")
    at.button(key="fs_load_btn").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, texts(at.error)
    # (AppTest keeps the sidebar of the first run only; the page repeats the description)
    shown = texts(at.markdown)
    assert "tiny-gpt2" in shown and "24 features" in shown and "512 tokens" in shown


# ---- search page ---------------------------------------------------------------------------------
def test_search_by_prompt(tiny_ws):
    at = run_app("pages/search.py")
    at.text_area(key="fs_prompt").input(PROMPT)
    next(b for b in at.button if b.label == "Find features").click().run()
    assert not at.exception
    expected = tiny_ws.prompt_search(PROMPT, k=10)
    top = at.dataframe[0].value
    assert list(top["feature"]) == [r["feature"] for r in expected.top_overall]
    first = int(top["feature"].iloc[0])
    assert top["open"].iloc[0].startswith(f"feature?feature={first}&ws={tiny_ws.identity_key()}")

    pos = max(range(len(expected.tokens)), key=lambda p: len(expected.per_token[p]))
    at.pills(key="fs_tok_pick").set_value(pos).run()
    per = at.dataframe[1].value
    assert list(per["feature"]) == [r["feature"] for r in expected.per_token[pos]]
    assert f"Position {pos}" in texts(at.caption)

    at.text_area(key="fs_prompt").input("   ")
    next(b for b in at.button if b.label == "Find features").click().run()
    assert "prompt is empty" in texts(at.error)


def test_search_by_token_similarity_and_statistics(tiny_ws):
    at = run_app("pages/search.py")
    at.segmented_control(key="mode").set_value("token").run()
    at.text_input(key="fs_token").input("cat")
    next(b for b in at.button if b.label == "Search").click().run()
    expected = tiny_ws.token_search("cat", k=15)
    assert list(at.dataframe[0].value["feature"]) == [r["feature"] for r in expected["promote"]]
    assert list(at.dataframe[1].value["feature"]) == [r["feature"] for r in expected["suppress"]]
    at.text_input(key="fs_token").input("cat dog")
    next(b for b in at.button if b.label == "Search").click().run()
    assert "2 tokens" in texts(at.error)

    at.segmented_control(key="mode").set_value("similar").run()
    at.number_input(key="fs_sim_feature").set_value(7).run()
    near = tiny_ws.similar(7, k=15)
    assert list(at.dataframe[0].value["feature"]) == [r["feature"] for r in near]

    at.segmented_control(key="mode").set_value("stats").run()
    if not at.dataframe:  # not computed yet in this test session
        next(b for b in at.button if b.label == "Compute the table").click().run()
        wait_for_job(at, tiny_ws, timeout=120)
    table = at.dataframe[0].value
    assert len(table) == 64
    summary = tiny_ws.summary()
    assert list(table["feature"]) == summary["feature"]
    assert at.get("vega_lite_chart"), "density overview chart"
    at.segmented_control(key="fs_stats_show").set_value("dense").run()
    at.number_input(key="fs_stats_dense").set_value(14.0).run()
    dense = [f for f, d in zip(summary["feature"], summary["density"], strict=True) if d > 0.14]
    assert list(at.dataframe[0].value["feature"]) == dense


# ---- feature page --------------------------------------------------------------------------------
def test_feature_page_dashboard(tiny_ws):
    at = run_app("pages/feature.py", feature="3")
    fd = tiny_ws.feature(3)
    assert "## Feature 3" in texts(at.markdown)
    page = html_text(at)
    for ex in fd.top_examples[:3]:
        for tok in ex.tokens:
            assert html.escape(charts.visible_token(tok)) in page
    assert f"activation {fd.top_examples[0].value:.4f}" in page  # the hover text
    assert "<table" in page and "negative logits" in page
    assert len(at.get("vega_lite_chart")) == 2  # activation and logit histograms
    assert f"{fd.density:.4%}" in texts(at.caption)
    # correlated features link to their pages, with the workspace identity
    j = fd.correlated_features.indices[0]
    assert f'href="feature?feature={j}&amp;ws={tiny_ws.identity_key()}' in page
    assert at.query_params["feature"] == "3"
    assert at.query_params["ws"] == tiny_ws.identity_key()

    at.button(key="fs_next").click().run()
    assert "## Feature 4" in texts(at.markdown)
    assert "from the cache" in texts(at.caption)  # prefetched with feature 3
    at.button(key="fs_prev").click().run()
    assert "## Feature 3" in texts(at.markdown)
    at.text_input(key="fs_jump").input("12").run()
    assert "## Feature 12" in texts(at.markdown)

    near = tiny_ws.similar(12, k=8)[0]["feature"]
    at.pills(key="fs_sim_12").set_value(near).run()
    assert f"## Feature {near}" in texts(at.markdown)

    at.text_area(key="fs_try_text").input(PROMPT)
    next(b for b in at.button if b.label == "Run").click().run()
    res = tiny_ws.feature_on_text(near, PROMPT)
    assert f"{sum(a > 0 for a in res['acts'])} of {len(res['acts'])} tokens active" in texts(
        at.caption
    )


def test_layout_control_and_export(tiny_ws):
    at = run_app("pages/feature.py", feature="5", layout="top_examples,act_hist,bogus")
    assert "Unknown layout component(s) bogus" in texts(at.warning)
    assert len(at.get("vega_lite_chart")) == 1
    assert "negative logits" not in html_text(at)
    assert at.multiselect(key="fs_layout").value == ["top_examples", "act_hist"]
    assert at.query_params["layout"] == "top_examples,act_hist"

    at.multiselect(key="fs_layout").set_value(["act_hist", "logit_hist", "logit_tables"]).run()
    assert at.query_params["layout"] == "act_hist,logit_hist,logit_tables"
    assert len(at.get("vega_lite_chart")) == 2
    assert "negative logits" in html_text(at)

    from pages import _export as export

    assert at.get("download_button")
    fd = tiny_ws.feature(5)
    page = export.export_page(tiny_ws, fd, ["act_hist", "top_examples"], {"feature": "5"})
    assert "<html" in page.lower() and "Feature 5" in page


def test_deep_link_from_root_and_identity_mismatch(tiny_ws):
    key = tiny_ws.identity_key()
    at = run_app(feature="9", ws=key)
    assert "## Feature 9" in texts(at.markdown)
    assert not at.warning

    at = run_app(feature="9", ws="0123456789ab")
    assert "## Feature 9" in texts(at.markdown)
    warning = texts(at.warning)
    assert "0123456789ab" in warning and key in warning


def test_bad_feature_index_keeps_app_working(tiny_ws):
    at = run_app("pages/feature.py", feature="99999")
    assert "feature 99999 does not exist" in texts(at.error).lower()
    assert "0-63" in texts(at.error)
    at = run_app("pages/feature.py", feature="abc")
    err = texts(at.error)
    assert "whole number" in err and "'abc'" in err and "0-63" in err
    at.text_input(key="fs_jump").input("2").run()
    assert not at.error
    assert "## Feature 2" in texts(at.markdown)
    assert len(at.get("vega_lite_chart")) == 2


def test_source_links_round_trip(app_env):
    from pages import _links as links

    demo = links.canonical(links.DEMO_SOURCES)
    assert links.encode_sources(demo) == "demo"
    assert links.decode_sources("demo") == demo
    custom = links.canonical(
        {
            "model": {"kind": "hub", "name": "gpt2-small"},
            "dictionary": {
                "kind": "saelens",
                "release": "gpt2-small-res-jb",
                "sae_id": "blocks.8.hook_resid_pre",
            },
            "dataset": {"kind": "local", "path": "/data/x.jsonl", "n_tokens": 4096},
        }
    )
    assert links.decode_sources(links.encode_sources(custom)) == custom
    assert links.encode_sources({"factory": "a:b"}) is None
    with pytest.raises(ValueError, match="damaged"):
        links.decode_sources("!!!")
    bad = base64.urlsafe_b64encode(json.dumps({"mo": {"x": 1}}).encode()).decode()
    with pytest.raises(ValueError, match="unknown ModelSpec"):
        links.decode_sources(bad)


def test_precomputed_output_directory(tmp_path, tiny_ws):
    from core.precompute.config import PrecomputeConfig
    from core.precompute.run import Sources, run_precompute

    cfg = PrecomputeConfig(
        output_dir=str(tmp_path / "run"),
        run=tiny_ws.config,
        features="0:16",
        features_per_chunk=8,
        outputs=["memo"],
        progress=False,
    )
    sources = Sources(tiny_ws.model, tiny_ws.dictionary, tiny_ws.tokens, tiny_ws.dataset)
    run_precompute(cfg, sources)

    at = run_app()
    at.text_input(key="fs_pre_path").input(str(tmp_path / "missing")).run()
    at.button(key="fs_pre_open").click().run()
    assert "not a precompute output directory" in texts(at.error)
    at.text_input(key="fs_pre_path").input(str(tmp_path / "run")).run()
    at.button(key="fs_pre_open").click().run()
    assert not at.exception and not at.error, texts(at.error)
    shown = texts(at.markdown)
    assert "16 of 16 features" in shown and "precomputed" in shown
    assert "Precompute features" not in shown  # nothing to compute without a model

    at.switch_page("pages/feature.py")
    at.query_params["feature"] = "5"
    at.run()
    assert "## Feature 5" in texts(at.markdown)
    fd = tiny_ws.feature(5)
    assert f"{fd.density:.4%}" in texts(at.caption)
    assert len(at.get("vega_lite_chart")) == 2
    at.text_input(key="fs_jump").input("40").run()
    assert "not part of this precomputed run" in texts(at.error)

    at.switch_page("pages/search.py")
    at.run()
    at.segmented_control(key="mode").set_value("stats").run()
    assert list(at.dataframe[0].value["feature"]) == list(range(16))
    at.segmented_control(key="mode").set_value("prompt").run()
    assert "needs the model" in texts(at.info)


def test_effects_and_steering(tiny_ws):
    at = run_app("pages/feature.py", feature="3")
    assert "loss effect" not in html_text(at)
    at.toggle(key="fs_effects").set_value(True).run()
    assert not at.exception and not at.error, texts(at.error)
    assert at.query_params["effects"] == "1"
    assert "loss effect" in html_text(at)  # in each token's hover
    assert "mean loss effect at the max token" in texts(at.caption)

    at.text_area(key="fs_steer_prompt").input(PROMPT)
    at.number_input(key="fs_steer_value").set_value(25.0)
    next(b for b in at.button if b.label == "Steer").click().run()
    assert not at.error, texts(at.error)
    res = tiny_ws.steer(3, PROMPT, coefficient=25.0, max_new_tokens=24)
    assert "steered: +25 × the decoder direction" in texts(at.caption)
    page = html_text(at)
    assert html.escape("".join(res["steered_tokens"][:3])) in page.replace("</span>", "").replace(
        '<span style="background:rgba(234,88,12,0.18)">', ""
    )


def test_link_sources_are_loaded_from_the_url(tmp_path, tiny_ws):
    from pages import _links as links

    src = links.encode_sources(
        links.canonical(
            {
                "model": {"kind": "local", "path": str(tmp_path / "no-model")},
                "dictionary": {"kind": "demo"},
                "dataset": {"kind": "demo"},
            }
        )
    )
    at = run_app("pages/feature.py", feature="1", src=src)
    assert "This link asks to load" in texts(at.warning)  # sources not loaded here: ask first
    next(b for b in at.button if b.label == "Load").click().run()
    err = texts(at.error)
    assert "Nothing is loaded" in err and "no-model" in err and "does not exist" in err
    assert at.get("page_link"), "a way back to the Sources page"

    at = run_app("pages/feature.py", feature="1", src="not-base64!")
    assert "src= parameter is damaged" in texts(at.warning)
    assert "## Feature 1" in texts(at.markdown)  # the default sources instead


def test_background_job_stops_and_resumes(tmp_path, tiny_ws):
    from core.memo import Memo
    from pages import _jobs as jobs
    from pages import _workspaces as workspaces

    ws = copy.copy(tiny_ws)
    ws.memo = Memo(tmp_path / "memo")  # nothing computed yet
    job = jobs.start_job(ws, list(range(64)), 4, label="test job")
    with pytest.raises(ValueError, match="already running"):
        jobs.start_job(ws, [0], 1, label="second")
    deadline = time.time() + 60
    while job.done_chunks < 2 and job.running and time.time() < deadline:
        time.sleep(0.02)
    jobs.stop_job(ws)
    while job.running and time.time() < deadline:
        time.sleep(0.05)
    assert job.stopped and 0 < job.done_features < 64, job.message
    assert "starting again resumes" in job.message
    kept = [i for i in range(64) if ws.cached(i) is not None]
    assert len(kept) >= job.done_features

    again = jobs.start_job(ws, list(range(64)), 4, label="test job")
    while again.running and time.time() < deadline:
        time.sleep(0.05)
    assert again.error is None and not again.stopped
    assert all(ws.cached(i) is not None for i in range(64))
    jobs._JOBS.pop(workspaces.identity(ws), None)  # leave no job behind for other tests


def test_load_form_saelens_release_offline_error(tiny_ws):
    from core.sources import saelens_releases

    at = run_app()
    at.radio(key="fs_m_kind").set_value("hub").run()
    assert at.selectbox(key="fs_m_name").value == "gpt2-small"
    at.radio(key="fs_d_kind").set_value("saelens").run()
    releases = saelens_releases("gpt2-small")
    assert set(at.selectbox(key="fs_d_release").options) == {
        f"{r} ({releases[r]['model']})" for r in releases
    }
    release = at.selectbox(key="fs_d_release").value
    assert at.selectbox(key="fs_d_sae_id").value in releases[release]["ids"]
    at.button(key="fs_load_btn").click().run()  # offline: the download must fail cleanly
    assert not at.exception
    err = texts(at.error)
    assert "Could not download" in err and "local SAELens" in err
    assert "The loaded sources did not change" in err


def test_release_picker_offers_only_the_models_releases(tiny_ws):
    from core.sources import saelens_releases

    at = run_app()
    at.radio(key="fs_m_kind").set_value("demo").run()
    at.radio(key="fs_d_kind").set_value("saelens").run()
    n_all = len(saelens_releases())
    assert f"None of the {n_all} SAELens releases is for SmolLM2-135M-Instruct" in texts(at.caption)
    assert at.selectbox(key="fs_d_release").options == []
    at.radio(key="fs_m_kind").set_value("hub").run()
    n_gpt2 = len(saelens_releases("gpt2-small"))
    assert f"{n_gpt2} of {n_all} SAELens releases are for gpt2-small" in texts(at.caption)
    assert len(at.selectbox(key="fs_d_release").options) == n_gpt2 < n_all


def test_failing_cache_writes_are_shown(tiny_ws):
    from pages import _links as links
    from pages import _workspaces as workspaces

    ws = workspaces.open_workspace(links.default_sources())  # the app's own (shared) workspace
    ws.memo._write_failing = True
    try:
        at = run_app()
        assert "The cache cannot be written" in texts(at.sidebar.warning)
    finally:
        ws.memo._write_failing = False
    assert not run_app().sidebar.warning


# ---- issue 12: search links, per-token picks, previews, effects, share ------------------------------
def test_prompt_tokens_are_picked_by_position(tiny_ws):
    """A token that occurs twice ('the') is two options: each click selects its own position."""
    at = run_app("pages/search.py")
    at.text_area(key="fs_prompt").input(PROMPT)
    next(b for b in at.button if b.label == "Find features").click().run()
    toks = tiny_ws.prompt_search(PROMPT, k=10).tokens
    first, second = [p for p, t in enumerate(toks) if t.strip() == "the"][:2]
    at.pills(key="fs_tok_pick").set_value(first).run()
    assert at.pills(key="fs_tok_pick").value == first
    assert f"Position {first}:" in texts(at.caption)
    at.pills(key="fs_tok_pick").set_value(second).run()
    assert f"Position {second}:" in texts(at.caption)
    at.pills(key="fs_tok_pick").set_value(first).run()  # back to the first: still selected
    assert at.pills(key="fs_tok_pick").value == first
    assert f"Position {first}:" in texts(at.caption)


def test_search_mode_link_uses_stable_keys(tiny_ws):
    at = run_app("pages/search.py", mode="similar")
    assert at.segmented_control(key="mode").value == "similar"
    assert at.number_input(key="fs_sim_feature")  # the similarity form is shown
    assert not at.warning

    at = run_app("pages/search.py", mode="By token")  # an old link with the label
    assert at.segmented_control(key="mode").value == "token"
    assert at.query_params["mode"] == "token"

    at = run_app("pages/search.py", mode="nearest")
    assert at.segmented_control(key="mode").value == "prompt"
    warning = texts(at.warning)
    assert "'nearest'" in warning and "similar" in warning

    at.segmented_control(key="mode").set_value("stats").run()
    assert at.query_params["mode"] == "stats"
    assert not at.warning


def test_search_query_is_kept_in_the_url(tiny_ws):
    at = run_app("pages/search.py")
    at.text_area(key="fs_prompt").input(PROMPT)
    next(b for b in at.button if b.label == "Find features").click().run()
    assert at.query_params["q"] == PROMPT and at.query_params["mode"] == "prompt"
    params = {k: at.query_params[k] for k in ("mode", "q", "k")}

    reloaded = run_app("pages/search.py", **params)  # a reload or a shared link
    expected = tiny_ws.prompt_search(PROMPT, k=10)
    assert reloaded.text_area(key="fs_prompt").value == PROMPT
    top = reloaded.dataframe[0].value
    assert list(top["feature"]) == [r["feature"] for r in expected.top_overall]

    at = run_app("pages/search.py", mode="token", token="dog", k="5")
    expected = tiny_ws.token_search("dog", k=5)
    assert list(at.dataframe[0].value["feature"]) == [r["feature"] for r in expected["promote"]]

    at = run_app("pages/search.py", mode="similar", of="9", k="6")
    assert at.number_input(key="fs_sim_feature").value == 9
    near = tiny_ws.similar(9, k=6)
    table = at.dataframe[0].value
    assert list(table["feature"]) == [r["feature"] for r in near]
    assert "decoder cosine" in table.columns and "cosine" not in table.columns
    at.number_input(key="fs_sim_feature").set_value(11).run()
    assert at.query_params["of"] == "11"


def test_result_tables_preview_computed_features_only(tiny_ws):
    """Features already computed show what they fire on and promote; the others stay
    blank, and listing them computes nothing."""
    expected = tiny_ws.token_search("cat", k=15)["promote"]
    listed = [r["feature"] for r in expected]
    tiny_ws.features(listed[:3])
    before = set(tiny_ws.missing(listed))
    at = run_app("pages/search.py", mode="token", token="cat", k="15")
    table = at.dataframe[0].value
    assert list(table["feature"]) == listed
    rows = zip(table["feature"], table["fires_on"], table["promotes"], strict=True)
    for f, fires, promotes in rows:
        if f in before:
            assert fires == "" and promotes == ""
        else:
            fd = tiny_ws.feature(int(f))
            q = fd.top_examples[0]
            assert fires.startswith(repr(charts.visible_token(q.tokens[q.qualifying_index])))
            assert promotes.startswith(repr(charts.visible_token(fd.top_logits.tokens[0])))
    assert set(tiny_ws.missing(listed)) == before  # nothing was computed for the table


def test_previews_never_compute(tmp_path, tiny_ws):
    from core.memo import Memo
    from pages import _results as results

    ws = copy.copy(tiny_ws)
    ws.memo = Memo(tmp_path / "memo")  # nothing computed yet
    ws._previews = {}
    rows = [{"feature": 4}, {"feature": 9}]
    assert [r["fires_on"] for r in results.with_previews(ws, rows)] == ["", ""]
    assert ws.missing([4, 9]) == [4, 9]
    ws.features([9])
    got = results.with_previews(ws, rows)
    assert got[0]["fires_on"] == "" and got[1]["fires_on"]
    assert got[1]["promotes"] == charts.tokens_text(ws.feature(9).top_logits.tokens[:3])
    assert ws.missing([4, 9]) == [4]


def test_statistics_filter_by_tokens_fired_on(tiny_ws):
    summary = tiny_ws.summary()
    at = run_app("pages/search.py", mode="stats")
    table = at.dataframe[0].value
    assert "fires_on" in table.columns
    word = next(t for toks in summary["fires_on"] for t in toks if t.strip())
    at.text_input(key="fs_stats_fires").input(word).run()
    want = [
        f
        for f, toks in zip(summary["feature"], summary["fires_on"], strict=True)
        if word in charts.tokens_text(toks)
    ]
    got = list(at.dataframe[0].value["feature"])
    assert got == want and 0 < len(got) < len(summary["feature"])


def test_effects_from_cache_caption_and_readable_extras(tiny_ws):
    at = run_app("pages/feature.py", feature="6", effects="1")
    assert not at.error, texts(at.error)
    again = run_app("pages/feature.py", feature="6", effects="1")
    assert "effects from the cache" in texts(again.caption)
    assert not again.get("json"), "extras are shown as text, not raw JSON"
    page = html_text(again)
    assert "mean loss effect at the max token" in page and '"effects"' not in page


def test_share_box_gives_an_absolute_link(tiny_ws, monkeypatch):
    from core import settings

    monkeypatch.setenv(settings.BASE_URL_ENV, "https://example.org/fs/")
    at = run_app("pages/feature.py", feature="3")
    link = texts(at.code)
    assert link.startswith("https://example.org/fs/feature?feature=3&ws="), link

    monkeypatch.setenv(settings.BASE_URL_ENV, "example.org")
    at = run_app("pages/feature.py", feature="3")
    assert "FEATURESCOPE_BASE_URL='example.org'" in texts(at.warning)
    assert texts(at.code).startswith("feature?feature=3")  # still a link
    assert "## Feature 3" in texts(at.markdown)

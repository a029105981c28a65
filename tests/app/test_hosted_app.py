"""Hosted mode through ``AppTest``: the login gate, the allowlist, limits and isolation.

The site (``tests/app/hosted_site.py``) is a tiny local model, SAE and corpus under one
root; ``$FEATURESCOPE_HOSTED`` points the app at its configuration.
"""

from __future__ import annotations

import base64
import json
import tomllib

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.conftest import ROOT, run_app, texts
from tests.app.hosted_site import AUTH, SITE_PROMPT, write_site


@pytest.fixture
def site(tmp_path_factory, monkeypatch, app_env):
    root = tmp_path_factory.getbasetemp() / "hosted-site"
    conf = write_site(root, auth_required=True)
    monkeypatch.setenv("FEATURESCOPE_HOSTED", str(conf))
    monkeypatch.delenv("FEATURESCOPE_TEST_WORKSPACE", raising=False)
    return root


def everything(at: AppTest) -> str:
    parts = [at.markdown, at.caption, at.error, at.info, at.warning, at.success, at.text]
    out = "\n".join(texts(p) for p in parts)
    out += "\n".join(str(h.value) for h in at.get("html"))
    for df in at.dataframe:
        out += df.value.to_csv()
    return out


def hosted_app(user: dict | None, page: str | None = None, secrets: bool = True, **params):
    return run_app(page, user=user, secrets={"auth": AUTH} if secrets else None, **params)


ALICE = {"is_logged_in": True, "email": "alice@lab.example", "email_verified": True}
BOB = {"is_logged_in": True, "email": "bob@team.example", "email_verified": True}


def test_a_session_that_is_not_logged_in_sees_only_the_sign_in(site):
    at = hosted_app({"is_logged_in": False}, feature="3")
    assert [b.label for b in at.button] == ["Sign in"]
    shown = everything(at)
    assert "Sign in to use this server" in shown
    for leaked in ("Tiny GPT-2", "Sources", "Feature 3", "Find features", "Dictionary"):
        assert leaked not in shown
    assert not at.sidebar.caption
    # the app's pages are not even registered for this session
    for page in ("pages/search.py", "pages/feature.py", "pages/load.py"):
        with pytest.raises(ValueError, match="not a registered page|registered"):
            at.switch_page(page)


def test_a_disallowed_email_is_refused(site):
    for email in ("mallory@evil.example", "alice@lab.example.evil.org", ""):
        at = hosted_app({"is_logged_in": True, "email": email, "email_verified": True})
        assert "is not allowed on this server" in texts(at.error)
        assert [b.label for b in at.button] == ["Sign out"]
        assert "Tiny GPT-2" not in everything(at)


@pytest.mark.parametrize(
    "user, why",
    [
        ({"email": "evil@evil.org\n@team.example", "email_verified": True}, "not valid"),
        ({"email": "@team.example", "email_verified": True}, "empty local part"),
        ({"email": "bob@team.example", "email_verified": False}, "not verified"),
        ({"email": "bob@team.example"}, "did not say whether"),
    ],
)
def test_malformed_or_unverified_emails_are_refused(site, user, why):
    at = hosted_app({"is_logged_in": True, **user}, feature="3")
    assert "is not allowed on this server" in texts(at.error) and why in texts(at.error)
    assert [b.label for b in at.button] == ["Sign out"]
    assert "Tiny GPT-2" not in everything(at) and not at.sidebar.caption


def test_a_usable_cookie_secret_is_required(site):
    example = tomllib.loads((ROOT / ".streamlit" / "secrets.example.toml").read_text())
    for secret, why in [
        (example["auth"]["cookie_secret"], "published value"),
        ("a long random string", "published value"),
        ("short", "is 5 bytes"),
        (None, "missing"),
    ]:
        auth = {k: v for k, v in AUTH.items() if k != "cookie_secret"}
        if secret is not None:
            auth["cookie_secret"] = secret
        at = run_app(user=ALICE, secrets={"auth": auth}, feature="3")
        shown = texts(at.error)
        assert "cannot offer a safe login" in shown and why in shown, secret
        assert "at least 32 bytes" in shown
        assert not at.button and "Tiny GPT-2" not in everything(at)


def test_missing_login_provider_is_an_operator_error(site):
    at = hosted_app({"is_logged_in": False}, secrets=False)
    assert "no login provider is configured" in texts(at.error)
    assert not at.button


def test_allowed_users_by_email_and_domain_get_the_app(site):
    for email in ("alice@lab.example", "bob@team.example"):
        at = hosted_app({"is_logged_in": True, "email": email, "email_verified": True})
        side = texts(at.sidebar.caption)
        assert f"Signed in as {email}" in side and "64 features" in side
        labels = [b.label for b in at.button]
        assert "Sign out" in labels and "Load" in labels
        # the source form offers the allowlist only: no free paths or hub names
        assert not [t for t in at.text_input if t.key in ("fs_m_path", "fs_d_path", "fs_t_path")]
        assert [s.key for s in at.selectbox][:3] == [
            "fs_h_model",
            "fs_h_dictionary",
            "fs_h_dataset",
        ]
        assert at.number_input(key="fs_h_budget").max == 8192


def _link(sources: dict) -> str:
    raw = json.dumps(sources, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_disallowed_model_id_or_path_in_a_link_is_refused(site, tmp_path):
    for src in (
        {"mo": {"kind": "hub", "name": "gpt2-small"}},
        {"mo": {"kind": "local", "path": "/etc"}},
        {"di": {"kind": "saelens_local", "path": str(site / "sae" / ".." / "model")}},
        {"p": "/"},
    ):
        at = hosted_app(ALICE, "pages/feature.py", feature="1", src=_link(src))
        shown = everything(at)
        assert "allowlist" in shown or "outside the directories" in shown or "'..'" in shown, src
        assert "showing the default sources instead" in shown
        assert "· 64 features ·" in shown  # the page shows the allowlisted default's feature


def test_limits_apply_to_prompts_and_jobs(site):
    at = hosted_app(ALICE, "pages/search.py")
    at.text_area(key="fs_prompt").input("the cat " * 30)  # 60 tokens > 48
    next(b for b in at.button if b.label == "Find features").click().run()
    assert "the limit is 48" in texts(at.error)
    at.text_area(key="fs_prompt").input("x" * 500)
    next(b for b in at.button if b.label == "Find features").click().run()
    assert "this server allows 400" in texts(at.error)

    at = hosted_app(ALICE)
    at.text_input(key="fs_pre_features").input("all").run()
    at.number_input(key="fs_pre_per_pass").set_value(64).run()
    # 64 features are allowed per job on this site; the dictionary has 64
    assert "64 features in 1 pass(es)" in texts(at.caption)


def test_sessions_never_see_each_others_prompts_or_errors(site):
    a = hosted_app(ALICE, "pages/search.py")
    a.text_area(key="fs_prompt").input(SITE_PROMPT + " mat mat")
    next(b for b in a.button if b.label == "Find features").click().run()
    assert a.dataframe, texts(a.error)
    a.text_area(key="fs_prompt").input("zz" * 300)  # an error in A's session
    next(b for b in a.button if b.label == "Find features").click().run()
    assert texts(a.error)

    b = hosted_app(BOB, "pages/search.py")
    shown = everything(b)
    assert "mat mat" not in shown and "zz" * 10 not in shown
    assert not texts(b.error)
    assert b.text_area(key="fs_prompt").value in ("", None)


def test_exports_are_bounded_by_the_hosted_limit(site):
    from core.hosted import AccessError
    from pages import _export as export
    from pages import _links as links
    from pages import _workspaces as workspaces

    at = hosted_app(ALICE, "pages/search.py")
    at.text_area(key="fs_prompt").input(SITE_PROMPT)
    next(b for b in at.button if b.label == "Find features").click().run()
    assert not at.exception and at.dataframe

    ws = workspaces.open_workspace(links.default_sources())
    assert export.export_cap() == 8
    with pytest.raises(AccessError, match="9 features requested; this server allows 8"):
        export.export_many(ws, list(range(9)))
    page = export.export_many(ws, [3, 5])
    assert "<title>2 features</title>" in page
    data = json.loads(page.split('id="fs-data">', 1)[1].split("</script>", 1)[0])
    assert [f["i"] for f in data["features"]] == [3, 5]

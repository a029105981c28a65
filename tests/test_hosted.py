"""Hosted-mode policy: the configuration file, logins, path roots and the allowlist."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from core.hosted import (
    NETWORK_ENV,
    AccessError,
    AuthPolicy,
    HostedConfig,
    HostedConfigError,
    Limits,
    check_device,
    is_loopback,
    load_hosted_config,
    network_problem,
)
from core.login import EmailError, cookie_secret_problem, parse_email

ROOT = Path(__file__).resolve().parent.parent


def make_config(root: Path, **extra) -> HostedConfig:
    data = {
        "path_roots": [str(root)],
        "models": [{"label": "demo", "kind": "demo"}, {"kind": "local", "path": str(root / "m")}],
        "dictionaries": [{"kind": "demo"}, {"kind": "saelens_local", "path": str(root / "sae")}],
        "datasets": [{"kind": "demo"}],
        "limits": {"max_dataset_tokens": 100_000},
    }
    data.update(extra)
    return HostedConfig.from_dict(data, source="test")


def test_example_file_parses_and_lists_the_demo():
    cfg = HostedConfig.load(ROOT / ".streamlit" / "hosted.example.toml")
    assert cfg.auth.required
    assert [spec["kind"] for _, spec in cfg.choices("model")] == ["demo"]
    assert cfg.limits.max_concurrent_computations == 1
    demo = {"model": {"kind": "demo"}, "dictionary": {"kind": "demo"}, "dataset": {}}
    assert cfg.check_sources(demo)["dataset"]["kind"] == "demo"


def test_hosted_mode_is_off_without_a_file(monkeypatch, tmp_path):
    monkeypatch.delenv("FEATURESCOPE_HOSTED", raising=False)
    monkeypatch.setattr("core.hosted.DEFAULT_FILE", tmp_path / "missing.toml")
    assert load_hosted_config() is None
    monkeypatch.setenv("FEATURESCOPE_HOSTED", str(tmp_path / "nope.toml"))
    with pytest.raises(HostedConfigError, match="not a file"):
        load_hosted_config()
    f = tmp_path / "hosted.toml"
    f.write_text('path_roots = ["/srv"]\n[auth]\nallowed_domains = ["example.org"]\n')
    monkeypatch.setenv("FEATURESCOPE_HOSTED", str(f))
    assert load_hosted_config().auth.allows("a@example.org")


@pytest.mark.parametrize(
    "text, match",
    [
        ("surprise = 1\n", "unknown setting"),
        ("[limits]\nmax_prompt_chars = 0\n", "at least 1"),
        ("[limits]\nmax_concurrent_computations = 0\n", ">= 1"),
        ("[limits]\nbogus = 3\n", "bogus"),
        ('path_roots = ["relative/dir"]\n', "absolute"),
        ('[[models]]\nkind = "hub"\nwhatever = 1\n', "models"),
        ("this is not toml", "cannot read"),
    ],
)
def test_bad_configuration_names_the_problem(tmp_path, text, match):
    f = tmp_path / "hosted.toml"
    f.write_text(text)
    with pytest.raises(HostedConfigError, match=match):
        HostedConfig.load(f)


def test_auth_allowlist():
    a = AuthPolicy(allowed_emails=["Alice@Lab.org"], allowed_domains=["@team.example"])
    assert a.allows("alice@lab.org")
    assert a.allows("bob@team.example")
    assert not a.allows("bob@lab.org")
    assert not a.allows("mallory@team.example.evil.com")
    assert not a.allows("team.example")
    assert not a.allows(None)
    assert not a.allows("")
    assert AuthPolicy(required=False).allows(None)
    assert not AuthPolicy().allows("anyone@anywhere.org")  # nothing listed: nobody


def test_paths_must_stay_under_the_roots(tmp_path):
    root = tmp_path / "root"
    (root / "sae").mkdir(parents=True)
    (root / "sae" / "cfg.json").write_text("{}")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key.txt").write_text("x")
    cfg = make_config(root)
    assert cfg.check_path(str(root / "sae")) == os.path.realpath(root / "sae")
    with pytest.raises(AccessError, match=r"'\.\.' is not allowed"):
        cfg.check_path(str(root / "sae" / ".." / ".." / "secret"))
    with pytest.raises(AccessError, match="outside the directories"):
        cfg.check_path(str(outside))
    with pytest.raises(AccessError, match="absolute path"):
        cfg.check_path("sae")
    with pytest.raises(AccessError, match="NUL"):
        cfg.check_path(str(root) + "\x00/x")
    # a symlink in the root that points out, as the path or inside a directory
    (root / "link").symlink_to(outside)
    with pytest.raises(AccessError, match="outside the directories"):
        cfg.check_path(str(root / "link"))
    (root / "sae" / "sae_weights.safetensors").symlink_to(outside / "key.txt")
    with pytest.raises(AccessError, match="links outside"):
        cfg.check_path(str(root / "sae"))
    # a root that is itself reached through a symlink still works
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    cfg2 = make_config(alias)
    (root / "sae" / "sae_weights.safetensors").unlink()
    assert cfg2.check_path(str(alias / "sae")) == os.path.realpath(root / "sae")


def test_allowlist_refuses_other_models_dictionaries_and_datasets(tmp_path):
    root = tmp_path / "root"
    (root / "sae").mkdir(parents=True)
    (root / "m").mkdir()
    cfg = make_config(root)
    ok = cfg.check_sources(
        {
            "model": {"kind": "local", "path": str(root / "m"), "device": "cpu"},
            "dictionary": {"kind": "saelens_local", "path": str(root / "sae")},
            "dataset": {"kind": "demo", "n_tokens": 4096, "context_length": 64},
        }
    )
    assert ok["dataset"]["n_tokens"] == 4096
    with pytest.raises(AccessError, match="not on this server's allowlist.*gpt2-small"):
        cfg.check_spec("model", {"kind": "hub", "name": "gpt2-small"})
    with pytest.raises(AccessError, match="allowed: demo"):
        cfg.check_spec("model", {"kind": "local", "path": "/etc"})
    with pytest.raises(AccessError, match="allowlist"):
        cfg.check_spec("dictionary", {"kind": "saelens", "release": "r", "sae_id": "x"})
    with pytest.raises(AccessError, match="allowlist"):
        cfg.check_spec("dataset", {"kind": "hub", "path": "NeelNanda/pile-10k"})
    with pytest.raises(AccessError, match="100,000"):
        cfg.check_spec("dataset", {"kind": "demo", "n_tokens": 10**9})
    with pytest.raises(AccessError, match="positive"):
        cfg.check_spec("dataset", {"kind": "demo", "n_tokens": -5})
    with pytest.raises(AccessError, match="context length"):
        cfg.check_spec("dataset", {"kind": "demo", "context_length": 100_000})
    with pytest.raises(AccessError, match="test workspaces"):
        cfg.check_sources({"factory": "tests.app.fixtures:tiny_workspace"})
    with pytest.raises(AccessError, match="outside"):
        cfg.check_sources({"precomputed": "/tmp"})
    (root / "run").mkdir()
    with pytest.raises(AccessError, match="not on this server's allowlist"):
        cfg.check_sources({"precomputed": str(root / "run")})
    cfg3 = make_config(root, precomputed=[str(root / "run")])
    assert cfg3.check_sources({"precomputed": str(root / "run")})["precomputed"] == str(
        (root / "run").resolve()
    )


def test_an_allowlisted_path_that_escapes_is_still_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "sae").symlink_to(outside)
    cfg = make_config(root)
    with pytest.raises(AccessError, match="outside"):
        cfg.check_spec("dictionary", {"kind": "saelens_local", "path": str(root / "sae")})


def test_limits():
    lim = Limits(max_prompt_chars=10)
    assert lim.check_prompt("hello") == "hello"
    for bad, match in [("", "empty"), ("   \n", "empty"), ("x" * 11, "11 characters")]:
        with pytest.raises(AccessError, match=match):
            lim.check_prompt(bad)
    with pytest.raises(AccessError, match="allows 3"):
        lim.check_count(4, "features", 3)


# ---- strict logins (issue 11) --------------------------------------------------------------------
TEAM = AuthPolicy(allowed_emails=["alice@lab.example"], allowed_domains=["team.example"])
VERIFIED = {"email_verified": True}


@pytest.mark.parametrize(
    "email, match",
    [
        ("evil@evil.org\n@team.example", "whitespace or control"),  # two '@' and a newline
        ("evil@evil.org@team.example", "exactly one '@'"),
        ("@team.example", "empty local part"),
        (" bob@team.example", "whitespace"),
        ("bob@team.example\x00", "control"),
        ("bob@team.example.", "domain name"),
        ("bob@.team.example", "domain name"),
        ("bob@team..example", "domain name"),
        ("b..ob@team.example", "local part"),
        ("<bob>@team.example", "local part"),
        ("bob@team.\u212aexample", "non-ASCII"),  # the Kelvin sign lower-cases to 'k'
        ("bob", "exactly one '@'"),
        (None, "no email address"),
    ],
)
def test_emails_are_parsed_strictly(email, match):
    with pytest.raises(EmailError, match=match):
        parse_email(email)
    refusal = TEAM.user_refusal({"email": email, **VERIFIED})
    assert refusal is not None and "not valid" in refusal
    assert not TEAM.allows(email)


def test_domains_compare_exactly_and_case_insensitively():
    assert parse_email("Bob.Smith+x@Team.Example") == ("bob.smith+x", "team.example")
    assert TEAM.user_refusal({"email": "Bob@TEAM.example", **VERIFIED}) is None
    assert TEAM.user_refusal({"email": "ALICE@lab.example", **VERIFIED}) is None
    for other in ("bob@sub.team.example", "bob@team.example.evil.org", "bob@xteam.example"):
        assert "not on this server's list" in TEAM.user_refusal({"email": other, **VERIFIED})
    assert "not on this server's list" in TEAM.user_refusal({"email": "carol@lab.example"})


def test_the_provider_must_say_the_email_is_verified():
    bob = {"email": "bob@team.example"}
    assert "not verified" in TEAM.user_refusal({**bob, "email_verified": False})
    assert "not verified" in TEAM.user_refusal({**bob, "email_verified": "false"})
    assert "not verified" in TEAM.user_refusal({**bob, "email_verified": 1})
    missing = TEAM.user_refusal(bob)
    assert "no email_verified claim" in missing and "allow_missing_email_verified" in missing
    assert TEAM.user_refusal({**bob, "email_verified": True}) is None
    assert TEAM.user_refusal({**bob, "email_verified": "true"}) is None  # some providers
    relaxed = AuthPolicy(allowed_domains=["team.example"], allow_missing_email_verified=True)
    assert relaxed.user_refusal(bob) is None
    assert "not verified" in relaxed.user_refusal({**bob, "email_verified": False})
    cfg = HostedConfig.from_dict({"auth": {"allow_missing_email_verified": True}}, "t")
    assert cfg.auth.allow_missing_email_verified


@pytest.mark.parametrize(
    "auth, match",
    [
        ({"allowed_emails": ["evil@evil.org\n@team.example"]}, "allowed_emails"),
        ({"allowed_emails": ["@team.example"]}, "empty local part"),
        ({"allowed_domains": ["team example"]}, "allowed_domains"),
        ({"allowed_domains": "team.example"}, "must be a list"),
    ],
)
def test_bad_allowlist_entries_are_operator_errors(auth, match):
    with pytest.raises(HostedConfigError, match=match):
        HostedConfig.from_dict({"auth": auth}, source="hosted.toml")


def test_cookie_secrets_that_allow_forged_logins_are_refused():
    fix = "at least 32 bytes"
    example = tomllib.loads((ROOT / ".streamlit" / "secrets.example.toml").read_text())
    for auth, match in [
        (None, "missing"),
        ({}, "missing"),
        ({"cookie_secret": ""}, "missing"),
        ({"cookie_secret": 12345}, "missing"),
        ({"cookie_secret": "x" * 31}, "is 31 bytes"),
        ({"cookie_secret": "a long random string"}, "published value"),  # shipped before
        (example["auth"], "published value"),  # the shipped example, copied as is
    ]:
        problem = cookie_secret_problem(auth)
        assert problem is not None and match in problem and fix in problem, (auth, problem)
    assert cookie_secret_problem({"cookie_secret": "é" * 16}) is None  # 32 bytes in UTF-8
    assert cookie_secret_problem({"cookie_secret": "k" * 32}) is None


def test_devices_the_server_does_not_have_are_refused(tmp_path):
    import torch

    assert check_device("cpu") == "cpu" and check_device("auto") == "auto"
    n = torch.cuda.device_count()
    for bad in ("meta", f"cuda:{n}", "cuda:7" if n < 8 else "cuda:99", "tpu", None):
        with pytest.raises(AccessError, match="not available on this machine.*'cpu'"):
            check_device(bad)
    if n == 0:
        with pytest.raises(AccessError, match="not available"):
            check_device("cuda")
    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    cfg = make_config(root)
    with pytest.raises(AccessError, match="'meta' is not available on this machine"):
        cfg.check_spec("model", {"kind": "demo", "device": "meta"})
    assert cfg.check_spec("model", {"kind": "demo", "device": "cpu"})["device"] == "cpu"


def test_serving_on_a_network_needs_hosted_mode_or_the_opt_in():
    for address in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(address) and network_problem(address, False, {}) is None
    for address in ("0.0.0.0", "::", "192.168.1.5", "", None, "example.org"):
        assert not is_loopback(address)
        problem = network_problem(address, False, {})
        assert "any file on this machine" in problem and "127.0.0.1" in problem
        assert network_problem(address, True, {}) is None
        assert network_problem(address, False, {NETWORK_ENV: "1"}) is None
    conf = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert conf["server"]["address"] == "127.0.0.1"
    assert conf["server"]["maxUploadSize"] == 0  # the app takes no uploads

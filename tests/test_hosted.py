"""Hosted-mode policy: the configuration file, logins, path roots and the allowlist."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.hosted import (
    AccessError,
    AuthPolicy,
    HostedConfig,
    HostedConfigError,
    Limits,
    load_hosted_config,
)

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

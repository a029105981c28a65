"""Who may write to the knowledge store: hosted read-only accounts are refused in core."""

from __future__ import annotations

import pytest

from core.hosted import HostedConfig, HostedConfigError
from core.knowledge import open_store
from core.knowledge.access import ReadOnlyError, editor, shared_store, write_refusal

KEY = "d" * 64


def hosted(**knowledge) -> HostedConfig:
    data = {
        "auth": {"allowed_domains": ["team.example"], "allowed_emails": ["guest@else.example"]},
        "datasets": [{"kind": "demo"}],
    }
    if knowledge:
        data["knowledge"] = knowledge
    return HostedConfig.from_dict(data, source="test")


@pytest.fixture
def store(tmp_path):
    return open_store(f"sqlite:///{tmp_path / 'k.db'}")


def test_local_mode_writes_as_the_local_author(store, monkeypatch):
    monkeypatch.setenv("FEATURESCOPE_AUTHOR", "ada")
    ed = editor(None, None, store)
    assert ed.can_write and ed.author == "ada"
    ed.annotate(KEY, 3, label="returns")
    assert store.history(KEY, 3)[-1].author == "ada"


def test_hosted_writers_restrict_who_may_write(store):
    cfg = hosted(writers=["alice@team.example", "@lab.example"])
    assert write_refusal(cfg, "alice@team.example") is None
    assert write_refusal(cfg, "ALICE@Team.Example") is None
    # allowed into the server, but not a writer: reads only
    reader = editor(cfg, "bob@team.example", store)
    assert not reader.can_write
    with pytest.raises(ReadOnlyError, match="writers"):
        reader.annotate(KEY, 1, label="nope")
    with pytest.raises(ReadOnlyError):
        reader.create_list("mine")
    with pytest.raises(ReadOnlyError):
        reader.add_explanation(
            KEY, 1, "x", explainer="m", prompt_version="1", scores={}, method="m"
        )
    assert store.annotation(KEY, 1) is None and store.lists() == []
    # a writer writes, signed with the account's email
    writer = editor(cfg, "alice@team.example", store)
    writer.annotate(KEY, 1, label="yes")
    assert store.labels(KEY, [1]) == {1: "yes"}
    assert store.history(KEY, 1)[-1].author == "alice@team.example"


def test_hosted_needs_a_signed_in_allowed_account(store):
    cfg = hosted()  # no writers list: every allowed account writes
    assert write_refusal(cfg, "carol@team.example") is None
    assert "sign in" in write_refusal(cfg, None)
    assert "not on this server" in write_refusal(cfg, "mallory@evil.example")
    with pytest.raises(ReadOnlyError, match="sign in"):
        editor(cfg, None, store).annotate(KEY, 2, label="anon")
    # behind another login (auth.required = false) a writers list still needs an account
    open_cfg = HostedConfig.from_dict(
        {"auth": {"required": False}, "knowledge": {"writers": ["x.example"]}}
    )
    assert write_refusal(open_cfg, None) is not None
    assert write_refusal(HostedConfig.from_dict({"auth": {"required": False}}), None) is None


def test_bad_writers_entry_names_the_setting():
    with pytest.raises(HostedConfigError, match="knowledge.writers"):
        hosted(writers=["not an address@"])
    with pytest.raises(HostedConfigError, match="readers"):
        hosted(readers=["a@b.example"])


def test_one_store_per_process(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    assert shared_store(url) is shared_store(url)

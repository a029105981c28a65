"""Links on a server that is not hosted: what a link may make the app load, and when it asks.

A link names its sources in ``src=``. Opened by a researcher, or by anyone who can reach the
port, such a link must not read a local file, a model directory or a device the server
has not loaded, without asking first; a ``src=`` too long or nested too deep to be one of
the app's links gets a message instead of the app's generic error. Shared workspaces
survive Streamlit's ``clear_cache`` message (which any session can send).
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.app.conftest import run_app, texts
from tests.app.hosted_site import write_site

NOTES = "PRIVATE NOTES: the reviewer's password is hunter2"


def _link(sources: dict | list | str) -> str:
    raw = json.dumps(sources, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.fixture(scope="module")
def local_files(tmp_path_factory):
    """A tiny local model and SAE, and a notes file that is not meant as a dataset."""
    root = tmp_path_factory.mktemp("link-site")
    write_site(root / "site")
    notes = root / "notes.txt"
    notes.write_text("\n".join([NOTES] * 600) + "\n")
    return root / "site", notes


def shown(at) -> str:
    parts = [at.markdown, at.caption, at.error, at.info, at.warning, at.code, at.text]
    return "\n".join(texts(p) for p in parts) + "\n".join(str(h.value) for h in at.get("html"))


def test_a_link_naming_local_files_asks_before_loading(local_files, tiny_ws):
    from pages import _links as links
    from pages import _workspaces as workspaces

    site, notes = local_files
    sources = {
        "mo": {"kind": "local", "path": str(site / "model"), "device": "cpu"},
        "di": {"kind": "saelens_local", "path": str(site / "sae")},
        "da": {"kind": "local", "path": str(notes), "n_tokens": 2048, "context_length": 32},
    }
    wanted = links.decode_sources(_link(sources))
    at = run_app("pages/feature.py", feature="2", src=_link(sources))
    text = shown(at)
    assert "This link asks to load:" in texts(at.warning) and "Load?" in texts(at.warning)
    assert str(notes) in text and str(site / "model") in text  # what it would read
    assert "hunter2" not in text and "## Feature 2" not in text  # nothing loaded or shown
    assert not workspaces.is_loaded(wanted)
    assert [b.label for b in at.button] == ["Load", "Open the default instead"]

    at.button[1].click().run()  # decline: the default workspace, nothing of the link
    assert not at.exception
    assert "## Feature 2" in texts(at.markdown) and "hunter2" not in shown(at)
    assert not workspaces.is_loaded(wanted)

    at = run_app("pages/feature.py", feature="2", src=_link(sources))
    at.button[0].click().run()  # the researcher trusts it: now it loads
    assert not at.exception, [e.value for e in at.exception]
    assert "## Feature 2" in texts(at.markdown)
    assert "64 features" in texts(at.sidebar.caption)
    assert "notes.txt" in texts(at.sidebar.caption) and workspaces.is_loaded(wanted)

    # what this server has loaded already opens without a question
    at = run_app("pages/feature.py", feature="2", src=_link(sources))
    assert "This link asks to load" not in texts(at.warning)
    assert "## Feature 2" in texts(at.markdown)


@pytest.mark.parametrize("device", ["meta", "cuda:7"])
def test_a_link_naming_a_device_the_server_lacks_loads_nothing(local_files, tiny_ws, device):
    from pages import _links as links
    from pages import _workspaces as workspaces

    site, _ = local_files
    sources = {"mo": {"kind": "local", "path": str(site / "model"), "device": device}}
    wanted = links.decode_sources(_link(sources))
    at = run_app("pages/feature.py", feature="1", src=_link(sources))
    warning = texts(at.warning)
    assert f"Device '{device}' is not available on this machine" in warning
    assert "use 'auto' or one of ['cpu'" in warning
    assert "showing the default sources instead" in warning
    assert "## Feature 1" in texts(at.markdown)
    with pytest.raises(ValueError, match="is not available on this machine"):
        workspaces.open_workspace(wanted)
    assert not workspaces.is_loaded(wanted)


@pytest.mark.parametrize(
    "src, message",
    [
        # 100,000 nested JSON arrays: Python's JSON parser would overflow its stack
        (base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode(),
         "more than the 4,096"),
        (_link({"mo": {"kind": [[[[[[["local"]]]]]]]}}), "nests 9 levels deep, more than the 4"),
        (_link({"p": "/" + "a" * 5000}), "more than the 4,096"),
    ],
)  # fmt: skip
def test_an_oversized_or_deeply_nested_link_is_explained(tiny_ws, src, message):
    at = run_app("pages/feature.py", check=False, feature="1", src=src)
    assert not at.exception, [e.value for e in at.exception]
    assert message in texts(at.warning) and "copy the link again" in texts(at.warning)
    assert "## Feature 1" in texts(at.markdown)  # the default sources instead


def test_clear_cache_does_not_rebuild_shared_workspaces(tiny_ws):
    """What Streamlit does for a ``clear_cache`` message from any session."""
    from streamlit.runtime import caching

    from pages import _links as links
    from pages import _workspaces as workspaces

    run_app("pages/feature.py", feature="1")
    ws = workspaces.open_workspace(links.default_sources())
    memo = workspaces.shared_memo()
    caching.cache_data.clear()
    caching.cache_resource.clear()
    assert workspaces.open_workspace(links.default_sources()) is ws
    assert workspaces.shared_memo() is memo
    at = run_app("pages/feature.py", feature="1")
    assert "## Feature 1" in texts(at.markdown)
    assert workspaces.open_workspace(links.default_sources()) is ws


@pytest.fixture
def listening_on(monkeypatch):
    """Run the app as if the server listened on the given address."""
    from streamlit import config

    old = config.get_option("server.address")

    def set_address(address: str) -> None:
        config.set_option("server.address", address)

    yield set_address
    config.set_option("server.address", old)


def test_serving_on_a_network_needs_hosted_mode_or_the_opt_in(tiny_ws, listening_on, monkeypatch):
    from core.hosted import NETWORK_ENV

    monkeypatch.delenv(NETWORK_ENV, raising=False)
    listening_on("0.0.0.0")
    at = run_app("pages/feature.py", feature="1")
    error = texts(at.error)
    assert "This server is not safe to use" in error and "any file on this machine" in error
    assert "make run-network" in error and "## Feature 1" not in texts(at.markdown)
    assert not at.sidebar.caption

    monkeypatch.setenv(NETWORK_ENV, "1")  # the operator opted in
    at = run_app("pages/feature.py", feature="1")
    assert not at.error and "## Feature 1" in texts(at.markdown)

    monkeypatch.delenv(NETWORK_ENV)
    listening_on("127.0.0.1")
    at = run_app("pages/feature.py", feature="1")
    assert not at.error and "## Feature 1" in texts(at.markdown)


def test_the_sources_form_offers_only_the_servers_devices(tiny_ws):
    import torch

    at = run_app()
    n = torch.cuda.device_count()
    want = ["auto", "cpu", *(f"cuda:{i}" for i in range(n))]
    assert at.selectbox(key="fs_m_dev").options == want

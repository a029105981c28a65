"""Workspaces shared by every session: built once per process per sources, then reused.

A workspace is what the pages read: a live :class:`~core.workspace.Workspace` (a model is
loaded; it computes what is missing and can search) or an opened precomputed output
(read-only). Sources are canonical dicts (see :mod:`pages._links`); their sorted JSON is the
registry key. Workspaces and memo layers live in a bounded registry (``pages/_shared.py``),
not in ``st.cache_resource``, which any session's ``clear_cache`` message empties for
everyone. In hosted mode only allowlisted sources open, and every workspace gets the limits.

For tests only, ``FEATURESCOPE_TEST_WORKSPACE`` names a factory (``module:function``) that
builds the workspace; it is never read from a URL.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import streamlit as st

from core.config import RunConfig
from core.feature_source import FeatureSource
from core.hosted import check_device
from core.memo import Memo
from core.precomputed import open_precomputed
from core.queue import QueueState, waiting_reporter
from core.settings import TEST_WORKSPACE_ENV, max_workspaces
from core.specs import DatasetSpec, DictionarySpec, ModelSpec
from pages._auth import hosted
from pages._shared import Registry

TEST_ENV = TEST_WORKSPACE_ENV


def shared_memo() -> Memo:
    """The process's memo layer (``$FEATURESCOPE_CACHE_DIR`` or ``cache/memo``)."""
    cfg = hosted()
    limit = None if cfg is None else int(cfg.limits.cache_size_gb * 2**30)

    return _MEMOS.get(json.dumps(limit), lambda: Memo(size_limit=limit))


def _import_factory(name: str) -> Callable[[], Any]:
    module, _, func = name.partition(":")
    if not module or not func:
        raise ValueError(f"{TEST_ENV} must look like 'package.module:function', got {name!r}")
    return getattr(importlib.import_module(module), func)


#: workspaces and memo layers shared by every session (not in ``st.cache_resource``, which
#: any session's ``clear_cache`` message empties for everyone: see ``pages/_shared.py``)
WORKSPACES = Registry(max_workspaces())
_MEMOS = Registry(2)


def _open(key: str) -> Any:
    """The workspace for canonical sources (JSON ``key``), shared by all sessions."""
    return WORKSPACES.get(key, lambda: _build(key))


def _build(key: str) -> Any:
    """Build the workspace for canonical sources (JSON ``key``)."""
    src = json.loads(key)
    if "factory" in src:
        return _import_factory(src["factory"])()
    if "precomputed" in src:
        return open_precomputed(src["precomputed"])
    # imported here: it imports torch, which a page must not load before it is needed
    from core.workspace import Workspace

    return Workspace.from_specs(
        ModelSpec.from_dict(src["model"]),
        DictionarySpec.from_dict(src["dictionary"]),
        DatasetSpec.from_dict(src["dataset"]),
        memo=shared_memo(),
        config=RunConfig(**src.get("run", {})),
    )


def open_workspace(src: dict[str, Any]) -> Any:
    """The shared workspace for ``src`` (loads it the first time; may raise). In hosted
    mode the sources must be on the allowlist, and the workspace gets the limits."""
    cfg = hosted()
    if cfg is not None:
        src = cfg.check_sources(src)
    if "model" in src:  # before anything loads: a device this server does not have
        check_device(src["model"].get("device"))
    ws = _open(json.dumps(src, sort_keys=True))
    if cfg is not None and hasattr(ws, "limits"):
        ws.limits = cfg.limits
    return ws


def is_loaded(src: dict[str, Any]) -> bool:
    """True when the workspace of ``src`` is already built in this server process."""
    return json.dumps(src, sort_keys=True) in WORKSPACES


_IDENTITIES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def is_live(ws: FeatureSource) -> bool:
    """True for a :class:`~core.workspace.Workspace` (model loaded: it can compute and
    search); False for a precomputed output, which can only show what it stores."""
    return ws.live


def identity(ws: FeatureSource) -> str:
    """The workspace's short identity key (computed once per workspace object)."""
    with contextlib.suppress(KeyError):
        return _IDENTITIES[ws]
    key = _IDENTITIES[ws] = str(ws.identity_key())
    return key


@contextlib.contextmanager
def queue_notice() -> Iterator[None]:
    """While this session waits for a compute slot, say where it stands in the queue."""

    box = st.empty()

    def report(q: QueueState) -> None:
        if q.position == 0:
            box.empty()
        else:
            ahead = q.position - 1
            box.info(
                f"Waiting for the model: position {q.position} in the queue "
                f"({q.running} running, {ahead} waiting ahead of you) · {q.waited:.0f}s",
                icon=":material/hourglass_top:",
            )

    with waiting_reporter(report):
        yield

"""Shared app state: which sources a session uses, the shared workspaces, jobs and links.

* **Sources** are a small dict kept in ``st.session_state``: either three spec dicts
  (``{"model": ..., "dictionary": ..., "dataset": ...}``, see :mod:`core.sources`), a
  precomputed output directory (``{"precomputed": path}``), or, for tests only, a
  factory named by the ``FEATURESCOPE_TEST_WORKSPACE`` environment variable
  (``{"factory": "module:function"}``; never read from a URL).
* **Workspaces** are built once per process per sources (a bounded registry, see
  ``pages/_shared.py``) and shared by every session; computed data lives in the memo layer.
* **Jobs** compute many features in a background thread, pass by pass, so a user can
  leave the page and come back; every finished pass is in the memo, so a stopped job
  resumes where it stopped.
* **Links** put the feature, the workspace identity, the sources and the layout in the
  URL, so a link opens the same dashboard in another browser.
* **Hosted mode** (:mod:`core.hosted`, on when a hosted configuration exists): a login
  gate, only allowlisted sources (from the page or from a link), per-request limits on
  every workspace, the compute queue's slots, and jobs kept per session.

Nothing here imports torch directly; the workspace does that.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from core.hosted import (
    HostedConfig,
    check_device,
    hosted_config_path,
    is_loopback,
    network_problem,
)
from core.login import cookie_secret_problem
from pages._shared import Registry

log = logging.getLogger("featurescope.app")

TEST_ENV = "FEATURESCOPE_TEST_WORKSPACE"
MAX_WORKSPACES = int(os.environ.get("FEATURESCOPE_MAX_WORKSPACES", "2"))
SOURCES_KEY = "fs_sources"
PARTS = ("model", "dictionary", "dataset")
DEMO_SOURCES: dict[str, Any] = {"model": {"kind": "demo"}, "dictionary": {"kind": "demo"}}
DEMO_SOURCES["dataset"] = {"kind": "demo"}
FEATURE_PAGE = "pages/feature.py"
SEARCH_PAGE = "pages/search.py"
LOAD_PAGE = "pages/load.py"
APP_FILE = os.path.realpath(os.path.join(os.path.dirname(__file__), os.pardir, "app.py"))


# ---- optional modules of other parts of the project ------------------------------------------
def has_module(name: str) -> bool:
    """True when ``name`` (dotted) can be imported; a missing parent counts as missing."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def can_open_precomputed() -> bool:
    return has_module("core.runner")


def can_export_html() -> bool:
    return has_module("core.export") and has_module("core.export.html")


# ---- sources ---------------------------------------------------------------------------------------
def _spec_classes() -> dict[str, type]:
    from core.sources import DatasetSpec, DictionarySpec, ModelSpec

    return {"model": ModelSpec, "dictionary": DictionarySpec, "dataset": DatasetSpec}


def canonical(sources: dict[str, Any]) -> dict[str, Any]:
    """Sources with every spec field filled in (raises ``SourceError`` on unknown fields)."""
    if "factory" in sources:
        return {"factory": str(sources["factory"])}
    if "precomputed" in sources:
        return {"precomputed": str(sources["precomputed"])}
    classes = _spec_classes()
    return {p: classes[p].from_dict(dict(sources.get(p) or {})).to_dict() for p in PARTS}


def default_sources() -> dict[str, Any]:
    """The test factory when ``FEATURESCOPE_TEST_WORKSPACE`` is set; in hosted mode the first
    allowlisted model, dictionary and dataset; else the embedded demo."""
    factory = os.environ.get(TEST_ENV)
    if factory:
        return {"factory": factory}
    cfg = hosted()
    if cfg is not None:
        picks = {part: cfg.choices(part) for part in PARTS}
        if all(picks.values()):
            return canonical({part: picks[part][0][1] for part in PARTS})
        if cfg.precomputed:
            return {"precomputed": cfg.precomputed[0]}
    return canonical(DEMO_SOURCES)


def encode_sources(sources: dict[str, Any]) -> str | None:
    """Short URL form of the sources (``None`` for a test factory, which never travels)."""
    if "factory" in sources:
        return None
    if "precomputed" in sources:
        minimal: dict[str, Any] = {"p": sources["precomputed"]}
    else:
        classes = _spec_classes()
        minimal = {}
        for part in PARTS:
            default = classes[part]().to_dict()
            diff = {k: v for k, v in sources[part].items() if default.get(k) != v}
            if diff:
                minimal[part[:2]] = diff
        if not minimal:
            return "demo"
    raw = json.dumps(minimal, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: a link's ``src=`` is at most this many characters (links made by the app are far shorter)
MAX_SRC_CHARS = 4096
#: and its JSON nests at most this deep (the app's links nest two levels)
MAX_SRC_DEPTH = 4
_DAMAGED = "the link's src= parameter is damaged (copy the whole link)"


def decode_sources(text: str) -> dict[str, Any]:
    """Inverse of :func:`encode_sources`; raises ``ValueError`` with a readable message
    (also for a ``src=`` too long or nested too deeply to be one of the app's links)."""
    if text == "demo":
        return canonical(DEMO_SOURCES)
    if len(text) > MAX_SRC_CHARS:
        raise ValueError(
            f"the link's src= parameter has {len(text):,} characters, more than the "
            f"{MAX_SRC_CHARS:,} a link made by this app can have (copy the link again)"
        )
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise ValueError(_DAMAGED) from exc
    depth = _json_depth(raw)
    if depth > MAX_SRC_DEPTH:
        raise ValueError(
            f"the link's src= parameter nests {depth} levels deep, more than the "
            f"{MAX_SRC_DEPTH} a link made by this app can have (copy the link again)"
        )
    try:
        minimal = json.loads(raw)
    except ValueError as exc:
        raise ValueError(_DAMAGED) from exc
    if not isinstance(minimal, dict):
        raise ValueError(_DAMAGED)
    if "p" in minimal:
        return {"precomputed": str(minimal["p"])}
    full = {p: minimal.get(p[:2], {}) for p in PARTS}
    if not all(isinstance(v, dict) for v in full.values()):
        raise ValueError(_DAMAGED)
    return canonical(full)


def _json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text (brackets inside strings
    do not count), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


PENDING_KEY = "fs_link_pending"


def init_session() -> None:
    """First run of a session: take the sources from the URL (``src=``) or the default.

    In hosted mode a link may name allowlisted sources only. Otherwise a link naming
    sources that are neither the default nor already loaded on this server (a local file or
    model directory, a hub id, another device) is not loaded on open: the session keeps
    the default and :func:`link_confirmation` asks first."""
    if SOURCES_KEY in st.session_state:
        return
    src = st.query_params.get("src")
    sources = default_sources()
    if src:
        try:
            wanted = decode_sources(src)
            cfg = hosted()
            if cfg is not None:
                cfg.check_sources(wanted)
            if "model" in wanted:
                check_device(wanted["model"].get("device"))
            if cfg is not None or wanted == sources or is_loaded(wanted):
                sources = wanted
            else:
                st.session_state[PENDING_KEY] = wanted
        except ValueError as exc:  # AccessError is one
            st.session_state["fs_link_error"] = error_message(exc)
    st.session_state[SOURCES_KEY] = sources


def is_loaded(src: dict[str, Any]) -> bool:
    """True when the workspace of ``src`` is already built in this server process."""
    return json.dumps(src, sort_keys=True) in WORKSPACES


def link_confirmation() -> bool:
    """Ask before loading what a link named (see :func:`init_session`). True while the
    question is shown: the caller stops the page."""
    pending = st.session_state.get(PENDING_KEY)
    if pending is None:
        return False
    st.markdown("## :material/link: Open this link?")
    st.warning(
        f"This link asks to load: {md(sources_label(pending))}. Load?  \nLoading reads "
        "these files, directories or hub repositories on this server; only load links "
        "you trust.",
        icon=":material/warning:",
    )
    st.code(json.dumps(pending, indent=2, sort_keys=True), language="json")
    c = st.container(horizontal=True)
    c.button("Load", type="primary", icon=":material/download:", on_click=_accept_link)
    c.button("Open the default instead", icon=":material/undo:", on_click=_decline_link)
    return True


def _accept_link() -> None:
    set_sources(st.session_state.pop(PENDING_KEY))


def _decline_link() -> None:
    st.session_state.pop(PENDING_KEY, None)


def sources() -> dict[str, Any]:
    init_session()
    return st.session_state[SOURCES_KEY]


def set_sources(new: dict[str, Any]) -> None:
    st.session_state[SOURCES_KEY] = canonical(new)
    st.session_state.pop("fs_load_error", None)


def sources_label(src: dict[str, Any]) -> str:
    """One line naming the sources."""
    if "factory" in src:
        return f"test workspace ({src['factory']})"
    if "precomputed" in src:
        return f"precomputed output {src['precomputed']}"
    from core.sources import DatasetSpec, DictionarySpec, ModelSpec

    m = ModelSpec.from_dict(src["model"]).label()
    d = DictionarySpec.from_dict(src["dictionary"]).label()
    t = DatasetSpec.from_dict(src["dataset"])
    return f"{m} · {d} · {t.label()} ({t.n_tokens:,} tokens)"


# ---- workspaces ------------------------------------------------------------------------------------
def shared_memo():
    """The process's memo layer (``$FEATURESCOPE_CACHE_DIR`` or ``cache/memo``)."""
    cfg = hosted()
    limit = None if cfg is None else int(cfg.limits.cache_size_gb * 2**30)

    def build():
        from core.memo import Memo

        return Memo(size_limit=limit)

    return _MEMOS.get(json.dumps(limit), build)


def _import_factory(name: str) -> Callable[[], Any]:
    module, _, func = name.partition(":")
    if not module or not func:
        raise ValueError(f"{TEST_ENV} must look like 'package.module:function', got {name!r}")
    return getattr(importlib.import_module(module), func)


#: workspaces and memo layers shared by every session (not in ``st.cache_resource``, which
#: any session's ``clear_cache`` message empties for everyone: see ``pages/_shared.py``)
WORKSPACES = Registry(MAX_WORKSPACES)
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
        from core.runner import open_precomputed  # type: ignore[import-not-found]

        return open_precomputed(src["precomputed"])
    from core.sources import DatasetSpec, DictionarySpec, ModelSpec
    from core.workspace import Workspace

    return Workspace.from_specs(
        ModelSpec.from_dict(src["model"]),
        DictionarySpec.from_dict(src["dictionary"]),
        DatasetSpec.from_dict(src["dataset"]),
        memo=shared_memo(),
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


def through_app() -> None:
    """Make sure this session entered through ``app.py`` (login gate, navigation, queue
    notice); otherwise start the run again through ``app.py``.

    Because the pages live in a ``pages/`` folder, Streamlit runs a requested page by
    itself (its old multipage mode) until a run of ``app.py`` has called ``st.navigation``:
    on a fresh server, whoever first opened ``/feature`` or ``/search`` skipped the login
    gate, and so did everyone after them until someone opened ``/``. Such a run turns
    that mode off for the process and reruns (the same page, now behind the gate).

    A session that has been through ``app.py`` (and its gate) is let be: on a server the
    mode stays off from then on; only ``AppTest`` turns it back on before every run."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.endswith("app.py") and os.path.realpath(name) == APP_FILE:
            st.session_state["fs_through_app"] = True
            return
        frame = frame.f_back
    if st.session_state.get("fs_through_app"):
        return
    from streamlit.runtime.pages_manager import PagesManager

    log.warning("a page ran without app.py (Streamlit's pages-folder mode): rerunning")
    PagesManager.uses_pages_directory = False
    st.rerun()


def workspace() -> Any | None:
    """This session's workspace, loading it with a spinner; ``None`` (and the error kept
    in ``st.session_state["fs_load_error"]``) when it cannot be loaded. A page that
    Streamlit ran without ``app.py`` stops here and reruns through it."""
    through_app()
    src = sources()
    err_key = json.dumps(src, sort_keys=True)
    if st.session_state.get("fs_load_error_for") == err_key:
        return None
    try:
        with st.spinner(f"Loading {sources_label(src)} …", show_time=True):
            return open_workspace(src)
    except Exception as exc:
        st.session_state["fs_load_error"] = error_message(exc)
        st.session_state["fs_load_error_for"] = err_key
        return None


def retry_load() -> None:
    """Forget a failed load so the next run tries again."""
    st.session_state.pop("fs_load_error_for", None)
    st.session_state.pop("fs_load_error", None)


def require_workspace() -> Any:
    """The workspace, or an explanation plus a link to the Sources page and ``st.stop()``."""
    ws = workspace()
    if ws is None:
        st.error(
            "Nothing is loaded: " + st.session_state.get("fs_load_error", "unknown error"),
            icon=":material/error:",
        )
        st.page_link(LOAD_PAGE, label="Choose sources", icon=":material/database:")
        st.stop()
    return ws


_IDENTITIES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def is_live(ws: Any) -> bool:
    """True for a :class:`~core.workspace.Workspace` (model loaded: it can compute and
    search); False for a precomputed output, which can only show what it stores."""
    return callable(getattr(ws, "features", None)) and callable(getattr(ws, "prompt_search", None))


def identity(ws: Any) -> str:
    """The workspace's short identity key (computed once per workspace object)."""
    try:
        return _IDENTITIES[ws]
    except (KeyError, TypeError):
        pass
    try:
        key = str(ws.identity_key())
    except Exception:  # a precomputed object may not know it
        key = "unknown"
    with contextlib.suppress(TypeError):
        _IDENTITIES[ws] = key
    return key


# ---- hosted mode ----------------------------------------------------------------------------------
def hosted() -> Any | None:
    """The hosted configuration (:class:`core.hosted.HostedConfig`), or ``None`` when the
    app serves one researcher. Re-read when the file changes; a broken file raises
    ``HostedConfigError`` (the app shows it and stops)."""
    path = hosted_config_path()
    if path is None:
        return None
    return _hosted_at(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _hosted_at(path: str, mtime_ns: int) -> Any:
    return HostedConfig.load(path)


def session_id() -> str:
    """A random id for this browser session (never derived from user data)."""
    if "fs_session" not in st.session_state:
        st.session_state["fs_session"] = uuid.uuid4().hex
    return st.session_state["fs_session"]


def _auth_secrets() -> dict[str, Any] | None:
    """The ``[auth]`` section of the secrets, or ``None`` when there is none."""
    try:
        return dict(st.secrets["auth"]) if "auth" in st.secrets else None
    except Exception:  # no secrets file at all
        return None


def _auth_configured() -> bool:
    return _auth_secrets() is not None


def _logged_in() -> bool:
    try:
        return bool(st.user.is_logged_in)
    except Exception:  # no login configured
        return False


def user_claims() -> dict[str, Any]:
    """The signed-in user's identity-token claims (``st.user``); empty when signed out."""
    return dict(st.user.to_dict()) if _logged_in() else {}


def user_email() -> str | None:
    """The signed-in user's email, or ``None``."""
    email = user_claims().get("email")
    return str(email) if email else None


def _login_problem() -> str | None:
    """An operator error that stops every session: no login provider, or a cookie secret
    that would let anyone forge a login (:func:`core.login.cookie_secret_problem`)."""
    auth = _auth_secrets()
    if auth is None:
        return (
            "This server requires a login, but no login provider is configured. Operator: add "
            "an [auth] section to .streamlit/secrets.toml (see secrets.example.toml), or set "
            "auth.required = false in the hosted configuration."
        )
    problem = cookie_secret_problem(auth)
    return None if problem is None else f"This server cannot offer a safe login: {problem}."


def may_enter(cfg: Any) -> bool:
    """True when this session may use the app (hosted mode): no login needed, or a usable
    login set-up and a signed-in user the policy accepts."""
    if not cfg.auth.required:
        return True
    if _login_problem() is not None or not _logged_in():
        return False
    return cfg.auth.user_refusal(user_claims()) is None


def access_gate(cfg: Any) -> bool:
    """True when this session may use the app. Otherwise shows only the sign-in (or the
    refusal) and returns False; the caller stops the script."""
    if may_enter(cfg):
        return True
    st.markdown("## :material/biotech: FeatureScope")
    problem = _login_problem()
    if problem is not None:
        log.error("hosted mode: %s", problem)
        st.error(problem, icon=":material/lock:")
        return False
    if not _logged_in():
        st.info("Sign in to use this server.", icon=":material/lock:")
        st.button("Sign in", type="primary", icon=":material/login:", on_click=st.login)
        return False
    email = user_email()
    reason = cfg.auth.user_refusal(user_claims())
    log.warning("refused sign-in by %r: %s", email, reason)
    shown = ascii(email)[1:-1] if email else "(no email)"  # control characters made visible
    st.error(
        f"The account {md(shown)} is not allowed on this server: "
        f"{md(str(reason))}. Sign in with another account, or ask the operator.",
        icon=":material/block:",
    )
    st.button("Sign out", icon=":material/logout:", on_click=st.logout)
    return False


_NETWORK_WARNED: set[str] = set()


def network_refusal(cfg: Any | None) -> str | None:
    """An operator error when this server listens on a network without hosted mode (and
    without the opt-in, :func:`core.hosted.network_problem`); ``None`` otherwise. The
    opt-in (or an unset address) is logged as a warning once per process."""
    address = st.get_option("server.address")
    problem = network_problem(address, cfg is not None, os.environ)
    if problem is not None and address:
        log.error("%s", problem)
        return f"This server is not safe to use: {problem}."
    exposed = cfg is None and not is_loopback(address)
    if exposed and str(address) not in _NETWORK_WARNED:
        _NETWORK_WARNED.add(str(address))
        log.warning(
            "serving on %s without hosted mode: anyone who reaches this port can load any "
            "file this process can read",
            address or "every network interface",
        )
    return None


@contextlib.contextmanager
def queue_notice() -> Iterator[None]:
    """While this session waits for a compute slot, say where it stands in the queue."""
    from core.queue import QueueState, waiting_reporter

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


# ---- errors ----------------------------------------------------------------------------------------
def error_message(exc: BaseException) -> str:
    """A plain message for the user: core's own errors verbatim, others named."""
    if isinstance(exc, ValueError | KeyError | FileNotFoundError) or type(exc).__name__ in (
        "MemoError",
        "SourceError",
        "WorkspaceError",
    ):
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return text[0].upper() + text[1:] if text else type(exc).__name__
    log.exception("unexpected error in the app")
    return f"{type(exc).__name__}: {exc} (unexpected; the server log has the details)"


@contextlib.contextmanager
def shown_errors(prefix: str = "") -> Iterator[None]:
    """Show any error raised inside as ``st.error`` (no traceback) and carry on."""
    try:
        yield
    except Exception as exc:
        st.error(f"{prefix}{error_message(exc)}", icon=":material/error:")


# ---- links -----------------------------------------------------------------------------------------
def feature_params(ws: Any, i: int, layout: list[str] | None = None) -> dict[str, str]:
    """Query parameters of the deep link to feature ``i`` (URL parameters are strings).

    ``layout`` defaults to the layout this session chose on the feature page."""
    from core.charts import COMPONENTS

    params = {"feature": str(i), "ws": identity(ws)}
    src = encode_sources(sources())
    if src:
        params["src"] = src
    if layout is None:  # keep the layout this session picked on the feature page
        layout = st.session_state.get("fs_layout")
    if layout and list(layout) != list(COMPONENTS):
        params["layout"] = ",".join(layout)
    return params


def feature_href(ws: Any, i: int, layout: list[str] | None = None) -> str:
    """Relative URL of feature ``i``'s page (works from every page of the app)."""
    return "feature?" + urlencode(feature_params(ws, i, layout))


def feature_link_template(ws: Any, layout: list[str] | None = None) -> str:
    """``feature_href`` with ``{}`` in place of the index (for ``charts.table_html``)."""
    return feature_href(ws, 0, layout).replace("feature=0", "feature={}", 1)


def open_feature(ws: Any, i: int, layout: list[str] | None = None) -> None:
    """Go to feature ``i``'s page in this session."""
    st.switch_page(FEATURE_PAGE, query_params=feature_params(ws, i, layout))


# ---- background jobs ---------------------------------------------------------------------------
class _Stopped(Exception):
    """Raised inside a progress callback to stop a job between batches."""


@dataclass
class Job:
    """Features computed in a background thread, one pass per chunk of features."""

    ident: str
    label: str
    chunks: list[list[int]]
    then_summary: bool = False
    done_features: int = 0
    done_chunks: int = 0
    fraction: float = 0.0
    message: str = "starting"
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    stopped: bool = False
    result: Any = None
    stop_event: threading.Event = field(default_factory=threading.Event)

    @property
    def total(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def running(self) -> bool:
        return self.finished is None

    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    def eta(self) -> float | None:
        if self.fraction <= 0.01 or not self.running:
            return None
        return self.elapsed() * (1 - self.fraction) / self.fraction


_JOBS: dict[str, Job] = {}
_JOBS_LOCK = threading.Lock()


def _job_key(ws: Any) -> str:
    """Jobs belong to the workspace; in hosted mode to the session too, so no one sees
    another user's progress or errors."""
    return identity(ws) if hosted() is None else f"{identity(ws)}:{session_id()}"


def job_for(ws: Any) -> Job | None:
    with _JOBS_LOCK:
        return _JOBS.get(_job_key(ws))


def start_job(
    ws: Any, indices: list[int], per_pass: int, label: str, then_summary: bool = False
) -> Job:
    """Start computing ``indices`` in passes of ``per_pass`` features (one job per workspace)."""
    ident = _job_key(ws)
    per_pass = max(1, int(per_pass))
    cfg = hosted()
    if cfg is not None:  # features already in the cache do not count
        todo = ws.missing(indices) if hasattr(ws, "missing") else indices
        cfg.limits.check_count(len(todo), "features", cfg.limits.max_features_per_job)
        per_pass = min(per_pass, cfg.limits.max_features_per_job)
    chunks = [indices[s : s + per_pass] for s in range(0, len(indices), per_pass)]
    with _JOBS_LOCK:
        old = _JOBS.get(ident)
        if old is not None and old.running:
            raise ValueError(f"'{old.label}' is already running on this workspace; wait or stop it")
        job = Job(ident, label, chunks, then_summary)
        _JOBS[ident] = job
    threading.Thread(target=_run_job, args=(job, ws), name=f"fs-job-{ident}", daemon=True).start()
    return job


def _run_job(job: Job, ws: Any) -> None:
    n = max(1, len(job.chunks))
    try:
        if job.then_summary and n == 1:
            # one pass: the summary is built from the sweep's own results (no re-reading)
            job.message = "pass 1/1: waiting for the model"
            job.result = ws.summary(progress=_job_progress(job, 0, 1, len(job.chunks[0])))
            job.done_chunks, job.done_features, job.fraction = 1, job.total, 1.0
            job.message = f"done: {job.done_features:,} features"
            return
        for k, chunk in enumerate(job.chunks):
            if job.stop_event.is_set():
                raise _Stopped

            job.message = f"pass {k + 1}/{n}: waiting for the model"
            ws.features(chunk, progress=_job_progress(job, k, n, len(chunk)))
            job.done_chunks = k + 1
            job.done_features += len(chunk)
            job.fraction = (k + 1) / n
        if job.then_summary:
            job.message = "building the summary table"
            job.result = ws.summary()
        job.message = f"done: {job.done_features:,} features"
    except _Stopped:
        job.stopped = True
        job.message = (
            f"stopped after {job.done_features:,} of {job.total:,} features "
            "(those are kept; starting again resumes)"
        )
    except Exception as exc:
        job.error = error_message(exc)
        job.message = "failed"
    finally:
        job.finished = time.time()


def _job_progress(job: Job, k: int, n: int, size: int) -> Callable[[float, str], None]:
    """Progress callback of pass ``k`` of ``n``; raises :class:`_Stopped` when asked to."""

    def progress(frac: float, msg: str) -> None:
        if job.stop_event.is_set():
            raise _Stopped
        job.fraction = (k + min(max(frac, 0.0), 1.0)) / n
        job.message = f"pass {k + 1}/{n} ({size:,} features): {msg}"

    return progress


def stop_job(ws: Any) -> None:
    job = job_for(ws)
    if job is not None:
        job.stop_event.set()


def format_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def job_caption(job: Job) -> str:
    eta = job.eta()
    tail = f", about {format_seconds(eta)} left" if eta is not None else ""
    return f"{job.label}: {job.message} · {format_seconds(job.elapsed())} elapsed{tail}"


# ---- sidebar ---------------------------------------------------------------------------------------
def _dict_label(d: Any) -> str:
    if not isinstance(d, dict):
        return str(d)
    name = (
        d.get("name")
        or (f"{d['release']} / {d.get('sae_id')}" if d.get("release") else None)
        or d.get("path")
        or d.get("kind")
        or "?"
    )
    bits = [str(name)]
    if d.get("architecture"):
        bits.append(str(d["architecture"]))
    if d.get("layer") is not None:
        bits.append(f"layer {d['layer']}")
    return " · ".join(bits)


def describe_lines(ws: Any) -> list[tuple[str, str]]:
    """(label, value) rows describing the loaded workspace, for the sidebar and pages."""
    d = ws.describe()
    rows = [("Model", str(d.get("model", "?")))]
    dic = _dict_label(d.get("dictionary"))
    n = d.get("n_features", getattr(ws, "n_features", None))
    if n is not None:
        dic += f" · {int(n):,} features"
    rows.append(("Dictionary", dic))
    if d.get("hook"):
        rows.append(("Hook", str(d["hook"])))
    data = d.get("dataset")
    data_label = _dict_label(data)
    if isinstance(data, dict) and data.get("kind") == "demo":
        data_label = "Python stdlib docs (demo)"
    if d.get("n_tokens"):
        data_label += (
            f" · {int(d['n_tokens']):,} tokens"
            f" ({d.get('n_sequences', '?')} × {d.get('context_length', '?')})"
        )
    rows.append(("Dataset", data_label))
    if "n_done" in d:  # a precomputed output
        stored = f"{int(d['n_done']):,} of {int(d.get('n_requested', 0)):,} features"
        if not d.get("complete", True):
            stored += " (run incomplete)"
        rows.append(("Stored", stored))
    rows.append(("Device", str(d.get("device", "cpu"))))
    return rows


def sidebar(ws: Any | None) -> None:
    """What is loaded (always visible), plus a running job's progress."""
    with st.sidebar:
        email = user_email() if hosted() is not None else None
        if email:
            st.caption(f"Signed in as {_md(email)}")
            st.button("Sign out", icon=":material/logout:", on_click=st.logout, key="fs_logout")
        if ws is None:
            st.caption("**Nothing loaded**")
            st.caption(st.session_state.get("fs_load_error", ""))
            return
        lines = "  \n".join(f"**{k}** {_md(v)}" for k, v in describe_lines(ws))
        st.caption(lines + f"  \n**Id** `{identity(ws)}`")
        job = job_for(ws)
        if job is not None and job.running:  # redrawn every second only while a job runs
            _sidebar_job(ws)
        if getattr(getattr(ws, "memo", None), "writes_failing", False):
            st.warning(
                "The cache cannot be written (disk full or read-only): results are shown but "
                "not kept, so they will be computed again. Free space, or set "
                "FEATURESCOPE_CACHE_DIR to a writable directory.",
                icon=":material/warning:",
            )


@st.fragment(run_every=1.0)
def _sidebar_job(ws: Any) -> None:
    """The running job's bar, redrawn every second (the page around it is not rerun); when
    the job ends, one rerun of the page removes it and stops the redraws."""
    job = job_for(ws)
    if job is None or not job.running:
        st.rerun()
    st.progress(min(job.fraction, 1.0), text=f"{job.label}: {int(job.fraction * 100)}%")


def _md(text: str) -> str:
    """Escape markdown specials in data shown through ``st.markdown``/``st.caption``."""
    for ch in "\\`*_[]<>#|~$":
        text = text.replace(ch, "\\" + ch)
    return text


md = _md


# ---- the whole-dictionary summary ----------------------------------------------------------------
_SUMMARIES: dict[str, dict[str, list]] = {}


class _NotReady(Exception):
    """Raised from a progress callback: the summary would need a sweep."""


def _only_if_cached(frac: float, msg: str) -> None:
    if frac < 1.0:
        raise _NotReady


def summary_if_ready(ws: Any) -> dict[str, list] | None:
    """The summary table when it can be had without a sweep (cached or all features
    computed), else ``None``. The check runs once per session and job."""
    if not is_live(ws):  # a precomputed output has (and caches) its own summary
        return ws.summary()
    ident = identity(ws)
    if ident in _SUMMARIES:
        return _SUMMARIES[ident]
    job = job_for(ws)
    if job is not None and job.running:
        return None
    if job is not None and job.result is not None:
        _SUMMARIES[ident] = job.result
        return job.result
    probe = (ident, job.finished if job is not None else None)
    if st.session_state.get("fs_summary_missing") == probe:
        return None
    try:
        got = ws.summary(progress=_only_if_cached)
    except _NotReady:
        st.session_state["fs_summary_missing"] = probe
        return None
    _SUMMARIES[ident] = got
    return got

"""This session's sources, and sources and features in URLs.

* **Sources** are a small dict kept in ``st.session_state``: either three spec dicts
  (``{"model": ..., "dictionary": ..., "dataset": ...}``, see :mod:`core.sources`), a
  precomputed output directory (``{"precomputed": path}``), or, for tests only, a factory
  named by ``FEATURESCOPE_TEST_WORKSPACE`` (``{"factory": "module:function"}``; never read
  from a URL). :func:`canonical` fills in every spec field.
* **Links** put the feature, the workspace identity, the sources (``src=``, a short
  base64 JSON of the fields that differ from the defaults) and the layout in the URL, so a
  link opens the same dashboard in another browser. A link written by hand may name the
  sources readably instead: ``?model=gpt2-small&dictionary=RELEASE/ID&dataset=PATH``
  (plus ``n_tokens``, ``context_length``, ``layer`` for a CLT, ``dtype``, ``device``),
  read by :mod:`core.specs` exactly as the command line reads them.
* **The link question**: a link naming sources that are neither the default nor already
  loaded on this server is not loaded on open; :func:`link_confirmation` asks first. In
  hosted mode a link may name allowlisted sources only.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from core.charts import COMPONENTS
from core.config import RunConfig
from core.feature_source import FeatureSource
from core.hosted import check_device
from core.settings import test_workspace_factory
from core.source_guard import SourceError
from core.specs import (
    SPEC_CLASSES,
    DatasetSpec,
    DictionarySpec,
    ModelSpec,
    parse_dataset,
    parse_dictionary,
    parse_model,
)
from pages._auth import hosted
from pages._messages import error_message, md
from pages._workspaces import identity, is_loaded

SOURCES_KEY = "fs_sources"
PENDING_KEY = "fs_link_pending"
PARTS = ("model", "dictionary", "dataset")
DEMO_SOURCES: dict[str, Any] = {"model": {"kind": "demo"}, "dictionary": {"kind": "demo"}}
DEMO_SOURCES["dataset"] = {"kind": "demo"}
FEATURE_PAGE = "pages/feature.py"
SEARCH_PAGE = "pages/search.py"
LOAD_PAGE = "pages/load.py"
MAP_PAGE = "pages/map.py"
COMPARE_PAGE = "pages/compare.py"


# ---- sources in specs and in URLs ------------------------------------------------------------
def canonical(sources: dict[str, Any]) -> dict[str, Any]:
    """Sources with every spec field filled in (raises ``SourceError`` on unknown fields)."""
    if "factory" in sources:
        return {"factory": str(sources["factory"])}
    if "precomputed" in sources:
        return {"precomputed": str(sources["precomputed"])}
    out = {p: SPEC_CLASSES[p].from_dict(dict(sources.get(p) or {})).to_dict() for p in PARTS}
    run = run_options(sources.get("run"))
    if run:
        out["run"] = run
    return out


#: result options of the sweep a user may set with the sources (the rest keep their defaults)
RUN_OPTIONS = ("n_top_examples", "ignore_positions", "max_norm_ratio")


def run_options(run: Any) -> dict[str, Any]:
    """The sources' sweep options that differ from the defaults (``SourceError`` naming
    an unknown or invalid one)."""
    if not run:
        return {}
    if not isinstance(run, dict) or set(run) - set(RUN_OPTIONS):
        raise SourceError(f"sweep options must be among {', '.join(RUN_OPTIONS)}, got {run!r}")
    try:
        cfg = RunConfig(**run)
    except ValueError as exc:
        raise SourceError(f"{exc}: change it in the Sources page's options") from exc
    default = RunConfig()
    return {k: getattr(cfg, k) for k in RUN_OPTIONS if getattr(cfg, k) != getattr(default, k)}


def _whole(params: Mapping[str, str], name: str, default: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise SourceError(f"the link's {name}= must be a whole number, got {text!r}") from None


def sources_from_params(params: Mapping[str, str]) -> dict[str, Any] | None:
    """Sources named readably in a link (``model=``, ``dictionary=``, ``dataset=``, each
    ``demo`` when left out), or ``None`` when the link names none of them."""
    if not any(part in params for part in PARTS):
        return None
    layer = params.get("layer")
    model = parse_model(
        params.get("model", "demo"),
        dtype=params.get("dtype", "float32"),
        device=params.get("device", "auto"),
    )
    dictionary = parse_dictionary(
        params.get("dictionary", "demo"),
        clt_layer=None if layer is None else _whole(params, "layer", 0),
    )
    dataset = parse_dataset(
        params.get("dataset", "demo"),
        n_tokens=_whole(params, "n_tokens", DatasetSpec().n_tokens),
        context_length=_whole(params, "context_length", DatasetSpec().context_length),
    )
    return canonical(
        {"model": model.to_dict(), "dictionary": dictionary.to_dict(), "dataset": dataset.to_dict()}
    )


def default_sources() -> dict[str, Any]:
    """The test factory when ``FEATURESCOPE_TEST_WORKSPACE`` is set; in hosted mode the first
    allowlisted model, dictionary and dataset; else the embedded demo."""
    factory = test_workspace_factory()
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
        minimal = {}
        for part in PARTS:
            default = SPEC_CLASSES[part]().to_dict()
            diff = {k: v for k, v in sources[part].items() if default.get(k) != v}
            if diff:
                minimal[part[:2]] = diff
        if sources.get("run"):
            minimal["ru"] = sources["run"]
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
    full["run"] = minimal.get("ru", {})
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


def sources_label(src: dict[str, Any]) -> str:
    """One line naming the sources."""
    if "factory" in src:
        return f"test workspace ({src['factory']})"
    if "precomputed" in src:
        return f"precomputed output {src['precomputed']}"
    m = ModelSpec.from_dict(src["model"]).label()
    d = DictionarySpec.from_dict(src["dictionary"]).label()
    t = DatasetSpec.from_dict(src["dataset"])
    return f"{m} · {d} · {t.label()} ({t.n_tokens:,} tokens)"


# ---- this session's sources and the link question ----------------------------------------
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
    try:
        wanted = decode_sources(src) if src else sources_from_params(st.query_params.to_dict())
    except ValueError as exc:  # SourceError is one
        st.session_state["fs_link_error"] = error_message(exc)
        wanted = None
    if wanted is not None:
        try:
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


# ---- links to features -------------------------------------------------------------------
def feature_params(ws: FeatureSource, i: int, layout: list[str] | None = None) -> dict[str, str]:
    """Query parameters of the deep link to feature ``i`` (URL parameters are strings).

    ``layout`` defaults to the layout this session chose on the feature page."""
    params = {"feature": str(i), "ws": identity(ws)}
    src = encode_sources(sources())
    if src:
        params["src"] = src
    if layout is None:  # keep the layout this session picked on the feature page
        layout = st.session_state.get("fs_layout")
    if layout and list(layout) != list(COMPONENTS):
        params["layout"] = ",".join(layout)
    return params


def feature_href(ws: FeatureSource, i: int, layout: list[str] | None = None) -> str:
    """Relative URL of feature ``i``'s page (works from every page of the app)."""
    return "feature?" + urlencode(feature_params(ws, i, layout))


def feature_link_template(ws: FeatureSource, layout: list[str] | None = None) -> str:
    """``feature_href`` with ``{}`` in place of the index (for ``charts.table_html``)."""
    return feature_href(ws, 0, layout).replace("feature=0", "feature={}", 1)


def open_feature(ws: FeatureSource, i: int, layout: list[str] | None = None) -> None:
    """Go to feature ``i``'s page in this session."""
    st.switch_page(FEATURE_PAGE, query_params=feature_params(ws, i, layout))


# ---- links to the side-by-side comparison ---------------------------------------------------
def compare_params(ws: FeatureSource, indices: list[int]) -> dict[str, str]:
    """Query parameters of the Compare page for ``indices`` (``?features=1,2,3``)."""
    params = {"features": ",".join(str(int(i)) for i in indices), "ws": identity(ws)}
    src = encode_sources(sources())
    if src:
        params["src"] = src
    return params


def compare_href(ws: FeatureSource, indices: list[int]) -> str:
    """Relative URL of the Compare page for ``indices``."""
    return "compare?" + urlencode(compare_params(ws, indices))


def open_compare(ws: FeatureSource, indices: list[int]) -> None:
    """Go to the Compare page for ``indices`` in this session."""
    st.switch_page(COMPARE_PAGE, query_params=compare_params(ws, indices))

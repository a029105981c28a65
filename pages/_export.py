"""Sharing and exporting a dashboard: absolute share links, standalone HTML downloads.

Exports are built only when the download button is clicked (``core.export.html``); in
hosted mode their size is bounded by the server's limits.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from core import feature_map, settings
from core.engine.features import Example
from core.export.html import render_features_html
from core.export.map_html import MapExport
from core.feature_source import FeatureSource
from pages import _auth as auth
from pages import _knowledge as knowledge
from pages import _sidebar as sidebar
from pages import _workspaces as workspaces

# ---- share links ---------------------------------------------------------------------------------
#: the app's public address (e.g. ``https://example.org/featurescope``), for share links
#: behind a reverse proxy; without it the address comes from the request's headers
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def base_url() -> str:
    """The app's absolute address, ending in ``/``: ``$FEATURESCOPE_BASE_URL`` when set,
    else the scheme and host the browser used (``X-Forwarded-Proto``/``-Host`` from a
    proxy, else ``Host``) plus ``server.baseUrlPath``; ``""`` when neither is known."""
    env = settings.base_url()
    if env:
        if not re.match(r"^https?://[^\s/]+", env):
            raise ValueError(
                f"{settings.BASE_URL_ENV}={env!r} is not an absolute http(s) address: set it to the "
                "address users open, e.g. https://example.org/featurescope"
            )
        return env.rstrip("/") + "/"
    try:
        headers = st.context.headers
    except Exception:  # outside a session (e.g. a test calling the page helpers)
        return ""
    host = (headers.get("X-Forwarded-Host") or headers.get("Host") or "").split(",")[0].strip()
    if not _HOST.match(host):
        return ""
    proto = (headers.get("X-Forwarded-Proto") or "").split(",")[0].strip().lower()
    if proto not in ("http", "https"):
        proto = "https" if headers.get("X-Forwarded-Ssl") == "on" else "http"
    path = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return f"{proto}://{host}/" + (f"{path}/" if path else "")


def share_url(relative: str) -> str:
    """``relative`` (e.g. ``feature?feature=3&ws=...``) as an absolute address."""
    return base_url() + relative.lstrip("/")


# ---- export ----------------------------------------------------------------------------------------
def export_meta(ws: FeatureSource, index: int, params: dict[str, str]) -> dict[str, Any]:
    """What the exported page says about the run (heading and key/value lines)."""
    meta = _run_meta(ws, f"Feature {index}")
    meta["app link"] = "feature?" + urlencode(params)
    meta["labels"] = knowledge.labels(ws, [index])
    meta["notes"] = knowledge.notes(ws, [index])
    return meta


def _run_meta(ws: FeatureSource, title: str) -> dict[str, Any]:
    """An exported page's heading and the lines naming what was loaded."""
    meta: dict[str, Any] = {"title": title}
    for label, value in sidebar.describe_lines(ws):
        meta[label.lower()] = value
    meta["workspace id"] = workspaces.identity(ws)
    return meta


def export_page(ws: FeatureSource, fd: Any, layout: list[str], params: dict[str, str]) -> str:
    """This dashboard as one standalone HTML page (``core.export.html``), in ``layout``."""
    return render_features_html(
        [fd], export_meta(ws, fd.index, params), layout=layout, whole={fd.index: whole_rows(ws, fd)}
    )


#: top examples whose whole rows go into a feature's HTML download
WHOLE_ROWS = 3


def whole_rows(ws: FeatureSource, fd: Any) -> list[Example]:
    """Whole rows of the first :data:`WHOLE_ROWS` top examples (live workspaces only: a
    precomputed output has no model to compute them)."""
    if not workspaces.is_live(ws) or not hasattr(ws, "sequence_activations"):
        return []
    out = []
    for ex in fd.top_examples[:WHOLE_ROWS]:
        got = ws.sequence_activations(fd.index, ex.seq)
        out.append(
            Example(ex.seq, ex.pos, ex.value, 0, got["token_ids"], got["tokens"], got["acts"])
        )
    return out


def export_button(ws: FeatureSource, fd: Any, layout: list[str], params: dict[str, str]) -> None:
    """Download button; the page is built only when clicked."""
    st.download_button(
        "Download as HTML",
        data=lambda: export_page(ws, fd, list(layout), dict(params)),
        file_name=f"feature_{fd.index}.html",
        mime="text/html",
        icon=":material/download:",
        on_click="ignore",
        help="Download this dashboard (current layout) as a standalone HTML page",
    )


EXPORT_CAP = 256  # features in one export from the app when no hosted limit applies


def export_cap() -> int:
    cfg = auth.hosted()
    return int(cfg.limits.max_features_per_export) if cfg is not None else EXPORT_CAP


def export_many(ws: FeatureSource, indices: list[int]) -> str:
    """Several features as one standalone HTML page (computing those not cached yet)."""
    got = ws.features_for_export(list(indices))  # hosted: within the export limit
    meta = _run_meta(ws, f"{len(indices)} features")
    meta["labels"] = knowledge.labels(ws, indices)  # one batched read
    meta["notes"] = knowledge.notes(ws, indices)
    return render_features_html(
        [got[i] for i in indices], meta, feature_map=stored_map(ws, indices)
    )


def stored_map(ws: FeatureSource, indices: list[int]) -> MapExport | None:
    """The dictionary's map for an export, when the Map page has stored one (never computed
    here: a live workspace's memo only), labelled from the knowledge store."""
    dictionary = getattr(ws, "dictionary", None)
    if dictionary is None or not workspaces.is_live(ws):
        return None
    return feature_map.export_map(
        dictionary, getattr(ws, "memo", None), indices, lambda shown: knowledge.labels(ws, shown)
    )


def export_features_button(ws: FeatureSource, indices: list[int], key: str) -> None:
    """Download the listed features as one HTML page (at most :func:`export_cap`)."""
    if not indices or not workspaces.is_live(ws):
        return
    cap = export_cap()
    chosen = [int(i) for i in indices[:cap]]
    st.download_button(
        f"Download these {len(chosen)} features as HTML",
        data=lambda: export_many(ws, chosen),
        file_name=f"features_{len(chosen)}.html",
        mime="text/html",
        icon=":material/download:",
        on_click="ignore",
        key=key,
        help="One standalone page with a feature picker; features not computed yet are "
        "computed first."
        + (f" At most {cap:,} features per export on this server." if len(indices) > cap else ""),
    )

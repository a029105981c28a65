"""The sidebar: who is signed in, what is loaded, and a running job's progress bar."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.feature_source import FeatureSource
from pages._auth import hosted, user_email
from pages._jobs import job_for
from pages._messages import md
from pages._workspaces import identity


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


def describe_lines(ws: FeatureSource) -> list[tuple[str, str]]:
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


def sidebar(ws: FeatureSource | None) -> None:
    """What is loaded (always visible), plus a running job's progress."""
    with st.sidebar:
        email = user_email() if hosted() is not None else None
        if email:
            st.caption(f"Signed in as {md(email)}")
            st.button("Sign out", icon=":material/logout:", on_click=st.logout, key="fs_logout")
        if ws is None:
            st.caption("**Nothing loaded**")
            st.caption(st.session_state.get("fs_load_error", ""))
            return
        lines = "  \n".join(f"**{k}** {md(v)}" for k, v in describe_lines(ws))
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
def _sidebar_job(ws: FeatureSource) -> None:
    """The running job's bar, redrawn every second (the page around it is not rerun); when
    the job ends, one rerun of the page removes it and stops the redraws."""
    job = job_for(ws)
    if job is None or not job.running:
        st.rerun()
    st.progress(min(job.fraction, 1.0), text=f"{job.label}: {int(job.fraction * 100)}%")

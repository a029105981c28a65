"""Background jobs: many features computed in a thread, pass by pass, with progress.

A user can leave the page and come back: the job belongs to the workspace (in hosted mode to
the session too), and every finished pass is in the memo, so a stopped job resumes where it
stopped. The whole-dictionary summary a job may build is kept here too
(:func:`summary_if_ready`), so the Search page never starts a sweep on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from core.feature_source import FeatureSource
from pages._auth import hosted, session_id
from pages._messages import error_message
from pages._workspaces import identity, is_live


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


def _job_key(ws: FeatureSource) -> str:
    """Jobs belong to the workspace; in hosted mode to the session too, so no one sees
    another user's progress or errors."""
    return identity(ws) if hosted() is None else f"{identity(ws)}:{session_id()}"


def job_for(ws: FeatureSource) -> Job | None:
    with _JOBS_LOCK:
        return _JOBS.get(_job_key(ws))


def start_job(
    ws: FeatureSource, indices: list[int], per_pass: int, label: str, then_summary: bool = False
) -> Job:
    """Start computing ``indices`` in passes of ``per_pass`` features (one job per workspace)."""
    ident = _job_key(ws)
    if not ws.live:
        raise ValueError("a precomputed output computes nothing: open the sources to compute")
    chunks = ws.job_passes(indices, per_pass)  # hosted: within the job limit
    with _JOBS_LOCK:
        old = _JOBS.get(ident)
        if old is not None and old.running:
            raise ValueError(f"'{old.label}' is already running on this workspace; wait or stop it")
        job = Job(ident, label, chunks, then_summary)
        _JOBS[ident] = job
    threading.Thread(target=_run_job, args=(job, ws), name=f"fs-job-{ident}", daemon=True).start()
    return job


def _run_job(job: Job, ws: FeatureSource) -> None:
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


def stop_job(ws: FeatureSource) -> None:
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


# ---- the whole-dictionary summary ----------------------------------------------------------
_SUMMARIES: dict[str, dict[str, list]] = {}


class _NotReady(Exception):
    """Raised from a progress callback: the summary would need a sweep."""


def _only_if_cached(frac: float, msg: str) -> None:
    if frac < 1.0:
        raise _NotReady


def summary_if_ready(ws: FeatureSource) -> dict[str, list] | None:
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

"""The feature page's "Explain" button: one feature explained and scored by a language model
in a background thread (the page stays usable; a fragment follows it), the result stored
in the knowledge store (:mod:`core.explain.single`).

One explanation job at a time per session; jobs are kept per session, so nobody sees
another user's errors.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from core.explain.single import explain_and_store, explainer_choice, make_backend
from core.knowledge.access import Editor
from pages import _auth as auth
from pages import _messages as messages


@dataclass
class ExplainJob:
    feature: int
    dictionary_key: str
    explainer: str
    message: str = "starting"
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    result: int | None = None

    @property
    def running(self) -> bool:
        return self.finished is None


_JOBS: dict[str, ExplainJob] = {}
_LOCK = threading.Lock()


def _secrets() -> dict[str, Any]:
    try:
        return dict(st.secrets["explain"]) if "explain" in st.secrets else {}
    except Exception:  # no secrets file
        return {}


def job() -> ExplainJob | None:
    with _LOCK:
        return _JOBS.get(auth.session_id())


def _run(job: ExplainJob, ws: Any, ed: Editor, choice: Any) -> None:
    try:
        job.message = f"loading {choice.describe()}" if not choice.remote else "asking"
        backend = make_backend(choice)
        job.message = f"explaining and scoring with {backend.label}"
        got, failures = explain_and_store(ws, job.feature, backend, ed, job.dictionary_key)
        job.result = got
        if got is None:
            job.error = "; ".join(f"{f.stage}: {f.error}" for f in failures) or "no answer"
        elif failures:
            job.message = "stored; scoring failed: " + "; ".join(
                f"{f.stage}: {f.error}" for f in failures
            )
        else:
            job.message = "stored"
    except Exception as exc:
        job.error = messages.error_message(exc)
    finally:
        job.finished = time.time()


def start(ws: Any, ed: Editor, key: str, index: int) -> None:
    """Callback of the button: start explaining ``index`` (unless a job is running)."""
    with messages.shown_errors("Explain: "):
        ed.check()
        choice = explainer_choice(_secrets())
        sid = auth.session_id()
        with _LOCK:
            old = _JOBS.get(sid)
            if old is not None and old.running:
                raise ValueError(f"feature {old.feature} is still being explained: wait for it")
            new = _JOBS[sid] = ExplainJob(index, key, choice.describe())
        threading.Thread(
            target=_run, args=(new, ws, ed, choice), name=f"fs-explain-{sid}", daemon=True
        ).start()


def button(ws: Any, ed: Editor, key: str, index: int) -> None:
    """The "Explain" button and the state of this session's explanation job."""
    if ed.can_write:
        st.button(
            "Explain",
            key="fs_explain",
            icon=":material/psychology:",
            on_click=start,
            args=(ws, ed, key, index),
            help="Ask a language model for a one-sentence explanation of this feature from its "
            "top examples and logits, score it (detection, fuzzing) and keep it here.",
        )
    _progress(index)


def _progress(index: int) -> None:
    got = job()
    if got is None or got.feature != index:
        return
    if got.running:
        _follow(index)
    elif got.error:
        st.error(f"Explain: {got.error}", icon=":material/error:")
    else:
        st.caption(f"Explained with {messages.md(got.explainer)}: {messages.md(got.message)}")


@st.fragment(run_every=1.0)
def _follow(index: int) -> None:
    """While the job runs: its state, every second; when it ends, the whole page again."""
    got = job()
    if got is None or not got.running:
        st.rerun()  # the whole page: it shows the stored explanation
    st.caption(
        f":material/hourglass_top: {messages.md(got.message)} · {time.time() - got.started:.0f} s"
    )

"""Hosted mode under load: 8 concurrent browser sessions against one ``streamlit run``.

The driver (``tests/app/load_driver.py``, also behind ``bench/load_app.py``) writes the
hosted site (login off; allowlist, limits and the one-slot compute queue on), warms the
server up with one session, then runs 8 Chromium contexts in 3 short rounds: each
searches by a prompt of its own and opens feature pages. No timing is asserted (this
machine may have 2 cores shared by 8 browsers and the server); correctness, isolation and
memory are.
"""

from __future__ import annotations

import pytest

from tests.app.conftest import ARTIFACTS
from tests.app.load_driver import missing_requirements, report, run_load

SESSIONS = 8
ROUNDS = 3
SECONDS = 30  # 10 s per round: under load one search + feature iteration takes longer, so
# each session runs about one iteration per round (about 2 minutes in all on 2 cores)

# Measured on the tiny site (2 cores, 8 sessions, 3 rounds, five runs): the server holds
# 661-667 MB after the first round, which fills the caches (workspace, memo, Streamlit's
# message cache), and moves by -1 to +6 MB over the later rounds. 150 MB is 25 times that
# drift, yet a leak of about 3 MB per visit (dashboard data or session state kept after a
# session closes) over the ~48 visits after round 1 would exceed it; slower leaks need
# more rounds (bench/load_app.py --seconds 600 --rounds 10).
RSS_MARGIN_MB = 150


@pytest.fixture(scope="module")
def load():
    why = missing_requirements()
    if why:
        pytest.skip(why)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    res = run_load(SESSIONS, SECONDS, ROUNDS, log_path=ARTIFACTS / "streamlit-load.log")
    (ARTIFACTS / "load-report.txt").write_text(report(res) + "\n")
    return res


def test_no_errors_under_load(load):
    assert load["warmup"]["errors"] == []
    assert load["errors"] == [], report(load)
    assert load["served"] == load["requests"] > 0


def test_every_session_was_served(load):
    assert len(load["per_session"]) == SESSIONS
    for s in load["per_session"]:
        assert s["search"] >= 1 and s["feature"] >= 1, s


def test_no_session_sees_another_sessions_prompt(load):
    assert load["leaks"] == [], load["leaks"]


def test_server_memory_is_steady_after_the_first_round(load):
    rounds = [r["rss_mb"] for r in load["rss_mb"] if r["at"].startswith("round")]
    assert len(rounds) == ROUNDS
    assert rounds[-1] - rounds[0] <= RSS_MARGIN_MB, load["rss_mb"]

"""Helpers for the real-browser tests: a ``streamlit run`` server and Debian's chromium.

Playwright's own browser download cannot work offline, so the tests drive the system
chromium (``apt-get install -y chromium``) through ``executable_path``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.app.conftest import FACTORY, ROOT


def find_chromium() -> str | None:
    """Path of a system chromium, or ``None``."""
    for cand in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.access(cand, os.X_OK):
            return cand
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def streamlit_server(
    cache_dir: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
):
    """``streamlit run app.py`` on a free port with the test workspace; yields the base URL.

    ``env`` overrides environment variables; ``args`` are extra command-line flags (config
    options such as ``["--secrets.files", path]``)."""
    port = free_port()
    full_env = {
        **os.environ,
        "FEATURESCOPE_TEST_WORKSPACE": FACTORY,
        "FEATURESCOPE_CACHE_DIR": str(cache_dir),
        # the knowledge store next to the memo, never the project's cache/knowledge.db
        "FEATURESCOPE_DB": str(Path(cache_dir).parent / "knowledge.db"),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        *(args or []),
    ]  # fmt: skip
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited early: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"streamlit did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()

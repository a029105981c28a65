"""The command line: --help and inspect answer without importing torch or TransformerLens;
inspect prints a readable summary (JSON behind --json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import core.sources as sources
from core.cli import main
from tests.export.tiny_setup import DEAD, N_FEATURES, tiny_assets

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import sys
from core.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "transformer_lens", "transformers") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), "CODE=" + str(code))
"""


def _probe(*args: str) -> str:
    got = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert got.returncode == 0, got.stderr[-2000:]
    return got.stdout


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    assets = tiny_assets()
    out = tmp_path_factory.mktemp("cli") / "out"
    old, sources.CACHE_ROOT = sources.CACHE_ROOT, assets.cache_dir
    try:
        args = [
            "precompute", *assets.cli_sources(), "--output-dir", str(out),
            "--features", f"0:{N_FEATURES}", "--features-at-a-time", "12",
            "--min-density", "0.01", "--np-set-name", "tiny", "--no-progress",
        ]  # fmt: skip
        assert main(args) == 0
    finally:
        sources.CACHE_ROOT = old
    return out


def test_help_imports_no_heavy_module():
    got = _probe("--help")
    assert "HEAVY= CODE=0" in got, got
    assert "precompute" in got and "inspect" in got
    assert "HEAVY= CODE=0" in _probe("precompute", "--help")


def test_inspect_prints_a_summary(output, capsys):
    assert main(["inspect", str(output)]) == 0
    text = capsys.readouterr().out
    live = N_FEATURES - len(DEAD)
    lines = dict(line.split(None, 1) for line in text.splitlines() if line.strip())
    assert lines["status"].startswith("complete; chunks 2/2"), text
    assert lines["model"].strip() and lines["hook"] == "blocks.1.hook_resid_pre"
    assert f"{N_FEATURES} features" in lines["dictionary"]
    assert lines["features"].startswith(
        f"{N_FEATURES} requested · {live} rendered · {len(DEAD)} skipped"
    )
    assert "sequences ×" in lines["tokens"]
    assert lines["written"][:2] == "20"  # a date
    assert "memo " in lines["outputs"] and "html " in lines["outputs"]
    assert "{" not in text  # no raw JSON
    assert main(["inspect", str(output), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_done"] == live and d["n_skipped"] == len(DEAD) and d["complete"]


def test_inspect_imports_no_heavy_module(output):
    got = _probe("inspect", str(output))
    assert "HEAVY= CODE=0" in got, got
    assert "rendered" in got

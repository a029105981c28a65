"""``bench/gpu.py --tiny``: the GPU benchmark's code path (1 rank, 2 ranks under torchrun) on
the CPU, so the script is known to work before a GPU is lent; it prints one JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_tiny_mode_prints_one_json(tmp_path):
    out = tmp_path / "results.json"
    cmd = [sys.executable, "bench/gpu.py", "--tiny", "--out", str(out), "--work", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout[-3000:]  # one JSON object, nothing else on stdout
    summary = json.loads(lines[0])
    assert summary == json.loads(out.read_text())
    assert summary["tiny"] and summary["device"] == "cpu" and summary["errors"] == []
    by = {r["scenario"]: r for r in summary["results"]}
    for name in ("floor_fp32", "floor_bf16", "complete_fp32", "complete_bf16"):
        assert by[name]["seconds"] > 0 and by[name]["ranks"] == 1, by[name]
    for name in ("complete_fp32", "complete_bf16"):
        assert by[name]["n_features"] == 24
    two = by["complete_bf16_2ranks"]
    assert two["ranks"] == 2 and two["n_features"] == 24 and two["seconds"] > 0
    assert summary["two_rank_speedup"] > 0
    assert {"torch", "gpus", "cpus"} <= set(summary["machine"])
    assert "skipped" in by["saedashboard"]

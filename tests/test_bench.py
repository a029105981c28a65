"""Benchmark logic (nothing is timed here): a warm scenario fills the activation store it
needs before the clock starts, or refuses; the table says whether each run was warm or cold."""

from __future__ import annotations

import pytest

from bench.bench_engine import NotWarm, format_table, prepare_store, ran_label
from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine.sweep import run_sweep
from core.models import ModelAdapter
from tests.tiny import HOOK, make_model, make_sae


@pytest.fixture(scope="module")
def parts(tiny_tokens):
    model = ModelAdapter(make_model(), {"name": "tiny"}, bos_token_id=0)
    return model, SAELensDictionary(make_sae("standard", 32, 16, HOOK)), tiny_tokens


def _result(res) -> dict:
    return {"scenario": "x", "tool": "ours", "seconds": 1.0, "forward_passes": res.forward_passes}


def test_warm_scenario_on_an_empty_store_is_filled_first(parts, tmp_path):
    model, d, tokens = parts
    cfg = RunConfig(features=list(range(8)), batch_size=8, feature_correlation="requested")
    store = prepare_store(model, d, tokens, cfg, "warm", tmp_path / "store")
    assert list((tmp_path / "store").glob("*.safetensors")), "the store was not filled"
    res = run_sweep(model, d, tokens, cfg, activation_store=store)
    assert res.info.forward_passes == 0  # the timed run is really warm
    assert ran_label(_result(res.info)) == "warm"
    # fresh empties it: the next run is cold
    store = prepare_store(model, d, tokens, cfg, "fresh", tmp_path / "store")
    assert not list((tmp_path / "store").glob("*.safetensors"))
    res = run_sweep(model, d, tokens, cfg, activation_store=store)
    assert res.info.forward_passes > 0 and ran_label(_result(res.info)) == "cold"


def test_warm_scenario_that_cannot_be_filled_refuses(parts, tmp_path):
    model, d, tokens = parts
    cfg = RunConfig(features=[0, 1], batch_size=8, activation_cache_bytes=1)
    with pytest.raises(NotWarm, match="a warm run would be cold"):
        prepare_store(model, d, tokens, cfg, "warm", tmp_path / "store")


def test_table_says_which_ran():
    table = format_table(
        [
            {"scenario": "ours1024_warm", "tool": "ours", "seconds": 3.1, "forward_passes": 0},
            {"scenario": "ours1024_cold", "tool": "ours", "seconds": 9.0, "forward_passes": 8},
            {"scenario": "peer1024_warm", "tool": "saedashboard", "seconds": 50.0,
             "cache_state": "warm"},
            {"scenario": "bad_warm", "error": "cannot hold"},
        ]
    )  # fmt: skip
    rows = {line.split()[0]: line for line in table.splitlines()}
    assert rows["scenario"].rstrip().endswith("ran")
    assert rows["ours1024_warm"].endswith("warm") and rows["ours1024_cold"].endswith("cold")
    assert rows["peer1024_warm"].endswith("warm") and "ERROR cannot hold" in rows["bad_warm"]


# --- bench/bench_scale.py: every phase of the end-to-end benchmark, at a tiny size -------------
def test_scale_benchmark_writes_every_phase(tmp_path):
    import json

    from bench.bench_scale import PHASES, main

    out = tmp_path / "scale.json"
    argv = ["--tiny", "--out", str(out), "--work", str(tmp_path / "work")]
    assert main(argv + ["--scenarios", "floor,phases,precompute,peer1024_warm"]) == 0
    got = json.loads(out.read_text())
    by = {r["scenario"]: r for r in got["results"]}
    assert not [r for r in got["results"] if "error" in r], got["results"]
    assert set(by["phases"]["phases"]) == set(PHASES)
    assert set(by["floor"]["phases"]) == {"forward"}
    assert set(by["precompute"]["phases"]) == {"precompute"}
    for name in ("floor", "phases", "precompute"):
        for phase, p in by[name]["phases"].items():
            assert p["seconds"] > 0 and p["peak_rss_mb"] > 0 and p["ru_maxrss_mb"] > 0, phase
    assert by["phases"]["n_features"] == by["precompute"]["n_features"] == 24
    assert set(by["phases"]["phases"]["sweep"]["split"]) == {"pass1", "pass2", "collect"}
    assert "skipped" in by["peer1024_warm"]
    assert got["ratios"]["phases_over_floor"] > 0 and got["ratios"]["precompute_over_floor"] > 0
    assert not (tmp_path / "work" / "phases").exists()  # scratch outputs are removed


def test_scale_peer_is_skipped_without_its_venv(tmp_path, monkeypatch):
    import bench.bench_scale as scale

    monkeypatch.setattr(scale, "PEER_PY", tmp_path / "no-venv" / "python")
    got = scale.run_peer(tmp_path, tmp_path / "cache")
    assert "setup_peer.sh" in got["skipped"] and "seconds" not in got


def test_scale_memory_budget_passes_through_only_where_run_config_has_it():
    from bench.bench_scale import memory_budget_supported, parse_bytes, run_config

    opts = {"features": "0:4", "batch_size": 8, "device": "cpu", "feature_correlation": "all"}
    cfg = run_config({**opts, "memory_budget": parse_bytes("1.5G")}, 24)
    assert cfg.features == [0, 1, 2, 3]
    if memory_budget_supported():
        assert cfg.memory_budget == 3 * 2**29
    else:
        assert not hasattr(cfg, "memory_budget")
    assert (
        parse_bytes("512M") == 2**29 and parse_bytes("1000") == 1000 and parse_bytes(None) is None
    )


def test_workload_l0_sets_the_density():
    from bench.workload import density_for_l0

    assert density_for_l0(64, 24576) == 64 / 24576
    with pytest.raises(ValueError, match="l0"):
        density_for_l0(0, 24576)


# --- bench/bench_warm_page.py: the warm Feature page of a precompute output, at a tiny size ----
def test_warm_page_benchmark_runs_and_reports(tmp_path):
    import json

    from bench.bench_warm_page import main

    out = tmp_path / "warm.json"
    argv = ["--d-sae", "512", "--n-seq", "16", "--n-features", "4"]
    assert main([*argv, "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["d_sae"] == 512 and got["build"]["features_requested"] == 512
    assert got["build"]["build_seconds"] > 0 and not got["build"]["reused"]
    assert len(got["features"]) == 4 and got["features"][0] == 0
    for part in ("data", "page"):
        assert set(got[part]["seconds"]) == {str(i) for i in got["features"]}, part
        assert all(s > 0 for s in got[part]["seconds"].values()), part
    assert got["data"]["open_seconds"] > 0 and got["data"]["first_seconds"] > 0
    assert got["page"]["warmup_seconds"] > 0
    assert 0 < got["median_seconds"] <= got["max_seconds"] == got["page"]["max_seconds"]
    assert isinstance(got["meets_target"], bool) and got["target_seconds"] == 0.2
    if got["skipped_feature"] is not None:  # a skipped feature's page is timed too
        assert got["page"]["skipped_seconds"] > 0 and "skipped" in got["data"]["skipped_message"]


def test_warm_page_features_spread_over_the_range():
    from bench.bench_warm_page import pick_features

    got = pick_features(131072, 20)
    assert got == sorted(set(got)) and len(got) == 20
    assert {0, 65535, 131071} <= set(got)
    assert got == pick_features(131072, 20)  # a fixed seed
    assert pick_features(3, 20) == [0, 1, 2]


def test_warm_page_calibration_sets_the_l0():
    import torch

    from bench.bench_warm_page import calibrate

    sae = make_sae("standard", 32, 512, HOOK)
    sample = torch.randn(2048, 32, generator=torch.Generator().manual_seed(0))
    l0 = calibrate(sae, sample, 64 / 512, block=100)  # blocks that do not divide 512
    with torch.no_grad():
        by_sae = (sae.encode(sample) > 0).sum(-1).float().mean().item()
    assert abs(l0 - 64) < 0.5 and abs(by_sae - 64) < 0.5, (l0, by_sae)


def test_warm_page_build_is_reused_resumed_or_rebuilt(tmp_path, monkeypatch):
    import argparse
    from pathlib import Path

    import bench.bench_warm_page as wp

    calls: list[dict] = []

    def child(name, opts, tmp):
        calls.append(opts)
        Path(opts["output"]).mkdir(exist_ok=True)
        return {"build_seconds": 1.0}

    monkeypatch.setattr(wp, "child", child)
    args = argparse.Namespace(work=tmp_path, d_sae=8, n_seq=2, seq_len=4, l0=2.0, rebuild=False)
    out, built = wp.ensure_output(args, tmp_path)
    assert not built["reused"] and not built["resumed"] and len(calls) == 1
    assert wp.ensure_output(args, tmp_path)[1]["reused"] and len(calls) == 1
    (out / "built.json").unlink()  # interrupted: continued where it stopped
    (out / "manifest.json").write_text("{}")
    assert wp.ensure_output(args, tmp_path)[1]["resumed"] and (out / "manifest.json").exists()
    args.l0 = 3.0  # another workload: built afresh
    built = wp.ensure_output(args, tmp_path)[1]
    assert not built["resumed"] and not (out / "manifest.json").exists() and len(calls) == 3

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

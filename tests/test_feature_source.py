"""One compute path: the precompute runner, the app's workspace and the API store features
under one key scheme, so a precompute warms the app, and the app's "compute everything"
writes what the runner writes. Both are FeatureSources."""

from __future__ import annotations

import dataclasses
import json

import pytest

import core.engine.cached as cached
import core.sources as sources
from core.cli import build_parser
from core.config import RunConfig
from core.feature_source import FeatureSource
from core.memo import Memo
from core.precompute.args import config_from_args
from core.precompute.run import run_precompute
from core.precomputed import open_precomputed
from core.previews import SUMMARY_COLUMNS
from core.workspace import Workspace
from tests.export.tiny_setup import N_FEATURES, tiny_assets


@pytest.fixture(scope="module")
def assets():
    return tiny_assets()


@pytest.fixture(autouse=True)
def _token_cache(assets, monkeypatch):
    monkeypatch.setattr(sources, "CACHE_ROOT", assets.cache_dir)


def _precompute(assets, out, app: Memo, features: str, chunk: int = 4, **run: object):
    """Run ``python -m core precompute`` (in process) with ``run`` changes to its RunConfig."""
    ap, _ = build_parser()
    args = ap.parse_args(
        [
            "precompute",
            *assets.cli_sources(),
            "--features", features,
            "--features-at-a-time", str(chunk),
            "--min-density", "0.01",
            "--outputs", "memo",
            "--threads", "1",
            "--no-progress",
            "--output-dir", str(out),
        ]
    )  # fmt: skip
    cfg = config_from_args(args)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **run))
    run_precompute(cfg, app_memo=app)
    return cfg


def _workspace(cfg, memo: Memo) -> Workspace:
    return Workspace.from_specs(
        cfg.model, cfg.dictionary, cfg.dataset, memo=memo, config=RunConfig(device="cpu")
    )


def _no_compute(monkeypatch, ws: Workspace) -> None:
    """Any sweep, forward pass or encode from here on fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("computed although the features were precomputed")

    monkeypatch.setattr(cached, "run_sweep", refuse)
    monkeypatch.setattr(ws.model, "run_to_hooks", refuse)
    monkeypatch.setattr(ws.dictionary, "encode", refuse)


def test_a_precompute_warms_the_app(assets, tmp_path, monkeypatch):
    """Precompute features 0:8, open the same sources in a workspace: those pages come back
    with zero forward passes (before, the app recomputed everything unless the user found
    and opened the output directory by hand)."""
    app = Memo(tmp_path / "app" / "memo")
    cfg = _precompute(assets, tmp_path / "run", app, "0:8")
    ws = _workspace(cfg, app)
    assert ws.missing(list(range(8))) == []
    assert ws.missing([8, 9]) == [8, 9]
    _no_compute(monkeypatch, ws)
    got = ws.features(list(range(8)))
    with open_precomputed(tmp_path / "run") as store:
        for i in store.stored_features():
            assert json.dumps(got[i].to_dict()) == json.dumps(store.feature(i).to_dict())
        assert ws.identity_key() == store.identity_key()
    assert ws.cached(3) is not None and ws.previews([3])[3]["fires_on"]
    with pytest.raises(AssertionError, match="computed although"):
        ws.feature(8)  # not precomputed: this one would be computed


def test_a_moved_output_is_skipped_and_features_are_computed(assets, tmp_path):
    app = Memo(tmp_path / "app" / "memo")
    cfg = _precompute(assets, tmp_path / "run", app, "0:4")
    (tmp_path / "run").rename(tmp_path / "elsewhere")
    ws = _workspace(cfg, app)
    assert ws.missing([0, 1]) == [0, 1]
    assert ws.feature(1).index == 1


def test_compute_everything_in_the_app_writes_what_the_runner_writes(assets, tmp_path):
    """The app's memo entries and summary equal the runner's, key by key (same keys,
    same data), for every feature of the dictionary, dead ones included. (Both sweep all
    features at once: an encode of another subset of features rounds differently.)"""
    everything = f"0:{N_FEATURES}"
    cfg = _precompute(assets, tmp_path / "run", Memo(tmp_path / "a"), everything, chunk=N_FEATURES)
    ws = _workspace(cfg, Memo(tmp_path / "b" / "memo"))  # no registered run: computes all
    assert ws.missing(list(range(N_FEATURES))) == list(range(N_FEATURES))
    table = ws.summary()
    run_memo = Memo(tmp_path / "run" / "memo")
    feature_keys = [k for k in run_memo.stored_keys() if not k.startswith("chunk:")]
    assert len(feature_keys) == N_FEATURES
    for key in feature_keys:
        ours, theirs = ws.memo.get_feature(key), run_memo.get_feature(key)
        assert ours is not None, f"the app did not store {key}"
        assert json.dumps(ours.to_dict()) == json.dumps(theirs.to_dict()), key
    with open_precomputed(tmp_path / "run") as store:
        stored = store.summary()
        assert {k: stored[k] for k in SUMMARY_COLUMNS} == table
        assert any(stored["skipped"])  # dead features: stored, not rendered


def test_both_are_feature_sources(assets, tmp_path):
    app = Memo(tmp_path / "app" / "memo")
    cfg = _precompute(assets, tmp_path / "run", app, "0:4")
    ws = _workspace(cfg, app)
    with open_precomputed(tmp_path / "run") as store:
        for src in (ws, store):
            assert isinstance(src, FeatureSource)
            assert src.n_features == N_FEATURES
            assert src.describe()["n_features"] == N_FEATURES
            assert list(src.features([2, 0])) == [0, 2]
        assert ws.live and not store.live
        assert ws.dictionary_key() == store.dictionary_key() == ws.dictionary.fingerprint()
        assert store.has(3) and not store.has(4) and not store.has(N_FEATURES)
        assert ws.has(4) and not ws.has(N_FEATURES) and not ws.has(-1)


def test_requested_correlation_keys_follow_the_requested_set(assets, tmp_path, monkeypatch):
    """In "requested" correlation mode a feature's data depends on the set computed with
    it: the app requesting the runner's chunk gets it stored, another set is computed."""
    app = Memo(tmp_path / "app" / "memo")
    cfg = _precompute(assets, tmp_path / "run", app, "0:8", feature_correlation="requested")
    ws = Workspace.from_specs(
        cfg.model,
        cfg.dictionary,
        cfg.dataset,
        memo=app,
        config=RunConfig(device="cpu", feature_correlation="requested"),
    )
    assert ws.missing([0, 1, 2, 3]) == []
    assert ws.missing([0, 1]) == [0, 1]
    with open_precomputed(tmp_path / "run") as store:
        assert store.feature(6).index == 6  # (5 is dead: skipped)


@pytest.mark.parametrize("correlation, sweeps", [("all", 1), ("requested", 6), ("none", 6)])
def test_the_runner_sweeps_whole_dictionary_correlations_once(
    assets, tmp_path, monkeypatch, correlation, sweeps
):
    """With whole-dictionary correlations every chunk's own sweep would encode the whole
    dictionary again for its columns: the runner sweeps all chunks together (6 chunks of
    4 here) and writes them one by one; otherwise each chunk is swept alone."""
    calls: list[int] = []
    sweep = cached.run_sweep

    def counting(model, dictionary, tokens, config, **kwargs):
        calls.append(len(config.features))
        return sweep(model, dictionary, tokens, config, **kwargs)

    monkeypatch.setattr(cached, "run_sweep", counting)
    app = Memo(tmp_path / "app" / "memo")
    _precompute(assets, tmp_path / "run", app, f"0:{N_FEATURES}", feature_correlation=correlation)
    assert len(calls) == sweeps and sum(calls) == N_FEATURES
    with open_precomputed(tmp_path / "run") as store:
        assert store.complete and len(store.summary()["feature"]) == N_FEATURES

"""The memo layer: cached features skip the model; bad entries are dropped; no pickle."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path

import diskcache
import pytest
import torch

from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine import compute_features
from core.engine.cached import base_key
from core.memo import Memo, NoPickleDisk
from core.models import ModelAdapter
from tests.conftest import make_model, make_sae

HOOK = "blocks.1.hook_resid_pre"


class CountingModel(ModelAdapter):
    calls = 0

    def run_to_hooks(self, tokens, hooks):
        CountingModel.calls += 1
        return super().run_to_hooks(tokens, hooks)


@pytest.fixture()
def parts(tiny_tokens):
    model = CountingModel(make_model(), {"name": "tiny"}, bos_token_id=0)
    _, cache = model.model.run_with_cache(tiny_tokens, names_filter=HOOK)
    sae = make_sae("standard", 32, 24, HOOK, sample=cache[HOOK].reshape(-1, 32))
    return model, SAELensDictionary(sae), tiny_tokens


def test_second_request_runs_no_forward_pass(parts, tmp_path):
    model, d, toks = parts
    memo = Memo(tmp_path / "memo")
    cfg = RunConfig(features=[1, 2, 3], batch_size=8)
    CountingModel.calls = 0
    first = compute_features(model, d, toks, cfg, memo)
    assert CountingModel.calls > 0
    CountingModel.calls = 0
    second = compute_features(model, d, toks, cfg, memo)
    assert CountingModel.calls == 0
    assert second == first
    # a superset computes only the missing features, in one sweep
    both = compute_features(model, d, toks, RunConfig(features=[2, 5], batch_size=8), memo)
    assert CountingModel.calls == 1 + 3  # probe + 3 batches
    assert both[2] == first[2]
    # a result-changing option is a different key; an execution option is not
    CountingModel.calls = 0
    compute_features(model, d, toks, RunConfig(features=[1, 2, 3], batch_size=24), memo)
    assert CountingModel.calls == 0
    compute_features(model, d, toks, RunConfig(features=[1], n_top_examples=3), memo)
    assert CountingModel.calls > 0
    memo.close()


def test_corrupted_entry_is_dropped_and_recomputed(parts, tmp_path):
    model, d, toks = parts
    memo = Memo(tmp_path / "memo")
    cfg = RunConfig(features=[4])
    good = compute_features(model, d, toks, cfg, memo)[4]
    key = base_key(model, d, toks, cfg, [4]) + ":4"
    blob = memo._cache.get(key)
    bad = blob[:40] + bytes([blob[40] ^ 0xFF]) + blob[41:]
    memo._cache.set(key, bad)
    assert memo.get_feature(key) is None
    assert key not in memo
    CountingModel.calls = 0
    again = compute_features(model, d, toks, cfg, memo)[4]
    assert CountingModel.calls > 0 and again == good
    # truncated entry
    memo._cache.set(key, memo._cache.get(key)[:100])
    assert memo.get_feature(key) is None
    memo.close()


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(_Boom.target),))


def test_pickled_values_are_never_loaded(tmp_path):
    directory = tmp_path / "memo"
    memo = Memo(directory)
    with pytest.raises(TypeError, match="must be bytes"):
        memo._cache.set("k", {"not": "bytes"})
    memo.close()
    # an attacker with write access stores a pickle with the default Disk
    _Boom.target = str(tmp_path / "pwned")
    evil = diskcache.Cache(str(directory))
    evil.set("evil", _Boom())
    evil.set((1, 2), b"tuple key is pickled")
    evil.close()
    memo = Memo(directory)
    assert memo.get_bytes("evil") is None
    assert not (tmp_path / "pwned").exists()
    assert "evil" not in memo  # dropped
    with pytest.raises(ValueError, match="refusing to unpickle"):
        list(memo._cache.iterkeys())
    memo.close()
    assert pickle  # the module is only used by the attacker above


def test_disk_refuses_pickle_mode(tmp_path):
    disk = NoPickleDisk(str(tmp_path))
    with pytest.raises(TypeError):
        disk.store(123, read=False)
    with pytest.raises(TypeError):
        disk.put((1, 2))


def test_unwritable_cache_keeps_results(parts, tmp_path, monkeypatch):
    model, d, toks = parts
    memo = Memo(tmp_path / "memo")

    def refuse(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(memo._cache, "set", refuse)
    out = compute_features(model, d, toks, RunConfig(features=[0]), memo)
    assert out[0].n_tokens > 0 and memo.write_errors > 0
    memo.close()


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURESCOPE_CACHE_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("FEATURESCOPE_CACHE_SIZE", "1000000")
    memo = Memo()
    assert memo.directory == tmp_path / "elsewhere"
    assert memo._cache.size_limit == 1_000_000
    memo.put_bytes("a", b"x" * 10)
    assert memo.get_bytes("a") == b"x" * 10
    memo.close()
    assert torch  # imported for fixtures' models


def test_feature_bytes_are_deterministic_across_processes(parts, tmp_path):
    import subprocess
    import sys

    model, d, toks = parts
    from core.engine import run_sweep

    fd = run_sweep(model, d, toks, RunConfig(features=[2])).features[2]
    (tmp_path / "fd.json").write_text(fd.to_json())
    code = (
        "import sys;from core.engine.features import FeatureData;"
        "fd=FeatureData.from_json(open(sys.argv[1]).read());"
        "sys.stdout.buffer.write(fd.to_bytes())"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "fd.json")],
            capture_output=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
        for seed in (1, 2)
    ]
    assert runs[0] == runs[1] == fd.to_bytes()
    assert type(fd).from_bytes(runs[0]) == fd

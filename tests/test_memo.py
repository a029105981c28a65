"""The memo layer: cached features skip the model; bad entries are dropped; no pickle."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import sqlite3
from pathlib import Path

import diskcache
import pytest
import torch

from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine.cached import compute_features, source_key
from core.engine.rows import feature_from_row
from core.memo import Memo, NoPickleDisk, feature_key
from core.models import ModelAdapter
from tests.mounts import read_only_copy, tmpfs
from tests.tiny import HOOK, make_model, make_sae


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
    key = feature_key(source_key(model, d, toks, cfg), 4)  # feature_correlation "all"
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


def test_feature_rows_are_deterministic_across_processes(parts, tmp_path):
    """A feature's stored bytes do not depend on the process (hash seeds): the same
    columns packed in two other processes give the bytes packed here."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    from core.engine.sweep import run_sweep

    model, d, toks = parts
    fs = run_sweep(model, d, toks, RunConfig(features=[2, 7])).features
    fs.extras["note"] = [{"zeta": "é", "alpha": [1.5, None]}, {"b": 1, "a": 2}]  # dict order kept
    save_file({k: v.contiguous() for k, v in fs.cols.items()}, tmp_path / "cols.safetensors")
    save_file({"tokens": fs.tokens.contiguous()}, tmp_path / "tokens.safetensors")
    spec = {"order": fs.order, "vocab": fs.vocab, "window": fs.window, "extras": fs.extras}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = (
        "import sys,json;from safetensors.torch import load_file;"
        "from core.engine.result import FeatureSet;"
        "d=sys.argv[1];s=json.load(open(d+'/spec.json'));"
        "fs=FeatureSet(s['order'],load_file(d+'/cols.safetensors'),"
        "load_file(d+'/tokens.safetensors')['tokens'],s['vocab'],tuple(s['window']),s['extras']);"
        "sys.stdout.buffer.write(b''.join(fs.row_bytes(0, 2)))"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)],
            capture_output=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
        for seed in (1, 2)
    ]
    here = fs.row_bytes(0, 2)
    assert runs[0] == runs[1] == b"".join(here)
    assert [feature_from_row(b) for b in here] == [fs[2], fs[7]]


# --- read-only and full directories (real mounts; the tests run as root, where chmod
# stops nothing) -----------------------------------------------------------------------------
@pytest.fixture()
def read_only_memo_dir(tmp_path):
    """A memo directory holding a small and a file-backed entry, on a read-only mount."""
    memo = Memo(tmp_path / "memo")
    assert memo.put_bytes("small", b"s" * 10) and memo.put_bytes("big", b"b" * 100_000)
    memo.close()
    with read_only_copy(tmp_path / "memo", tmp_path / "ro") as directory:
        yield directory


def test_read_only_directory_is_served(read_only_memo_dir, caplog):
    with caplog.at_level("WARNING", logger="core.memo"):
        memo = Memo(read_only_memo_dir)
    assert memo.read_only and memo.writes_failing
    assert memo.get_bytes("small") == b"s" * 10
    assert memo.get_bytes("big") == b"b" * 100_000
    assert "big" in memo and len(memo) == 2 and memo.volume() > 100_000
    assert memo.put_bytes("new", b"n") is False  # skipped, not raised
    assert memo.get_bytes("new") is None
    said = " ".join(r.getMessage() for r in caplog.records)
    assert str(read_only_memo_dir) in said and "read-only" in said
    assert "FEATURESCOPE_CACHE_DIR" in said
    memo.close()


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "outside" / "deep" / "er" / "victim.txt"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"not the cache's")
    return victim


def _point_row(directory: Path, key: str, filename: str, size: int | None = None) -> None:
    con = sqlite3.connect(str(directory / "cache.db"))
    with con:
        if size is None:
            con.execute("UPDATE Cache SET filename = ? WHERE key = ?", (filename, key))
        else:
            con.execute(
                "UPDATE Cache SET filename = ?, size = ? WHERE key = ?", (filename, size, key)
            )
    con.close()


def test_rows_naming_files_outside_are_dropped_untouched(tmp_path):
    directory = tmp_path / "memo"
    victim = _victim(tmp_path)
    memo = Memo(directory)
    rel = Path(os.path.relpath(victim, directory)).as_posix()
    for n, name in enumerate([str(victim), rel, f"ab/cd/{'0' * 28}.val/../../../{rel}"]):
        key = f"k{n}"
        assert memo.put_bytes(key, b"v" * 100_000)
        _point_row(directory, key, name)
        assert memo.get_bytes(key) is None  # a corrupt entry: a miss
        assert key not in memo  # its row is gone
        assert victim.read_bytes() == b"not the cache's", name
        assert victim.parent.is_dir()  # nor its (now empty-looking) folders
        assert memo.put_bytes(key, b"again" * 10_000)  # recomputed, stored again
        assert memo.get_bytes(key) == b"again" * 10_000
    memo.close()


def _in_thread(fn, seconds: float = 20.0):
    import threading

    out: dict[str, object] = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the read hung"
    return out.get("r")


def test_rows_naming_special_files_are_corrupt(tmp_path):
    directory = tmp_path / "memo"
    memo = Memo(directory)
    assert memo.put_bytes("fifo", b"f" * 100_000)
    # a FIFO with a name of the memo's own form, inside the directory
    name = f"ab/cd/{'e' * 28}.val"
    (directory / "ab" / "cd").mkdir(parents=True)
    os.mkfifo(directory / name)
    _point_row(directory, "fifo", name)
    assert _in_thread(lambda: memo.get_bytes("fifo")) is None
    assert "fifo" not in memo
    # /dev/zero: never read (it would fill the memory)
    assert memo.put_bytes("zero", b"z" * 100_000)
    _point_row(directory, "zero", "/dev/zero", size=1 << 40)
    assert _in_thread(lambda: memo.get_bytes("zero")) is None
    assert Path("/dev/zero").exists()
    # a link of the memo's own form to a file outside: not followed, the target stays
    victim = _victim(tmp_path)
    assert memo.put_bytes("link", b"l" * 100_000)
    link = f"ab/cd/{'f' * 28}.val"
    (directory / "ab" / "cd").mkdir(parents=True, exist_ok=True)  # dropping the FIFO removed it
    (directory / link).symlink_to(victim)
    _point_row(directory, "link", link, size=victim.stat().st_size)
    assert memo.get_bytes("link") is None
    assert victim.read_bytes() == b"not the cache's"
    # a row whose size disagrees with its own file
    assert memo.put_bytes("size", b"s" * 100_000)
    con = sqlite3.connect(str(directory / "cache.db"))
    with con:
        con.execute("UPDATE Cache SET size = 10 WHERE key = 'size'")
    con.close()
    assert memo.get_bytes("size") is None and "size" not in memo
    memo.close()


def test_bad_settings_rows_do_not_break_later_opens(tmp_path, caplog):
    directory = tmp_path / "memo"
    memo = Memo(directory)
    assert memo.put_bytes("kept", b"k" * 100)
    memo.close()
    with caplog.at_level("WARNING"):
        Memo(directory).close()  # diskcache's own settings are all kept, silently
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    con = sqlite3.connect(str(directory / "cache.db"))
    with con:
        for key, value in [
            ("disk_surprise", 1),  # would be a Disk() argument
            ("eviction_policy", "bogus"),
            ("size_limit", "lots"),
            ("sqlite_journal_mode", "wal; DROP TABLE Cache"),
            ("_directory", "/etc"),  # would become an attribute of the cache
            ("count", "many"),
        ]:
            con.execute("INSERT OR REPLACE INTO Settings VALUES (?, ?)", (key, value))
    con.close()
    for _ in range(2):
        memo = Memo(directory)
        assert not memo.read_only
        assert memo.get_bytes("kept") == b"k" * 100
        assert memo.put_bytes("new", b"n" * 100)
        assert len(memo) == 2 and memo._cache.directory == str(directory)
        memo.close()


def test_compute_with_a_cache_that_fills_up(tmp_path, monkeypatch, caplog):
    """`python -m core compute` on a cache disk that fills up mid-run: the output is
    complete both times, a warning says why, and the second run opens the full cache
    (serving what it holds) instead of failing at start."""
    import json

    import core.sources as sources
    from core.cli import main
    from tests.export.tiny_setup import CONTEXT, N_FEATURES, N_PROMPTS, tiny_assets

    assets = tiny_assets()
    monkeypatch.setattr(sources, "CACHE_ROOT", assets.cache_dir)
    args = [
        "compute",
        "--model", str(assets.model_dir),
        "--dictionary", str(assets.sae_dir),
        "--dataset", str(assets.data_file),
        "--n-tokens", str(N_PROMPTS * CONTEXT),
        "--context-length", str(CONTEXT),
        "--device", "cpu",
        "--features", f"0:{N_FEATURES}",
    ]  # fmt: skip
    assert main([*args, "--no-memo", "--out", str(tmp_path / "ref.json")]) == 0
    ref = {f["index"]: f["n_active"] for f in json.loads((tmp_path / "ref.json").read_text())}
    # 550 kB: the cache database and the first features fit, the rest do not
    with tmpfs(tmp_path / "full", size="550k") as mnt:
        monkeypatch.setenv("FEATURESCOPE_CACHE_DIR", str(mnt / "memo"))
        for run in range(2):
            out = tmp_path / f"run{run}.json"
            caplog.clear()
            with caplog.at_level("WARNING", logger="core.memo"):
                assert main([*args, "--out", str(out)]) == 0
            got = {f["index"]: f["n_active"] for f in json.loads(out.read_text())}
            assert got == ref, f"run {run}: the output is incomplete or differs"
            said = " ".join(r.getMessage() for r in caplog.records)
            assert str(mnt / "memo") in said and "FEATURESCOPE_CACHE_DIR" in said, said
        assert shutil.disk_usage(mnt).free < 64 * 1024  # the disk really was full
        memo = Memo(mnt / "memo")
        kept = [k for k in memo.stored_keys() if k.rsplit(":", 1)[-1].isdigit()]
        assert kept and all(memo.get_feature(k) is not None for k in kept)
        memo.close()


def test_a_feature_read_back_is_shown_the_same(parts, tmp_path):
    """A feature read back from the memo keeps the order of every dict (a table's columns
    are shown in that order); before, a cached page showed them sorted by name."""
    model, d, toks = parts
    memo = Memo(tmp_path / "memo")
    cfg = RunConfig(features=[3, 5])
    fresh = compute_features(model, d, toks, cfg, memo)
    CountingModel.calls = 0
    stored = compute_features(model, d, toks, cfg, memo)
    assert CountingModel.calls == 0
    for f in (3, 5):
        assert list(stored[f].neuron_alignment.columns) == list(fresh[f].neuron_alignment.columns)
        assert json.dumps(stored[f].to_dict()) == json.dumps(fresh[f].to_dict())
    assert list(fresh[3].neuron_alignment.columns) != sorted(fresh[3].neuron_alignment.columns)
    memo.close()


# --- many features in one transaction ---------------------------------------------------------
@pytest.fixture()
def six_features(parts):
    from core.engine.sweep import run_sweep

    model, d, toks = parts
    fs = run_sweep(model, d, toks, RunConfig(features=list(range(6)))).features
    return [(f, fs[f], row) for f, row in zip(fs.order, fs.row_bytes(0, 6), strict=True)]


def test_put_rows_stores_a_batch(six_features, tmp_path):
    memo = Memo(tmp_path / "memo")
    items = [(f"k:{f}", row) for f, _, row in six_features]
    assert memo.put_rows(iter(items)) == 6
    for (key, row), (_, data, _) in zip(items, six_features, strict=True):
        assert memo.get_bytes(key) == row
        assert memo.get_feature(key) == data
    assert memo.put_rows([]) == 0 and not memo.writes_failing
    memo.close()


def test_put_rows_is_one_transaction(six_features, tmp_path, monkeypatch):
    """A failure half-way through keeps none of the batch: it was one transaction."""
    memo = Memo(tmp_path / "memo")
    put = memo.put_bytes
    calls = []

    def failing_third(key, row):
        calls.append(key)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return put(key, row)

    monkeypatch.setattr(memo, "put_bytes", failing_third)
    with pytest.raises(RuntimeError, match="boom"):
        memo.put_rows((f"k:{f}", row) for f, _, row in six_features)
    assert len(calls) == 3 and len(memo) == 0
    monkeypatch.setattr(memo, "put_bytes", put)
    assert memo.put_rows((f"k:{f}", row) for f, _, row in six_features) == 6
    assert len(memo) == 6
    memo.close()


def test_put_rows_whose_commit_fails(six_features, tmp_path, monkeypatch, caplog):
    """A commit that fails is rolled back without leaving its value files behind, said,
    and the features are then stored one by one."""
    directory = tmp_path / "memo"
    memo = Memo(directory)
    real = memo._cache.transact
    failed = []

    @contextlib.contextmanager
    def commit_fails_once():
        with real():
            yield
            if not failed:
                failed.append(True)
                raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(memo._cache, "transact", commit_fails_once)
    items = [(f"k:{f}", row) for f, _, row in six_features]
    items.append(("big", b"b" * 100_000))  # rows are small: one value kept in a file
    with caplog.at_level("WARNING", logger="core.memo"):
        assert memo.put_rows(items) == 7  # not raised
    assert failed and memo.write_errors == 0 and not memo.writes_failing
    assert "FEATURESCOPE_CACHE_DIR" in " ".join(r.getMessage() for r in caplog.records)
    assert all(memo.get_feature(f"k:{f}") == data for f, data, _ in six_features)
    assert memo.get_bytes("big") == b"b" * 100_000
    # the files the rolled-back rows named are gone: every value file left has its row
    (in_files,) = memo._rows("SELECT COUNT(*) FROM Cache WHERE filename IS NOT NULL")[0]
    assert 0 < in_files == len(list(directory.rglob("*.val")))
    memo.close()


def test_put_rows_on_a_read_only_directory(read_only_memo_dir, six_features):
    memo = Memo(read_only_memo_dir)
    assert memo.put_rows((f"k:{f}", row) for f, _, row in six_features) == 0
    assert memo.write_errors == 6 and len(memo) == 2
    memo.close()


def test_put_rows_on_a_disk_that_fills_up(six_features, tmp_path):
    """What fits is kept (and readable), the rest is counted as failed writes."""
    with tmpfs(tmp_path / "full", size="600k") as mnt:
        memo = Memo(mnt / "memo")
        items = [(f"k:{f}", row) for f, _, row in six_features] * 30
        items = [(f"{key}:{n}", row) for n, (key, row) in enumerate(items)]
        stored = memo.put_rows(items)
        kept = [k for k, _ in items if k in memo]
        assert 0 < stored == len(kept) < len(items)
        assert memo.writes_failing and memo.write_errors == len(items) - stored
        assert all(memo.get_feature(k) is not None for k in kept)
        memo.close()


def test_compute_features_saves_in_batches(tiny_tokens, tmp_path):
    """300 features: saved in 100 transactions of 3 (about a hundred progress updates)."""
    model = ModelAdapter(make_model(), bos_token_id=0)
    d = SAELensDictionary(make_sae("standard", 32, 300, HOOK, density=0.3))
    memo = Memo(tmp_path / "memo")
    batches: list[int] = []
    put_rows = memo.put_rows

    def recording(items):
        items = list(items)
        batches.append(len(items))
        return put_rows(items)

    memo.put_rows = recording
    fracs: list[float] = []
    cfg = RunConfig(features=list(range(300)), batch_size=8)
    got = compute_features(model, d, tiny_tokens, cfg, memo, progress=lambda f, m: fracs.append(f))
    assert batches == [3] * 100
    assert len([f for f in fracs if 0.8 < f <= 1.0]) == 100 and fracs[-1] == 1.0
    assert len(memo) == 300
    stored = compute_features(model, d, tiny_tokens, cfg, memo)  # from the memo
    assert all(stored[f] == got[f] for f in range(300))
    memo.close()

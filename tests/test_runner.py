"""Batch precompute: kill-and-resume identity, reading results back, config files, CLI errors."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import core.precompute.background as background
import core.sources as sources
from core import feature_map as fm
from core.cli import main
from core.engine.rows import feature_from_row
from core.errors import FeaturescopeError
from core.export.neuronpedia import NeuronpediaMeta, load_schema
from core.knowledge import open_store
from core.memo import Memo
from core.precompute.config import PrecomputeConfig
from core.precomputed import PrecomputedError, RunnerError, open_precomputed
from tests.export.tiny_setup import DEAD, N_FEATURES, PWNED, tiny_assets

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 2
N_CHUNKS = N_FEATURES // CHUNK


@pytest.fixture(scope="module")
def assets():
    return tiny_assets()


@pytest.fixture(autouse=True)
def _token_cache(assets, monkeypatch):
    monkeypatch.setattr(sources, "CACHE_ROOT", assets.cache_dir)


def base_args(assets) -> list[str]:
    return [
        "precompute",
        *assets.cli_sources(),
        "--features", f"0:{N_FEATURES}",
        "--features-at-a-time", str(CHUNK),
        "--min-density", "0.01",
        "--np-set-name", "tiny-res",
        "--threads", "1",
        "--no-progress",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(assets, tmp_path_factory):
    """An uninterrupted run, in this process."""
    out = tmp_path_factory.mktemp("ref") / "out"
    sources.CACHE_ROOT, old = assets.cache_dir, sources.CACHE_ROOT
    try:
        t = time.perf_counter()
        assert main([*base_args(assets), "--output-dir", str(out)]) == 0
        seconds = time.perf_counter() - t
    finally:
        sources.CACHE_ROOT = old
    print(f"tiny precompute: {N_FEATURES} features in {seconds:.1f} s")
    return out


def _files(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` except the memo (a database, compared by content)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "memo" not in p.relative_to(root).parts
    }


def _memo_entries(root: Path) -> dict[str, bytes]:
    memo = Memo(root / "memo")
    try:
        return {k: memo.get_bytes(k) for k in sorted(memo._cache.iterkeys())}
    finally:
        memo.close()


def _completed(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["chunks"]["completed"])
    except (OSError, ValueError, KeyError):
        return 0


def test_killed_run_resumes_to_identical_output(assets, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "core", *base_args(assets), "--output-dir", str(out)]
    env = {**os.environ, "FEATURESCOPE_DATA_DIR": str(assets.cache_dir), "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "first.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while _completed(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        # kill at an arbitrary point of a later chunk (chunks swept together are written
        # within milliseconds of each other)
        time.sleep(random.uniform(0.0, 0.01))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    done_at_kill = _completed(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert 1 <= done_at_kill < N_CHUNKS and manifest["status"] == "running", (
        f"the run was not interrupted mid-way ({done_at_kill}/{N_CHUNKS} chunks): make chunks smaller"
    )

    # what was written before the kill can be read back; the rest says it is pending
    with open_precomputed(out) as store:
        assert not store.complete
        first = next(f for f in range(CHUNK) if f not in DEAD)
        assert store.feature(first).index == first
        pending = N_FEATURES - 1
        with pytest.raises(PrecomputedError, match="not been computed yet"):
            store.feature(pending)
        assert len(store.summary()["feature"]) == done_at_kill * CHUNK

    # leftovers of an interrupted atomic write are ignored and cleaned up
    (out / "html").mkdir(exist_ok=True)
    (out / "html" / ".chunk-00011.html.tmp-4242").write_text("half a page")
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{N_CHUNKS - done_at_kill}/{N_CHUNKS} chunks computed now" in again.stdout

    ref_files, got_files = _files(reference), _files(out)
    assert sorted(got_files) == sorted(ref_files)
    for name, blob in ref_files.items():
        assert got_files[name] == blob, f"{name} differs after kill + resume"
    # the memo is a database (its files hold timestamps); compare it entry by entry: the
    # same bytes (a feature's row does not depend on the process that packed it)
    ref_memo, got_memo = _memo_entries(reference), _memo_entries(out)
    assert sorted(got_memo) == sorted(ref_memo)
    for key, blob in ref_memo.items():
        assert got_memo[key] == blob, key
        if not key.startswith("chunk:"):  # a feature, under the sources' memo key
            assert feature_from_row(blob).n_tokens > 0, key


def test_output_layout_and_store(assets, reference):
    names = set(_files(reference))
    live = [f for f in range(N_FEATURES) if f not in DEAD]
    assert "manifest.json" in names
    assert {f"html/chunk-{k:05d}.html" for k in range(N_CHUNKS)} <= names
    assert {f"neuronpedia/batch-{k}.json" for k in range(N_CHUNKS)} <= names
    assert {"html/index.html", "neuronpedia/skipped_indexes.json"} <= names
    schema = load_schema()
    seen = []
    for k in range(N_CHUNKS):
        batch = json.loads((reference / "neuronpedia" / f"batch-{k}.json").read_text())
        jsonschema.validate(batch, schema)
        assert batch["sae_set"] == "tiny-res" and batch["model_id"] == "tiny-gpt2"
        assert batch["layer"] == 1
        seen += [f["feature_index"] for f in batch["features"]]
        for f in batch["features"]:
            assert len(f["vector"]) == 32
    assert seen == live
    skipped = json.loads((reference / "neuronpedia" / "skipped_indexes.json").read_text())
    assert skipped["skipped_indexes"] == sorted(DEAD)
    page = (reference / "html" / "chunk-00000.html").read_text()
    assert PWNED not in page  # dataset tokens only as escaped JSON / entities
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["features"]["skipped"] == sorted(DEAD)
    assert str(reference) not in json.dumps(manifest)  # relocatable, comparable

    with open_precomputed(reference) as store:
        d = store.describe()
        assert d["complete"] and d["n_done"] == len(live) and d["n_skipped"] == len(DEAD)
        assert d["n_features"] == store.n_features == N_FEATURES
        assert d["hook"] == "blocks.1.hook_resid_pre"
        assert store.stored_features() == live
        fd = store.feature(live[3])
        assert fd.index == live[3] and fd.top_examples
        table = store.summary()
        assert set(table) >= {"feature", "density", "max_act", "mean_act", "n_active", "top_tokens"}
        assert table["feature"] == list(range(N_FEATURES))
        assert [table["skipped"][f] for f in DEAD] == [True] * len(DEAD)
        assert table["density"][live[3]] == fd.density
        with pytest.raises(PrecomputedError, match="skipped .*never fires"):
            store.feature(DEAD[0])
        with pytest.raises(PrecomputedError, match="does not exist: this dictionary has 24"):
            store.feature(N_FEATURES)
        assert store.html_path(live[0]) == reference / "html" / "chunk-00000.html"
        # the same id the app's Workspace gives the same model, dictionary and tokens
        from core.config import RunConfig
        from core.sources import DatasetSpec, DictionarySpec, ModelSpec
        from core.workspace import Workspace

        ws = Workspace.from_specs(
            ModelSpec.from_dict(store.manifest["specs"]["model"]),
            DictionarySpec.from_dict(store.manifest["specs"]["dictionary"]),
            DatasetSpec.from_dict(store.manifest["specs"]["dataset"]),
            config=RunConfig(device="cpu"),
        )
        assert store.identity_key() == ws.identity_key()
    with pytest.raises(RunnerError, match="not a precompute output directory"):
        open_precomputed(reference / "html")


def test_config_file_and_resume_guard(assets, tmp_path, capsys):
    out = tmp_path / "cfg-out"
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        "\n".join(
            [
                f'model = "{assets.model_dir}"',
                f'dictionary = "{assets.sae_dir}"',
                f'dataset = "{assets.data_file}"',
                "n_prompts = 16",
                "context_length = 16",
                'device = "cpu"',
                'features = "0:4"',
                "features_at_a_time = 2",
                'outputs = "neuronpedia,memo"',
                "no_progress = true",
                f'output_dir = "{out}"',
                "[run_config]",
                "n_top_examples = 3",
            ]
        )
    )
    assert main(["precompute", "--config", str(cfg), "--np-sae-id-suffix", "v2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_config"]["n_top_examples"] == 3
    assert manifest["outputs"] == ["neuronpedia", "memo"]
    assert not (out / "html").exists()
    batch = json.loads((out / "neuronpedia" / "batch-1.json").read_text())
    assert batch["sae_id_suffix"] == "v2"
    assert len(batch["features"][0]["activations"]) <= 3 + 10 * 5
    capsys.readouterr()
    # the same directory with different settings is refused, then replaced on request
    args = ["precompute", "--config", str(cfg), "--features", "0:6"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a different precompute run" in err and "--overwrite" in err
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["features"]["n_requested"] == 6
    # a directory with results but no manifest is not ours: refused
    foreign = tmp_path / "foreign"
    (foreign / "html").mkdir(parents=True)
    assert main([*args, "--output-dir", str(foreign)]) == 2
    assert "does not hold a precompute run" in capsys.readouterr().err
    # JSON works too; unknown keys are named
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"output_dir": str(out), "featurs": "0:4"}))
    assert main(["precompute", "--config", str(bad)]) == 2
    assert "unknown setting(s) ['featurs']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--transcoder", "--clt", "x", "--clt-layer", "0"], "were both given"),
        (["--transcoder", "--skip-transcoder"], "were both given"),
        (["--skip-transcoder", "--use-clt", "--sae-path", "x"], "were both given"),
        (["--use-clt", "--no-dictionary"], "--use-clt needs the CLT directory"),
        (["--clt", "x", "--no-dictionary"], "needs --clt-layer"),
        (["--clt", "x", "--clt-layer", "0"], "--clt names the dictionary; drop --dictionary"),
        (["--clt-layer", "2"], "only apply with --clt"),
        (["--features", "abc"], "cannot read feature index 'abc'"),
        (["--features", "0:999"], "feature range 0:999 is out of range: the dictionary has 24"),
        (
            ["--features", "0:9999999999999"],
            "0:9999999999999 is out of range: the dictionary has 24",
        ),
        (["--features", "3,99999999"], "feature index 99999999 is out of range"),
        (["--transcoder"], "asks for a transcoder but the dictionary is a sae"),
        (["--n-tokens", "64"], "give the amount of data once"),
        (["--outputs", "memo,pdf"], "outputs must be a non-empty subset"),
        (["--layout", "summary,nope"], "unknown dashboard component 'nope'"),
        (["--features-at-a-time", "0"], "features at a time must be a positive integer"),
        (["--min-density", "2"], "density threshold must be between 0 and 1"),
        (["--writers", "two"], "--writers takes a number of processes (0 or more) or auto"),
        (["--writers", "-1"], "--writers takes a number of processes (0 or more) or auto"),
    ],
)
def test_cli_errors_are_clear(assets, tmp_path, capsys, extra, message):
    args = [*base_args(assets), "--output-dir", str(tmp_path / "o"), *extra]
    if "--no-dictionary" in args:  # CLT cases name no SAE
        k = args.index("--dictionary")
        args = [a for n, a in enumerate(args) if n not in (k, k + 1) and a != "--no-dictionary"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err or ("error: " in err and message in err), err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_wandb_offline(assets, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "wb-out"
    args = [*base_args(assets), "--features", "0:4", "--outputs", "memo", "--output-dir", str(out)]
    assert main([*args, "--wandb", "--wandb-project", "fs-test"]) == 0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_read_only_output_is_served_and_refused_clearly(assets, reference, tmp_path, capsys):
    """A finished output on a read-only mount: the store reads it; a precompute into it
    says the directory is read-only and what it holds, instead of a raw OSError."""
    from tests.mounts import read_only_copy

    live = [f for f in range(N_FEATURES) if f not in DEAD]
    with read_only_copy(reference, tmp_path / "ro") as out:
        with open_precomputed(out) as store:
            assert store.memo.read_only
            fd = store.feature(live[2])
            assert fd.index == live[2] and fd.top_examples
            assert len(store.summary()["feature"]) == N_FEATURES
        capsys.readouterr()
        assert main([*base_args(assets), "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"the output directory {out} is read-only" in err, err
        assert "complete" in err and "python -m core inspect" in err
        assert "--output-dir" in err


def test_damaged_manifest_ranges_are_refused(reference, tmp_path):
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for field, runs in [("done", [[0, 100]]), ("requested", [[0, 10**13]]), ("done", [[3]])]:
        bad = json.loads(json.dumps(manifest))
        bad["features"][field] = runs
        (out / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(RunnerError, match=f"manifest's {field} features list is damaged"):
            open_precomputed(out)


def test_errors_derive_from_the_base_and_keep_their_builtin():
    assert issubclass(RunnerError, FeaturescopeError) and issubclass(RunnerError, ValueError)
    assert issubclass(PrecomputedError, FeaturescopeError)
    assert issubclass(PrecomputedError, KeyError)  # callers look features up and catch KeyError
    assert str(PrecomputedError("feature 3 was skipped")) == "feature 3 was skipped"


def test_neuronpedia_explanations_from_the_knowledge_store(
    assets, reference, tmp_path, monkeypatch
):
    key = json.loads((reference / "manifest.json").read_text())["identity"][
        "dictionary_fingerprint"
    ]
    monkeypatch.setenv("FEATURESCOPE_DB", str(tmp_path / "knowledge.db"))
    store = open_store()
    live = [f for f in range(N_FEATURES) if f not in DEAD]
    store.annotate(key, live[0], label="<b>a label</b>", author="t")
    store.annotate(key, live[1], label="overridden", author="t")
    store.add_explanation(
        key, live[1], "an explanation", explainer="m", prompt_version="1",
        scores={"detection_f1": 0.5}, method="test", author="t",
    )  # fmt: skip
    out = tmp_path / "out"
    pick = f"{live[0]},{live[1]}"
    args = [a if a != f"0:{N_FEATURES}" else pick for a in base_args(assets)]
    assert main([*args, "--output-dir", str(out)]) == 0
    records = json.loads((out / "neuronpedia" / "explanations.json").read_text())
    got = {r["index"]: (r["description"], r["typeName"]) for r in records}
    assert got == {
        str(live[0]): ("<b>a label</b>", "featurescope-label"),
        str(live[1]): ("an explanation", "featurescope-explanation"),
    }
    assert len({r["layer"] for r in records}) == 1 and records[0]["layer"].endswith("-tiny-res")


def test_skipped_feature_reads_its_own_chunk_summary_only(reference, monkeypatch):
    """Why a feature was skipped comes from its chunk's summary: the page of a skipped
    feature does not read every chunk's summary (256 of them at 131,072 features)."""
    dead = DEAD[-1]
    with open_precomputed(reference) as store:
        expected = store.summary()["density"][dead]  # the whole summary, as reference
        store._summary = None
        read: list[str] = []
        get_json = store.memo.get_json

        def spy(key: str, density: float | None = None):
            read.append(key)
            part = get_json(key)
            if density is not None:
                part["density"][part["feature"].index(dead)] = density
            return part

        monkeypatch.setattr(store.memo, "get_json", spy)
        with pytest.raises(PrecomputedError, match=f"feature {dead} was skipped .*never fires"):
            store.feature(dead)
        assert expected == 0 and read == [f"chunk:{store.chunk_of(dead)}:summary"]
        monkeypatch.setattr(store.memo, "get_json", lambda key: spy(key, 0.004))
        with pytest.raises(PrecomputedError, match="density 0.004 is below the threshold 0.01"):
            store.feature(dead)


def test_index_page_shows_the_stored_map_only(assets, reference, tmp_path, monkeypatch):
    assert 'class="fs-map"' not in (reference / "html" / "index.html").read_text()
    key = json.loads((reference / "manifest.json").read_text())["identity"][
        "dictionary_fingerprint"
    ]
    app_memo = tmp_path / "app-memo"
    stored = fm.FeatureMap(
        np.arange(N_FEATURES, dtype=np.float32), np.zeros(N_FEATURES, np.float32), "pca", {}
    )
    memo = Memo(app_memo)
    memo.put_bytes(fm.map_key(key, "pca", {}), stored.to_bytes())
    memo.close()
    monkeypatch.setenv("FEATURESCOPE_CACHE_DIR", str(app_memo))  # the app's memo holds the map
    monkeypatch.setenv("FEATURESCOPE_DB", str(tmp_path / "knowledge.db"))
    out = tmp_path / "out"
    args = [a if a != f"0:{N_FEATURES}" else "0,1" for a in base_args(assets)]
    assert main([*args, "--output-dir", str(out), "--outputs", "html"]) == 0
    page = (out / "html" / "index.html").read_text()
    img = re.search(r'<figure class="fs-map"><img alt="([^"]*)" src="data:image/png;base64,', page)
    assert img is not None and "<" not in img.group(1)
    assert f"PCA of the decoder directions; {N_FEATURES} features drawn" in page


def test_batches_written_by_worker_processes_are_identical(
    assets, reference, tmp_path, monkeypatch
):
    """Neuronpedia batches built and written by spawned workers (as a big run does) are
    byte-identical to those written in process, and every chunk is recorded once its
    batch is written."""
    monkeypatch.setattr(background, "MIN_FEATURES", 0)
    monkeypatch.setattr(background.os, "cpu_count", lambda: 3)
    submitted: list[int] = []
    sent: list[int] = []
    real_submit = background.BatchWriter.submit

    def spy(self, k, *args):
        assert self.workers == 2
        submitted.append(k)
        real_submit(self, k, *args)
        sent.append(self.sent)

    monkeypatch.setattr(background.BatchWriter, "submit", spy)
    out = tmp_path / "workers"
    assert main([*base_args(assets), "--output-dir", str(out)]) == 0  # --writers auto
    assert sorted(submitted) == list(range(N_CHUNKS))
    assert sent[0] == 1  # the first batch goes to a worker (the others while one is free)
    ref_files, got_files = _files(reference), _files(out)
    assert sorted(got_files) == sorted(ref_files)
    assert any(name.startswith("neuronpedia/batch-") for name in got_files)
    for name, blob in ref_files.items():
        assert got_files[name] == blob, name
    assert _completed(out) == N_CHUNKS


def test_writers_default_to_the_callers_process_from_python():
    """Through the Python API a run writes its batches in process unless asked (spawned
    workers re-import a script's main module); the command line's auto picks workers for
    big runs on more than one core only."""
    assert PrecomputeConfig(output_dir="x").writers == 0
    with pytest.raises(RunnerError, match="writers must be a number of processes"):
        PrecomputeConfig(output_dir="x", writers=-2).validate()
    assert background.worker_count(background.MIN_FEATURES - 1) == 0
    cores = os.cpu_count() or 1
    want = 0 if cores < 2 else min(background.MAX_WORKERS, cores - 1)
    assert background.worker_count(background.MIN_FEATURES) == want


def test_a_writer_process_that_dies_is_a_clear_error(tmp_path):
    """A batch writer killed (as the kernel's out-of-memory killer would) stops the run with
    a RunnerError that says the recorded chunks are kept and how to go on."""
    meta = NeuronpediaMeta(model_id="tiny", layer=0, sae_set="tiny-res", dataset="d")
    with background.BatchWriter(1) as writer:
        writer.submit(0, tmp_path / "batch-0.json", lambda: [], [], meta, {}, {})
        assert list(writer.finished(wait=True)) == [0]
        assert json.loads((tmp_path / "batch-0.json").read_text())["features"] == []
        assert writer._pool is not None
        for proc in list(writer._pool._processes.values()):
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(30)

        def next_batch() -> None:
            writer.submit(1, tmp_path / "batch-1.json", lambda: [], [], meta, {}, {})
            list(writer.finished(wait=True))

        with pytest.raises(RunnerError, match="stopped .* --writers 0") as err:
            next_batch()
    assert "Run the same command again to resume" in str(err.value)

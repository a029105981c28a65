"""``torchrun --nproc-per-node 2 -m core precompute`` (gloo on CPU) against one process.

Files (HTML, Neuronpedia, manifest) are byte-identical. Memo entries agree exactly except
float sums and what is computed from them (mean activation, neuron and feature
correlations; see :mod:`core.engine.distributed`): the tokens are added in another order,
so those agree within float32 summation bounds from ``tests/tolerance.py``. A rank killed
mid-run stops the job; the same command resumes to the uninterrupted 2-rank output.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import core.engine.sweep as sweep
import core.sources as sources
from core.cli import main
from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine.distributed import CONSTANT, Shard, merged_fields
from core.engine.gram import BufferedInt8Gram, GramStats
from core.engine.rows import feature_from_row
from core.engine.stats import BinCounts, IntervalSampler, MomentStats, TopExamples
from core.models import ModelAdapter
from tests.export.tiny_setup import CONTEXT, N_FEATURES, N_PROMPTS, tiny_assets
from tests.test_runner import _completed, _files, _memo_entries
from tests.tiny import HOOK, make_model, make_sae, random_tokens
from tests.tolerance import gamma

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).parent / "torchrun"

pytestmark = pytest.mark.skipif(
    not (TORCHRUN.exists() and dist.is_available() and dist.is_gloo_available()),
    reason="needs torchrun and the gloo backend",
)


def args(assets, out: Path, *extra: str) -> list[str]:
    return [
        "precompute",
        *assets.cli_sources(),
        "--features", f"0:{N_FEATURES}",
        "--features-at-a-time", "2",
        "--min-density", "0.01",
        "--np-set-name", "tiny-res",
        "--threads", "1",
        "--no-progress",
        "--output-dir", str(out),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def assets():
    return tiny_assets()


def _env(assets) -> dict[str, str]:
    return {
        **os.environ,
        "FEATURESCOPE_DATA_DIR": str(assets.cache_dir),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "FEATURESCOPE_DIST_TIMEOUT": "60",
    }


def _torchrun(assets, out: Path, *extra: str) -> list[str]:
    return [
        str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "core",
        *args(assets, out, *extra),
    ]  # fmt: skip


def _one_process(assets, out: Path, *extra: str) -> None:
    sources.CACHE_ROOT, old = assets.cache_dir, sources.CACHE_ROOT
    try:
        assert main(args(assets, out, *extra)) == 0
    finally:
        sources.CACHE_ROOT = old


@pytest.fixture(scope="module")
def runs(assets, tmp_path_factory):
    """One uninterrupted 1-process run (in this process) and one 2-rank run."""
    root = tmp_path_factory.mktemp("dist")
    _one_process(assets, root / "one")
    two = subprocess.run(
        [a for a in _torchrun(assets, root / "two") if a != "--no-progress"],
        cwd=ROOT,
        env=_env(assets),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-4000:]
    assert two.stdout.count("chunks computed now") == 1, two.stdout  # rank 0 reports alone
    # one progress bar for the whole job (rank 0's), not one per rank
    bar = f"precompute ({N_PROMPTS * CONTEXT:,} tokens on 2 ranks)"
    assert two.stderr.count(f"{bar}:   0%") == 1, two.stderr[-3000:]  # one bar started
    assert f"{N_FEATURES}/{N_FEATURES} features [" in two.stderr, two.stderr[-3000:]
    return root / "one", root / "two"


# float32 sums over N_PROMPTS * CONTEXT tokens in two orders; a correlation is a ratio of a
# handful of such sums (each within gamma(n) relatively), all of magnitude at most one
TOL = 16 * gamma(N_PROMPTS * CONTEXT)


def assert_close(got: Any, want: Any, where: str) -> None:
    """Equal structures; floats within :data:`TOL` (relative, absolute below 1)."""
    if isinstance(want, float) and isinstance(got, float):
        if math.isnan(want):
            assert math.isnan(got), where
        else:
            assert abs(got - want) <= TOL * max(1.0, abs(want)), (where, got, want)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{i}]")
    else:
        assert got == want, (where, got, want)


def test_two_ranks_equal_one(runs):
    assert_same_output(*runs)


def assert_same_output(one: Path, two: Path) -> None:
    """``two`` (2 ranks) holds what ``one`` (1 process) holds; see the module docstring."""
    files_one, files_two = _files(one), _files(two)
    assert sorted(files_two) == sorted(files_one)
    assert any(name.startswith("neuronpedia/batch-") for name in files_one)
    for name, blob in files_one.items():
        assert files_two[name] == blob, f"{name} differs between 1 and 2 ranks"
    memo_one, memo_two = _memo_entries(one), _memo_entries(two)
    assert sorted(memo_two) == sorted(memo_one) and len(memo_one) > N_FEATURES
    exact = {"n_tokens", "n_active", "density", "max_act", "act_hist", "logit_hist"}
    exact |= {"top_logits", "bottom_logits", "neuron_alignment", "top_examples", "intervals"}
    exact |= {"decoder_norm", "extras"}
    for key, blob in memo_one.items():
        if key.startswith("chunk:"):  # the summary table, as JSON
            assert_close(json.loads(memo_two[key]), json.loads(blob), key)
            continue
        want = feature_from_row(blob).to_dict()
        got = feature_from_row(memo_two[key]).to_dict()
        assert sorted(got) == sorted(want)
        for field in sorted(exact & set(want)):
            assert got[field] == want[field], (key, field)
        assert_close(got, want, key)  # mean_act, correlated_neurons, correlated_features


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker of ``parent`` with ``RANK=rank``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def test_killed_rank_stops_the_job_and_the_rerun_resumes(assets, tmp_path):
    """With correlations among the requested features every chunk is its own sweep, so
    rank 1 dies inside a later chunk's sweep while rank 0 waits in a collective."""
    extra = ("--correlation", "requested")
    out = tmp_path / "killed"
    cmd, env = _torchrun(assets, out, *extra), _env(assets)
    log = tmp_path / "first.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while _completed(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None and proc.poll() is None, log.read_text()[-3000:]
        os.kill(victim, signal.SIGKILL)
        t = time.monotonic()
        proc.wait(timeout=120)  # no hang: torchrun and the collectives' failure stop rank 0
        stopped_in = time.monotonic() - t
    text = log.read_text(errors="replace")
    assert proc.returncode != 0, text[-3000:]
    assert stopped_in < 90, stopped_in
    assert "Signal 9 (SIGKILL)" in text, text[-3000:]  # torchrun names the rank that died
    # rank 0 says what happened and what to do (its collective failed, or torchrun stopped it)
    assert "run the same command again to resume" in text, text[-3000:]
    done_at_kill = _completed(out)
    n_chunks = N_FEATURES // 2
    assert 1 <= done_at_kill < n_chunks, f"not interrupted mid-way ({done_at_kill}/{n_chunks})"

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{n_chunks - done_at_kill}/{n_chunks} chunks computed now" in again.stdout
    _one_process(assets, tmp_path / "one", *extra)
    assert_same_output(tmp_path / "one", out)


@pytest.mark.parametrize(
    ("n_seq", "world"), [(10, 2), (7, 3), (2, 4), (1, 1)], ids=["even", "uneven", "empty", "one"]
)
def test_shards_cover_the_sequences_once_in_order(n_seq, world):
    seen = []
    for rank in range(world):
        for sl in Shard(rank, world).batches(n_seq, 3):
            assert sl.stop - sl.start <= 3
            seen.extend(range(sl.start, sl.stop))
    assert seen == list(range(n_seq))


def test_sparse_correlations_over_the_budget_are_refused_across_ranks(monkeypatch):
    """Budgeted (stored sparse) correlations are not split across ranks: a clear refusal
    before any collective, not a hang or a wrong table."""
    model = ModelAdapter(make_model(), bos_token_id=0)
    dictionary = SAELensDictionary(make_sae("standard", 32, 16, HOOK))
    monkeypatch.setattr(sweep, "current_shard", lambda: Shard(0, 2))
    cfg = RunConfig(device="cpu", memory_budget=64)
    with pytest.raises(
        sweep.EngineError, match="not split across ranks yet: raise --memory-budget"
    ):
        sweep.run_sweep(model, dictionary, random_tokens(4, 8, seed=0), cfg)


def _accumulators() -> list[object]:
    offsets = torch.arange(-2, 3)
    return [
        MomentStats(4, 3, torch.device("cpu")),
        MomentStats(4, 3, torch.device("cpu"), signed=True),
        MomentStats(4, None, torch.device("cpu")),
        TopExamples(4, 2, offsets, False, "cpu"),
        BinCounts(4, 5, "cpu"),
        IntervalSampler(torch.arange(4), 3, 2, offsets, False, 0, "cpu"),
        GramStats(4, 4, torch.device("cpu"), symmetric=True),
        BufferedInt8Gram(torch.ones(4), torch.device("cpu"), block=32, buffer_bytes=1024),
    ]


@pytest.mark.parametrize("acc", _accumulators(), ids=lambda a: type(a).__name__)
def test_every_accumulator_tensor_is_merged_across_ranks(acc):
    """A tensor added to an accumulator must be merged across ranks (or be the same on
    every rank): otherwise a torchrun sweep would silently keep rank 0's part."""
    tensors = {k for k, v in vars(acc).items() if isinstance(v, torch.Tensor)}
    merged = set(merged_fields(acc))
    assert merged <= tensors, merged - tensors
    assert tensors - merged <= CONSTANT, f"not merged across ranks: {tensors - merged - CONSTANT}"

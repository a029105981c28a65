"""Correlated features under a memory budget: the blocked computation from stored sparse
activations gives the dense computation's top-k (sets and values, up to rounding)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import core.engine.gram_budget as gram_budget
import core.engine.sparse_topk as sparse_topk
from core.cli import build_parser
from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine.gram import GramStats
from core.engine.gram_budget import (
    MemoryBudgetError,
    SparseStoreGram,
    correlation_bytes,
    dense_gram_bytes,
    min_work_bytes,
)
from core.engine.sweep import run_sweep
from core.models import ModelAdapter
from core.precompute.args import config_from_args, parse_byte_size
from core.precompute.manifest import RunnerError
from tests.engine.test_sweep import Bounds, dense_reference
from tests.tiny import HOOK, make_model, make_sae, make_workspace, random_tokens
from tests.tolerance import assert_top_k, pearson_tolerance

CPU = torch.device("cpu")
BOS = 0


def _sparse_acts(n: int, f: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(n, f, generator=g) < density
    return torch.rand(n, f, generator=g) * on


def _reference(a: np.ndarray, rows: np.ndarray, self_col: np.ndarray):
    """Float64 Pearson of each row with every column (-inf for itself and constants), and
    the rounding bound of each float32 value."""
    out, tols = [], []
    for r, s in zip(rows, self_col, strict=True):
        x = a[:, r]
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.array(
                [np.corrcoef(x, a[:, j])[0, 1] if a[:, j].std() > 0 else -np.inf for j in
                 range(a.shape[1])]
            )  # fmt: skip
        p[s] = -np.inf
        out.append(p)
        tols.append(
            [pearson_tolerance(x, a[:, j]) if np.isfinite(p[j]) else 0.0 for j in range(len(p))]
        )
    return out, tols


def _through_dense_rows(store: SparseStoreGram, *args):
    """``store.top_correlated(*args)`` with every row computed from its dense row of sums
    (as rows near a tie in the column order are)."""
    real = sparse_topk.ColumnOrder.candidates

    def no_margin(self, *a):
        cols, ok = real(self, *a)
        return cols, torch.zeros_like(ok)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sparse_topk.ColumnOrder, "candidates", no_margin)
        return store.top_correlated(*args)


@pytest.mark.parametrize("rows_are_cols", [False, True])
def test_blocks_match_float64_top_k(rows_are_cols):
    """Many blocks, scans, pair chunks and segments: every row's top-k is the float64 one."""
    n_cols, batches, batch = 90, 7, 33
    rows = torch.arange(n_cols) if rows_are_cols else torch.tensor([0, 4, 5, 17, 40, 41, 88])
    n_rows = rows.numel()
    store = SparseStoreGram(
        n_rows, n_cols, CPU, 1 << 30, None if rows_are_cols else rows, segment_entries=150
    )
    a = _sparse_acts(batches * batch, n_cols, 0.08, seed=1)
    a[:, 3] = 0.0  # a feature that never fires: never chosen
    a[:, 60] = a[:, 61]  # two identical features: each other's best match
    for b in range(batches):
        part = a[b * batch : (b + 1) * batch]
        for sl in (slice(0, 20), slice(20, 55), slice(55, n_cols)):  # column chunks
            store.stage(part[:, sl], sl)
        store.commit(batch, torch.tensor(float(batch)))
    assert store.nnz == int((a != 0).sum()) and len(store.segments) > 1
    # the smallest working area: a few rows at a time, their non-zeros a row or two at a
    # time, pairs in many chunks
    store.budget = store.nbytes + min_work_bytes(n_cols)
    block, scan, pairs, nonzeros = store.plan()
    assert len(store.row_blocks()) > 1 and block < n_rows
    assert pairs < int((a != 0).sum(1).pow(2).sum())
    assert nonzeros < 2 * n_cols
    row_sum, row_sumsq = a.sum(0)[rows], (a * a).sum(0)[rows]
    self_col = rows if not rows_are_cols else torch.arange(n_cols)
    p, i, c = store.top_correlated(row_sum, row_sumsq, 4, self_col)

    an = a.double().numpy()
    ref, tols = _reference(an, rows.numpy(), self_col.numpy())
    for r in range(n_rows):
        x = an[:, rows[r]]
        if x.std() == 0:  # a feature that never fires correlates with nothing
            assert torch.isinf(p[r]).all()
            continue
        assert_top_k(i[r].tolist(), p[r].tolist(), ref[r], 4, np.array(tols[r]))
        y = an[:, i[r].numpy()]
        cos = (x @ y) / (np.linalg.norm(x) * np.linalg.norm(y, axis=0))
        np.testing.assert_allclose(c[r].numpy(), np.nan_to_num(cos), atol=1e-5)
    row60 = (rows == 60).nonzero()
    if row60.numel():
        assert int(i[int(row60)][0]) == 61
    assert 3 not in i.flatten().tolist()

    # every row through its dense row of the same sums (what rows near a tie in the column
    # order get): bit for bit the same values, and the same columns (exact ties, such as
    # features 60 and 61, may come in either order)
    fp, fi, fc = _through_dense_rows(store, row_sum, row_sumsq, 4, self_col)
    assert torch.equal(fp, p) and torch.equal(fc, c)
    for r in range(n_rows):
        finite = torch.isfinite(p[r])
        assert set(fi[r][finite].tolist()) == set(i[r][finite].tolist())

    # the dense accumulator on the same data: the same sets, the same values up to rounding
    dense = GramStats(n_rows, n_cols, CPU, symmetric=False, strategy="dense")
    dense.update(a[:, rows], a, torch.tensor(float(a.shape[0])))
    dp, di, _ = dense.top_correlated(row_sum, row_sumsq, 4, self_col)
    for r in range(n_rows):
        if an[:, rows[r]].std() == 0:
            assert torch.equal(dp[r], p[r])
            continue
        tol = np.array(tols[r])
        assert_top_k(di[r].tolist(), dp[r].tolist(), ref[r], 4, tol)
        np.testing.assert_array_less(np.abs(p[r] - dp[r]).numpy(), 2 * tol[i[r]] + 1e-12)


def test_merge_equals_union():
    a = _sparse_acts(80, 30, 0.1, seed=2)
    n = torch.tensor(40.0)

    def fed(parts):
        g = SparseStoreGram(30, 30, CPU, 1 << 30)
        for part in parts:
            g.update(part, part, n)
        return g

    whole = fed([a[:40], a[40:]])
    merged = fed([a[:40]]).merge(fed([a[40:]]))
    assert merged.nnz == whole.nnz and float(merged.n_tokens) == 80
    s, ss = a.sum(0), (a * a).sum(0)
    pw, iw, _ = whole.top_correlated(s, ss, 3, torch.arange(30))
    pm, im, _ = merged.top_correlated(s, ss, 3, torch.arange(30))
    assert torch.equal(iw, im)
    torch.testing.assert_close(pm, pw)


def test_store_over_budget_is_refused_with_the_numbers():
    a = _sparse_acts(64, 500, 0.2, seed=3)
    g = SparseStoreGram(500, 500, CPU, min_work_bytes(500) + 20_000, total_tokens=640)
    with pytest.raises(MemoryBudgetError) as err:
        for _ in range(10):
            g.update(a, a, torch.tensor(64.0))
    msg = str(err.value)
    for part in ("500 features", "of 640 tokens", "non-zeros", "memory budget", "--memory-budget"):
        assert part in msg, msg
    assert "fewer tokens" in msg and "feature_correlation='requested'" in msg
    assert isinstance(err.value, ValueError)


def test_correlation_bytes_follow_the_plan():
    assert correlation_bytes(10, 100, 1000, 5, 1 << 20) == (0, 4000)
    assert correlation_bytes(4096, 131072, 3_000_000, 64, 4 << 30) == (0, 4096 * 131072 * 4)
    store, work = correlation_bytes(131072, 131072, 3_000_000, 64, 4 << 30)
    assert store == 3_000_000 * (64 * 8 + 8) and store + work == 4 << 30


# ---- the sweep ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep_setup():
    model = make_model(n_layers=3)
    tokens = random_tokens(40, 16, seed=1, bos=BOS)
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    x = cache[HOOK]
    sae = make_sae("standard", 32, 512, HOOK, sample=x.reshape(-1, 32), density=0.03)
    acts, valid, _ = dense_reference(sae, x, tokens)
    bounds = Bounds.of(sae, x, acts, valid)
    return (
        ModelAdapter(model, bos_token_id=BOS),
        SAELensDictionary(sae),
        tokens,
        acts,
        valid,
        bounds,
    )


@pytest.mark.parametrize(
    ("features", "scope"),
    [(None, "all"), (list(range(0, 512, 4)), "all"), (list(range(0, 400, 2)), "requested")],
)
def test_sweep_under_budget_matches_dense(sweep_setup, monkeypatch, features, scope):
    """Budget forced small vs large: same data, and correlated features that are the dense
    Pearson top-k of numpy's float64 activations (sets and values up to rounding)."""
    ma, d, tokens, acts, valid, bounds = sweep_setup
    blocks: list[list[tuple[int, int]]] = []
    row_blocks = gram_budget.SparseStoreGram.row_blocks

    def spy(self):
        blocks.append(row_blocks(self))
        return blocks[-1]

    monkeypatch.setattr(gram_budget.SparseStoreGram, "row_blocks", spy)
    base = dict(features=features, feature_correlation=scope, batch_size=6, n_table_rows=4)
    big = run_sweep(ma, d, tokens, RunConfig(**base))
    assert not blocks  # the dense sums fit 4 GiB
    req = features or list(range(512))
    n_cols = 512 if scope == "all" else len(req)
    budget = dense_gram_bytes(len(req), n_cols) // 2 + min_work_bytes(n_cols)
    small = run_sweep(ma, d, tokens, RunConfig(**base, memory_budget=budget))
    assert blocks and len(blocks[0]) > 1  # the blocked path ran, in several blocks
    assert small.info.config["memory_budget"] == budget

    all_v = acts[valid]
    cols = list(range(512)) if scope == "all" else req
    for f in req[:: max(1, len(req) // 12)]:
        a, b = small.features[f], big.features[f]
        # everything but the correlated features is computed as before: equal
        assert dataclasses.replace(a, correlated_features=b.correlated_features) == b
        ref = np.full(512, -np.inf)
        tol = np.zeros(512)
        av = all_v[:, f]
        if av.std() == 0:
            continue
        for j in cols:
            if j != f and all_v[:, j].std() > 0:
                ref[j] = np.corrcoef(av, all_v[:, j])[0, 1]
                tol[j] = bounds.pearson(f, av, all_v[:, j], j)
        for fd in (a, b):
            cf = fd.correlated_features
            assert_top_k(cf.indices, cf.columns["pearson"], ref, 4, tol)


def test_sweep_over_budget_names_the_fix(sweep_setup):
    ma, d, tokens, *_ = sweep_setup
    with pytest.raises(MemoryBudgetError, match="Raise it .*--memory-budget"):
        run_sweep(ma, d, tokens, RunConfig(memory_budget=min_work_bytes(512) + 1000))
    # without correlations the budget is not needed
    res = run_sweep(ma, d, tokens, RunConfig(features=[1], feature_correlation="none",
                                            memory_budget=1))  # fmt: skip
    assert res.features[1].correlated_features.indices == []


# ---- configuration --------------------------------------------------------------------------------
def test_memory_budget_is_an_execution_field():
    assert RunConfig(memory_budget=123).result_key_dict() == RunConfig().result_key_dict()
    assert RunConfig(memory_budget=None).memory_budget is None
    for bad in (0, -5, 1.5, "8G", True):
        with pytest.raises(ValueError, match="memory_budget"):
            RunConfig(memory_budget=bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [("8G", 8 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("123", 123), ("64kb", 65536),
     ("auto", None), (1000, 1000)],
)  # fmt: skip
def test_memory_budget_option(text, size, tmp_path):
    assert parse_byte_size(text) == size
    _, pre = build_parser()
    args = pre.parse_args(["--output-dir", str(tmp_path), "--memory-budget", str(text)])
    assert config_from_args(args).run.memory_budget == size
    default = config_from_args(pre.parse_args(["--output-dir", str(tmp_path)]))
    assert default.run.memory_budget == RunConfig().memory_budget


@pytest.mark.parametrize("text", ["lots", "0", "-1G", "8X", "", "1e9"])
def test_bad_memory_budget_is_refused_clearly(text):
    with pytest.raises(RunnerError, match="--memory-budget must be a positive size like 8G"):
        parse_byte_size(text)


def test_memory_estimate_follows_the_plan():
    """The Sources page's estimate: dense sums within the budget, else the sparse store
    (ASSUMED_L0 per token) and the blocks, bounded by the budget instead of F x F."""
    ws = make_workspace(512, RunConfig())
    n_tok = ws.tokens.numel()
    dense = ws.memory_estimate(512)
    assert dense["correlations_mb"] == 512 * 512 * 4 / 2**20 and dense["sparse_store_mb"] == 0
    budget = 300_000
    ws.config = RunConfig(memory_budget=budget)
    est = ws.memory_estimate(512)
    store = n_tok * (gram_budget.ASSUMED_L0 * 8 + 8)
    assert est["sparse_store_mb"] == store / 2**20
    assert est["correlations_mb"] * 2**20 == max(budget, store + min_work_bytes(512))
    assert est["total_mb"] - est["correlations_mb"] == pytest.approx(
        dense["total_mb"] - dense["correlations_mb"]
    )
    ws.config = RunConfig(feature_correlation="none", memory_budget=budget)
    assert ws.memory_estimate(512)["correlations_mb"] == 0


@pytest.mark.parametrize("seed", [3, 4])
def test_signed_activations_take_the_other_column_order(seed):
    """Rows with a negative mean (signed directions) look for the columns they never meet from
    the other end of the column order; the result is still the dense rows' top-k, exactly."""
    g = torch.Generator().manual_seed(seed)
    n, f = 600, 60
    on = torch.rand(n, f, generator=g) < 0.01
    a = (torch.randn(n, f, generator=g) - 0.3) * on
    store = SparseStoreGram(f, f, CPU, 1 << 30)
    store.stage(a, slice(0, f))
    store.commit(n, torch.tensor(float(n)))
    row_sum, row_sumsq = a.sum(0), (a * a).sum(0)
    assert (row_sum < 0).any() and (row_sum > 0).any()
    self_col = torch.arange(f)
    p, i, c = store.top_correlated(row_sum, row_sumsq, 5, self_col)
    dp, di, dc = _through_dense_rows(store, row_sum, row_sumsq, 5, self_col)
    assert torch.equal(p, dp) and torch.equal(c, dc)
    for r in range(f):
        finite = torch.isfinite(p[r])
        assert set(i[r][finite].tolist()) == set(di[r][finite].tolist())
    # most rows meet few columns: their top-k includes columns they never meet
    met = (a != 0).T.float() @ (a != 0).float() > 0
    assert sum(int((~met[r, i[r]]).any()) for r in range(f)) > f // 2


def test_segment_top_k_is_each_rows_sorted_top_k():
    """Rows laid side by side and one topk: each row's k largest entries, in order, never a
    padding slot (rows with fewer than k entries, rows with none, -inf entries)."""
    g = torch.Generator().manual_seed(5)
    counts = torch.tensor([0, 1, 3, 7, 0, 12, 2])
    row = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    values = torch.randn(row.numel(), generator=g)
    values[4] = float("-inf")
    idx, r, rank = sparse_topk.segment_top_k(row, values, counts.numel(), 4)
    got = {(int(a), int(b)): int(i) for i, a, b in zip(idx, r, rank, strict=True)}
    start = 0
    for rr, cnt in enumerate(counts.tolist()):
        mine = values[start : start + cnt]
        want = torch.sort(mine, descending=True).values[:4].tolist()
        have = [float(values[got[(rr, j)]]) for j in range(min(4, cnt))]
        assert have == want and all(start <= got[(rr, j)] < start + cnt for j in range(min(4, cnt)))
        assert (rr, min(4, cnt)) not in got
        start += cnt


def test_candidates_are_the_first_columns_a_row_never_meets():
    """The first k + SLACK columns in the order that a row does not meet and that are not its
    own, widening past the first look for rows that meet most of them; the column count
    where too few are left."""
    g = torch.Generator().manual_seed(6)
    n_cols, k = 300, 5
    order = sparse_topk.ColumnOrder(torch.rand(n_cols, generator=g), torch.ones(n_cols))
    met = (torch.rand(4, n_cols, generator=g) < torch.tensor([[0.0], [0.3], [0.9], [1.0]])).float()
    met[3, 7] = 0.0  # the last row meets every column but two: one is its own
    self_col = torch.tensor([0, 1, 2, 7])
    got, ok = order.candidates(1, met, torch.arange(4), self_col, k)
    m = k + sparse_topk.SLACK
    for r in range(4):
        free = [c for c in order.orders[1].tolist() if met[r, c] == 0 and c != self_col[r]]
        want = (free + [n_cols] * m)[:m]
        assert got[r].tolist() == want
    assert got[3].tolist() == [n_cols] * m and bool(ok[3])


@pytest.mark.parametrize("extend_max", [1 << 14, 4])
def test_near_ties_in_the_column_order_are_all_candidates(monkeypatch, extend_max):
    """Columns whose mean/std differ by rounding-sized amounts (rare features, each firing
    twice with nearly the same values): every one within the margin of a row's k-th is a
    candidate (or, past EXTEND_MAX of them, the row is computed densely), so the top-k is
    the dense rows' exactly."""
    g = torch.Generator().manual_seed(7)
    n, f, rare = 400, 70, 60
    a = torch.zeros(n, f)
    busy = f - rare
    a[:, :busy] = torch.rand(n, busy, generator=g) * (torch.rand(n, busy, generator=g) < 0.05)
    for j in range(rare):  # two firings, values 1 and 1 + j ulps-ish: near-equal mean/std
        t = torch.randperm(n, generator=g)[:2]
        a[t[0], busy + j], a[t[1], busy + j] = 1.0, 1.0 + 3e-7 * j
    monkeypatch.setattr(sparse_topk, "EXTEND_MAX", extend_max)
    widths, complete = [], []
    real = sparse_topk.ColumnOrder.candidates

    def spy(self, *args):
        cols, ok = real(self, *args)
        widths.append(cols.shape[1])
        complete.append(bool(ok.all()))
        return cols, ok

    monkeypatch.setattr(sparse_topk.ColumnOrder, "candidates", spy)
    store = SparseStoreGram(f, f, CPU, 1 << 30)
    store.update(a, a, torch.tensor(float(n)))
    row_sum, row_sumsq = a.sum(0), (a * a).sum(0)
    self_col = torch.arange(f)
    k = 5
    p, i, c = store.top_correlated(row_sum, row_sumsq, k, self_col)
    if extend_max > rare:
        assert max(widths) > k + sparse_topk.SLACK and all(complete)
    else:
        assert not all(complete)
    monkeypatch.setattr(sparse_topk.ColumnOrder, "candidates", real)
    dp, di, dc = _through_dense_rows(store, row_sum, row_sumsq, k, self_col)
    assert torch.equal(p, dp)
    every, every_i, _ = _through_dense_rows(store, row_sum, row_sumsq, f, self_col)
    for r in range(f):  # the same columns, but for exact ties at the k-th value
        above = p[r] > p[r, -1]
        assert set(i[r][above].tolist()) == set(di[r][above].tolist())
        assert torch.equal(c[r][above], dc[r][above])
        tied = ~above & torch.isfinite(p[r])
        for col in i[r][tied].tolist():
            assert every[r][every_i[r] == col] == p[r, -1]

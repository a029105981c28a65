"""The compiled pair loops (the Gram's pair sums, the sparse store's join) give the torch
path's floats bit for bit."""

from __future__ import annotations

import pytest
import torch

import core.engine.gram as gram_module
from core.engine import pairs_cpu
from core.engine.gram import add_pair_sums
from core.engine.gram_budget import SparseStoreGram, min_work_bytes
from core.engine.stats import coalesced_coo
from tests.tolerance import assert_sums_close

CPU = torch.device("cpu")


def _operands(n_tok: int, n_feat: int, density: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n_tok, n_feat, generator=g)
    a = torch.where(torch.rand(n_tok, n_feat, generator=g) < density, a * 3.0, 0.0)
    tok, col = a.nonzero().T
    val = a[tok, col]
    by_feature = coalesced_coo(torch.stack([col, tok]), val, (n_feat, n_tok))
    by_token = coalesced_coo(torch.stack([tok, col]), val, (n_tok, n_feat))
    return a, by_feature, by_token


@pytest.mark.parametrize("upper", [False, True])
@pytest.mark.parametrize("scratch_rows", [1, 5, 1000])
def test_compiled_pair_sums_equal_the_torch_path(monkeypatch, upper, scratch_rows):
    """Several batches into the same sums (each batch's cell sums start from zero, then
    are added once), rows split into scratch blocks of any size, many products per cell
    (so any change in the order of additions shows in the last bits)."""
    n_feat = 37
    monkeypatch.setattr(gram_module, "PAIR_SCRATCH_BYTES", scratch_rows * 4 * n_feat)
    batches = [_operands(400, n_feat, d, seed) for seed, d in enumerate((0.3, 0.05, 0.6))]
    got = torch.randn(n_feat, n_feat, generator=torch.Generator().manual_seed(9))
    want = got.clone()
    assert pairs_cpu.supported(got, batches[0][1].values(), batches[0][2].values())
    for _, by_feature, by_token in batches:
        add_pair_sums(got, by_feature, by_token, upper=upper)
    with monkeypatch.context() as m:
        m.setattr(pairs_cpu, "supported", lambda *tensors: False)  # the torch operators
        for _, by_feature, by_token in batches:
            add_pair_sums(want, by_feature, by_token, upper=upper)
    assert torch.equal(got, want)
    dense = sum(a.double().T @ a.double() for a, _, _ in batches)
    start = torch.randn(n_feat, n_feat, generator=torch.Generator().manual_seed(9)).double()
    mask = torch.ones(n_feat, n_feat).triu().bool() if upper else torch.ones(n_feat, n_feat).bool()
    abs_sum = dense + start.abs()
    assert_sums_close(got[mask], (start + dense)[mask], abs_sum[mask], 3 * 400 + 1)


@pytest.mark.parametrize("rows_are_cols", [False, True])
def test_compiled_join_gives_the_sparse_stores_floats(monkeypatch, rows_are_cols):
    """The sparse store's top-k correlations (its blocks of rows joined from the stored
    non-zeros, in several segments and scans) are the same floats with the compiled join
    as with torch's operators."""
    n_cols, batches, batch = 60, 6, 40
    rows = torch.arange(n_cols) if rows_are_cols else torch.tensor([0, 4, 5, 17, 40, 59])
    g = torch.Generator().manual_seed(3)
    a = torch.rand(batches * batch, n_cols, generator=g)
    a = a * (torch.rand(a.shape, generator=g) < 0.15)
    results, joins = [], []
    real_join = pairs_cpu.join_cpu
    monkeypatch.setattr(pairs_cpu, "join_cpu", lambda *a: joins.append(1) or real_join(*a))
    for compiled in (True, False):
        store = SparseStoreGram(
            rows.numel(), n_cols, CPU, 1 << 30, None if rows_are_cols else rows, segment_entries=90
        )
        for b in range(batches):
            part = a[b * batch : (b + 1) * batch]
            for sl in (slice(0, 25), slice(25, n_cols)):
                store.stage(part[:, sl], sl)
            store.commit(batch, torch.tensor(float(batch)))
        store.budget = store.nbytes + min_work_bytes(n_cols)  # blocks of a few rows
        assert len(store.segments) > 1 and (len(store.row_blocks()) > 1 or not rows_are_cols)
        with monkeypatch.context() as m:
            if not compiled:
                m.setattr(pairs_cpu, "supported", lambda *tensors: False)
            self_col = rows if not rows_are_cols else torch.arange(n_cols)
            row_sum, row_sumsq = a.sum(0)[rows], (a * a).sum(0)[rows]
            results.append(store.top_correlated(row_sum, row_sumsq, 5, self_col))
        assert bool(joins) == compiled  # each way was the one taken
        joins.clear()
    for got, want in zip(*results, strict=True):
        assert torch.equal(got, want)

"""Features side by side and nearest features across dictionaries, against dense references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core import compare as cmp
from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from tests.engine.test_sweep import Bounds, dense_reference
from tests.tiny import HOOK, make_sae, make_workspace
from tests.tolerance import gamma

D = 32


def _unit(w: torch.Tensor) -> np.ndarray:
    w = w.detach().double().numpy()
    return w / np.linalg.norm(w, axis=1, keepdims=True)


@pytest.mark.parametrize("block", [cmp.BLOCK, 7])
def test_nearest_across_equals_dense_reference(monkeypatch, block):
    monkeypatch.setattr(cmp, "BLOCK", block)  # many blocks: no features x features matrix
    narrow = SAELensDictionary(make_sae("standard", D, 40, HOOK, seed=0))
    wide = SAELensDictionary(make_sae("standard", D, 300, HOOK, seed=1))
    cos = _unit(narrow.sae.W_dec) @ _unit(wide.sae.W_dec).T  # dense float64 reference
    tol = 4 * gamma(D) + 1e-7
    for i in (0, 17, 39):
        got = cmp.nearest_across(narrow, i, wide, k=5)
        ref = np.sort(cos[i])[::-1][:5]
        np.testing.assert_allclose([g["cosine"] for g in got], ref, atol=tol, rtol=0)
        for g in got:  # each listed feature has the cosine it claims
            assert g["cosine"] == pytest.approx(cos[i, g["feature"]], abs=tol)
        assert len({g["feature"] for g in got}) == 5


def test_nearest_across_refuses_other_spaces():
    a = SAELensDictionary(make_sae("standard", D, 8, HOOK))
    b = SAELensDictionary(make_sae("standard", 16, 8, HOOK))
    with pytest.raises(cmp.CompareError, match="different sizes"):
        cmp.nearest_across(a, 0, b)
    with pytest.raises(cmp.CompareError, match="out of range"):
        cmp.nearest_across(a, 8, a)


@pytest.mark.parametrize(
    ("indices", "needle"), [([1], "2 to 4"), ([1, 2, 3, 4, 5], "2 to 4"), ([1, 99], "range")]
)
def test_check_indices(indices, needle):
    with pytest.raises(cmp.CompareError, match=needle):
        cmp.check_indices(indices, 16)
    assert cmp.check_indices([3, 1, 3], 16) == [3, 1]


@pytest.fixture(scope="module")
def ws():
    # one table row: most pairs are missing from the whole-dictionary tables
    cfg = RunConfig(n_top_examples=4, n_interval_examples=2, n_intervals=3, n_table_rows=1)
    return make_workspace(24, cfg, density=0.3)


def test_compare_against_dense_reference(ws):
    idx = [5, 0, 11, 20]
    got = cmp.compare(ws, idx)
    assert got.indices == idx and list(got.features) == idx
    u = _unit(ws.dictionary.decoder_directions(torch.tensor(idx)))
    np.testing.assert_allclose(got.decoder_cosine, u @ u.T, atol=4 * gamma(D) + 1e-7, rtol=0)
    assert all(v is not None for row in got.coactivation for v in row)
    assert got.coactivation_source == "tables and computed together"
    # Pearson of the activation vectors over every non-BOS token (float64 reference)
    x = ws.model.run_to_hooks(ws.tokens, [HOOK])[HOOK]
    sae = ws.dictionary.sae
    acts, valid, _ = dense_reference(sae, x, ws.tokens)
    bounds = Bounds.of(sae, x, acts, valid)
    for r, a in enumerate(idx):
        assert got.coactivation[r][r] == 1.0
        for c, b in enumerate(idx):
            if a == b:
                continue
            va, vb = acts[:, :, a][valid], acts[:, :, b][valid]
            ref = np.corrcoef(va, vb)[0, 1]
            assert got.coactivation[r][c] == pytest.approx(ref, abs=bounds.pearson(a, va, vb, b))

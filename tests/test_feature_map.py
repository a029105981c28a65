"""The feature map: exact PCA (against numpy's SVD), seeded UMAP, the memo, drawing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load

from core import feature_map as fm
from core.dictionaries.saelens import SAELensDictionary
from core.memo import Memo
from tests.tiny import HOOK, make_sae
from tests.tolerance import U32, gamma

D = 32


def _dictionary(n: int, seed: int = 0) -> SAELensDictionary:
    return SAELensDictionary(make_sae("standard", D, n, HOOK, seed=seed))


@pytest.fixture(scope="module")
def small() -> SAELensDictionary:
    return _dictionary(500)


def _reference_pca(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of the centred unit rows by numpy's SVD (float64)."""
    u = w / np.linalg.norm(w, axis=1, keepdims=True)
    c = u - u.mean(0)
    left, s, _ = np.linalg.svd(c, full_matrices=False)
    return left[:, :2] * s[:2], s


def test_pca_equals_numpy_svd_up_to_sign(monkeypatch):
    # two stretched input axes: well-separated principal axes (a clear eigengap), so the
    # bound below is tight enough to catch a wrong axis or projection
    sae = make_sae("standard", D, 500, HOOK)
    with torch.no_grad():
        sae.W_dec[:, 0] *= 4
        sae.W_dec[:, 1] *= 2
    small = SAELensDictionary(sae)
    w = small.decoder_directions(None).detach().double().numpy()
    want, s = _reference_pca(w)
    n = w.shape[0]
    # float32 unit rows differ from exact ones by ~gamma(D) per element; the covariance by
    # at most 2 n that (rows of norm <= 2 after centring); Davis-Kahan turns it into an
    # axis error over the eigengap; coordinates are rows (norm <= 2) times axes
    row_err = 4 * gamma(D)
    gap = min(s[0] ** 2 - s[1] ** 2, s[1] ** 2 - s[2] ** 2)
    tol = 2 * (row_err + 2 * (2 * n * 2 * row_err) / gap) + 4 * U32
    for block in (fm.BLOCK, 7):  # one block, and many blocks (never a features x features matrix)
        monkeypatch.setattr(fm, "BLOCK", block)
        m = fm.compute_map(small, "pca")
        assert m.x.dtype == np.float32 and m.x.shape == (n,)
        for got, ref in ((m.x, want[:, 0]), (m.y, want[:, 1])):
            sign = 1.0 if np.dot(got, ref) >= 0 else -1.0
            np.testing.assert_allclose(got, sign * ref, rtol=0, atol=tol)


def test_umap_is_deterministic_and_memoised(small, tmp_path, monkeypatch):
    memo = Memo(tmp_path / "memo")
    a = fm.feature_map(small, "umap", memo, seed=3)
    assert a.method == "umap" and a.params["seed"] == 3 and a.params["n_neighbors"] == 15
    assert a.x.shape == (500,) and np.isfinite(a.x).all() and np.isfinite(a.y).all()
    assert a.x.std() > 0 and a.y.std() > 0

    def boom(*args, **kwargs):
        raise AssertionError("UMAP ran again instead of the memo")

    monkeypatch.setattr(fm, "umap_coordinates", boom)
    b = fm.feature_map(small, "umap", memo, seed=3)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and b.params == a.params
    monkeypatch.undo()
    # same seed, no memo: the same coordinates
    c = fm.compute_map(small, "umap", seed=3)
    assert np.array_equal(a.x, c.x) and np.array_equal(a.y, c.y)


def test_memo_key_follows_dictionary_method_and_params(small, tmp_path):
    memo = Memo(tmp_path / "memo")
    fm.feature_map(small, "pca", memo)
    key = fm.map_key(small.fingerprint(), "pca", {})
    assert key in memo
    other = _dictionary(500, seed=1)
    assert fm.map_key(other.fingerprint(), "pca", {}) != key
    assert fm.map_key(small.fingerprint(), "umap", dict(fm.UMAP_DEFAULTS)) != key
    umap5 = fm.map_key(small.fingerprint(), "umap", {**fm.UMAP_DEFAULTS, "seed": 5})
    assert umap5 != fm.map_key(small.fingerprint(), "umap", dict(fm.UMAP_DEFAULTS))
    # a damaged entry is recomputed, not served
    memo.put_bytes(key, b"not safetensors")
    again = fm.feature_map(small, "pca", memo)
    assert again.n_features == 500


def test_bytes_round_trip_is_safetensors():
    m = fm.FeatureMap(
        np.arange(5, dtype=np.float32),
        -np.arange(5, dtype=np.float32),
        "umap",
        {"n_neighbors": 4, "min_dist": 0.1, "seed": 0},
    )
    payload = m.to_bytes()
    assert set(st_load(payload)) == {"x", "y"}
    back = fm.FeatureMap.from_bytes(payload)
    assert np.array_equal(back.x, m.x) and np.array_equal(back.y, m.y)
    assert back.method == "umap" and back.params == m.params


@pytest.mark.parametrize(
    ("method", "params", "needle"),
    [
        ("tsne", {}, "unknown map method"),
        ("pca", {"seed": 1}, "takes no parameters"),
        ("umap", {"neighbours": 5}, "unknown UMAP parameter"),
        ("umap", {"n_neighbors": 1}, "at least 2"),
    ],
)
def test_bad_requests_are_named(small, method, params, needle):
    with pytest.raises(fm.FeatureMapError, match=needle):
        fm.compute_map(small, method, **params)


def test_draw_indices_and_table():
    got = fm.draw_indices(131_072, 20_000, keep=[131_071, 5])
    assert len(got) <= 20_002 and 131_071 in got and 5 in got and got == sorted(set(got))
    assert fm.draw_indices(10, 20_000) == list(range(10))
    m = fm.FeatureMap(np.arange(4, dtype=np.float32), np.ones(4, np.float32), "pca", {})
    summary = {
        "feature": [3, 1],
        "density": [0.5, 0.1],
        "max_act": [2.0, 1.0],
        "top_tokens": [["a", "b"], []],
        "fires_on": [["x"], ["y", "z"]],
    }
    t = fm.map_table(m, [1, 2, 3], summary, labels={3: "cats"})
    assert t["feature"] == [1, 2, 3] and t["x"] == [1.0, 2.0, 3.0]
    assert t["density"] == [0.1, None, 0.5] and t["max_act"] == [1.0, None, 2.0]
    assert t["top_tokens"] == ["", "", "a, b"] and t["label"] == ["", "", "cats"]
    assert t["fires_on"] == ["y, z", "", "x"]
    assert set(fm.map_table(m, [0], None)) == {"feature", "x", "y"}

"""Numeric tolerances derived from the magnitudes involved, never from one CPU's output.

A float32 sum (or dot product) of ``n`` terms computed in *any* order differs from the exact
sum by at most ``gamma(n) * sum(|terms|)``, with ``gamma(n) = n u / (1 - n u)`` and ``u`` the
unit roundoff (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., sec. 3.1).
Two float32 computations of the same quantity (BLAS blocking differs between CPUs and thread
counts) therefore differ by at most twice that. The helpers here turn that bound into the
tolerances the tests use, so a test fails on a real error (orders of magnitude larger) and
never on the summation order a machine happens to choose.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

U32 = float(torch.finfo(torch.float32).eps) / 2  # unit roundoff of float32
U16B = float(torch.finfo(torch.bfloat16).eps) / 2


def gamma(n_terms: int, u: float = U32) -> float:
    """Higham's gamma_n: relative error bound of an n-term float sum in any order."""
    nu = n_terms * u
    assert nu < 0.5, "too many terms for a first-order bound"
    return nu / (1 - nu)


def sum_tolerance(abs_sum, n_terms: int, computations: int = 2, u: float = U32):
    """Bound on the difference between ``computations`` float sums of the same terms.

    ``abs_sum`` is the sum of the terms' absolute values (a number or an array).
    """
    return computations * gamma(n_terms, u) * np.asarray(abs_sum, dtype=np.float64)


def assert_sums_close(got, want, abs_sum, n_terms: int, computations: int = 2) -> None:
    """``got`` and ``want`` are float sums of the same terms; compare within the bound."""
    got = _np(got)
    want = _np(want)
    tol = sum_tolerance(_np(abs_sum), n_terms, computations)
    err = np.abs(got - want)
    bad = err > tol
    worst = int(np.argmax(err - tol))
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.size} sums differ by more than the rounding bound: "
        f"error {float(err.flat[worst]):.3g} > bound {float(np.broadcast_to(tol, err.shape).flat[worst]):.3g}"
    )


def encode_tolerance(sae, x: torch.Tensor) -> np.ndarray:
    """Per-feature bound on how much two float32 encodes of ``x`` by ``sae`` may differ.

    A feature's pre-activation is ``(x - b_dec) @ W_enc[:, f] + b_enc[f]`` (``b_mag`` for gated
    SAEs): ``d_in`` products and two additions, each rounded. The activation function (ReLU,
    JumpReLU, TopK selection) is 1-Lipschitz away from its switching point, so the bound of the
    pre-activation sum over the feature's largest ``sum(|terms|)`` bounds the activation too.
    """
    with torch.no_grad():
        # |x| + |b_dec| bounds the input terms whether or not the input is centred on b_dec
        xc = x.reshape(-1, x.shape[-1]).double().abs() + sae.b_dec.double().abs()
        w = sae.W_enc.double().abs()
        bias = torch.zeros(w.shape[1], dtype=torch.float64)
        for name in ("b_enc", "b_mag", "b_gate"):
            b = getattr(sae, name, None)
            if b is not None:
                bias = torch.maximum(bias, b.double().abs())
        scale = (xc @ w + bias).amax(0)  # the terms of the feature's largest token
    return sum_tolerance(scale.numpy(), int(x.shape[-1]) + 2)


def switch_margin(
    pre: torch.Tensor, threshold: torch.Tensor | None = None, k: int | None = None
) -> torch.Tensor:
    """How far each pre-activation ``[tokens, features]`` is from switching its feature on or
    off: from 0 (ReLU), from ``threshold`` (JumpReLU), and for the features ranked k-th or
    (k+1)-th, the gap between those two (TopK)."""
    margin = pre.abs()
    if threshold is not None:
        margin = torch.minimum(margin, (pre - threshold.double()).abs())
    if k is not None:
        top = pre.topk(k + 1, dim=-1).values
        gap = top[:, -2:-1] - top[:, -1:]  # k-th vs (k+1)-th
        at_edge = (pre >= top[:, -1:]) & (pre <= top[:, -2:-1])
        margin = torch.where(at_edge, torch.minimum(margin, gap), margin)
    return margin


def firing_margin(sae, x: torch.Tensor) -> np.ndarray:
    """How far each (token, feature) is from switching on or off, from float64 pre-activations.

    A feature whose margin is within the encode tolerance may fire in one float32 computation
    and not in another; counts and bin memberships may differ by the number of such entries.
    Shape ``[*x.shape[:-1], d_sae]``.
    """
    import sae_lens as sl

    lead = x.shape[:-1]
    with torch.no_grad():
        xc = x.reshape(-1, x.shape[-1]).double() - sae.b_dec.double()
        w = sae.W_enc.double()
        if isinstance(sae, sl.GatedSAE):
            margin = switch_margin(xc @ w + sae.b_gate.double())
        else:
            margin = switch_margin(
                xc @ w + sae.b_enc.double(),
                sae.threshold if isinstance(sae, sl.JumpReLUSAE) else None,
                sae.cfg.k if isinstance(sae, sl.TopKSAE) else None,
            )
    return margin.reshape(*lead, -1).numpy()


def pearson_tolerance(a: np.ndarray, b: np.ndarray, computations: int = 2) -> float:
    """Bound on the rounding error of a float32 Pearson correlation of ``a`` and ``b``.

    Pearson is computed from running sums (of a, b, a*a, b*b, a*b over n tokens); each sum
    carries ``gamma(n) * sum(|terms|)`` of error. Propagated to first order through
    ``cov / (std_a std_b)``, each relative error of a moment counts at most once per use.
    """
    n = len(a)
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0:
        return np.inf
    g = gamma(n) * computations
    cov_err = g * (np.abs(a * b).mean() + np.abs(a).mean() * np.abs(b).mean() * 2)
    var_a_err = g * ((a * a).mean() + 2 * np.abs(a).mean() ** 2)
    var_b_err = g * ((b * b).mean() + 2 * np.abs(b).mean() ** 2)
    r = abs(np.corrcoef(a, b)[0, 1])
    return float(cov_err / (sa * sb) + r * (var_a_err / sa**2 + var_b_err / sb**2) / 2)


def low_precision_pearson_tolerance(
    a: np.ndarray, b: np.ndarray, precision: str, max_a: float, max_b: float
) -> float:
    """Bound on the error of a Pearson correlation whose co-activation sum ``sum(a * b)`` was
    accumulated from rounded inputs (the sums of ``a``, ``b`` and their squares stay float32).

    ``int8``: each non-zero value is rounded to a multiple of ``max / 127`` (error at most half
    a step; zeros stay exact). ``bfloat16``: each value is rounded to 8 significant bits.
    ``|ab - a'b'| <= |a| e_b + (|b| + e_b) e_a``, summed over the tokens, divided by
    ``n std_a std_b``, plus the float32 bound of :func:`pearson_tolerance`.
    """
    a = np.abs(a.astype(np.float64))
    b = np.abs(b.astype(np.float64))
    if precision == "int8":
        e_a = np.where(a > 0, max_a / 127 / 2, 0.0)
        e_b = np.where(b > 0, max_b / 127 / 2, 0.0)
    elif precision == "bfloat16":
        e_a, e_b = a * U16B, b * U16B
    else:
        raise ValueError(precision)
    d_cross = (a * e_b + (b + e_b) * e_a).sum()
    return float(d_cross / (len(a) * a.std() * b.std())) + pearson_tolerance(a, b)


def assert_top_k(
    got_indices: Sequence[int],
    got_values: Sequence[float],
    ref: np.ndarray,
    k: int,
    tol: np.ndarray | float,
    largest: bool = True,
) -> None:
    """``got`` is a top-``k`` of ``ref`` up to rounding.

    Each value is within ``tol`` of the reference at its index; the values are ordered; and
    any index left out has a reference value no better than the last one kept, by more than
    the tolerance. Only entries whose values are within rounding of each other may swap.
    """
    ref = np.asarray(ref, dtype=np.float64)
    tol_arr = np.broadcast_to(np.asarray(tol, dtype=np.float64), ref.shape)
    sign = 1.0 if largest else -1.0
    idx = list(got_indices)
    vals = np.asarray(got_values, dtype=np.float64)
    finite = int(np.isfinite(ref).sum())
    assert len(idx) == len(set(idx)) == min(k, finite), (idx, k)
    np.testing.assert_array_less(np.abs(vals - ref[idx]), tol_arr[idx] + 1e-300)
    steps = sign * np.diff(vals)
    assert (steps <= 2 * np.maximum(tol_arr[idx][:-1], tol_arr[idx][1:])).all(), vals
    if len(idx) < finite:
        last = sign * ref[idx[-1]]
        rest = np.setdiff1d(np.arange(len(ref)), idx)
        rest = rest[np.isfinite(ref[rest])]
        worst = rest[np.argmax(sign * ref[rest])]
        assert sign * ref[worst] <= last + tol_arr[worst] + tol_arr[idx[-1]], (
            f"index {worst} ({ref[worst]:.6g}) should rank above {idx[-1]} ({ref[idx[-1]]:.6g})"
        )


def _np(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().double().numpy()
    return np.asarray(v, dtype=np.float64)

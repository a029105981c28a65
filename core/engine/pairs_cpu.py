"""The sums of pairs of the co-activation Gram on the CPU, as compiled loops.

:func:`~core.engine.gram.add_pair_sums` (a batch's pairs into the sums) and the sparse
store's join (:meth:`~core.engine.gram_budget.SparseStoreGram.top_correlated`: the stored
pairs of a block of rows) make every (entry, partner) pair of non-zeros that share a token
and add their products into ``[rows x columns]`` sums. With torch's operators that takes
index arrays the size of the pairs (hundreds of millions a run), built, gathered and
scattered chunk by chunk; a compiled loop walks the pairs once with none of them. These
are those loops (numba, a dependency of umap-learn already): the same additions in the
same order, so the same floats bit for bit, on float32 CPU tensors. Other devices and
dtypes keep the torch path.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor


@functools.cache
def _kernels() -> dict[str, Any]:
    """The compiled loops (compiled once per process; numba caches the machine code
    next to this module when it can write there)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def join(flat, base, v, start, end, cols, vals):
        for e in range(base.shape[0]):
            b = base[e]
            ve = v[e]
            for p in range(start[e], end[e]):
                flat[b + cols[p]] += ve * vals[p]

    @numba.njit(cache=True, nogil=True)
    def pair_sums(flat, n_cols, block, f_row, f_val, start, end, t_col, t_val):
        scratch = np.zeros(block * n_cols, dtype=np.float32)  # a block's sums of this batch
        seen = np.zeros(block * n_cols, dtype=np.bool_)
        touched = np.empty(block * n_cols, dtype=np.int64)  # the cells of a block, listed
        # entries are sorted by row, then token: a cell's products arrive in token order
        n = f_row.shape[0]
        e = 0
        while e < n:
            r0 = (f_row[e] // block) * block
            n_touched = 0
            while e < n and f_row[e] < r0 + block:
                base = (f_row[e] - r0) * n_cols
                v = f_val[e]
                for p in range(start[e], end[e]):
                    k = base + t_col[p]
                    if not seen[k]:
                        seen[k] = True
                        touched[n_touched] = k
                        n_touched += 1
                    scratch[k] += v * t_val[p]
                e += 1
            off = r0 * n_cols
            for i in range(n_touched):  # each cell's sum, from zero, added to the total once
                k = touched[i]
                flat[off + k] += scratch[k]
                scratch[k] = 0.0
                seen[k] = False

    return {"pair_sums": pair_sums, "join": join}


def supported(sums: Tensor, *values: Tensor) -> bool:
    """Whether these loops take these sums and the non-zero ``values`` added into them
    (all float32 on the CPU, the sums contiguous)."""
    return sums.is_contiguous() and all(
        t.device.type == "cpu" and t.dtype == torch.float32 for t in (sums, *values)
    )


def add_pair_sums_cpu(
    cross: Float[Tensor, "r c"],
    f_row: Int[Tensor, " e"],
    f_val: Float[Tensor, " e"],
    start: Int[Tensor, " e"],
    end: Int[Tensor, " e"],
    t_col: Int[Tensor, " m"],
    t_val: Float[Tensor, " m"],
    block: int,
) -> None:
    """``cross[f_row[e], t_col[p]] += f_val[e] * t_val[p]`` for every entry ``e`` and each
    of its partners ``p`` in ``start[e]:end[e]``, as :func:`~core.engine.gram.add_pair_sums`
    adds them: ``block`` rows at a time, each cell's products summed from zero in entry order
    (entries sorted by row), then added to ``cross`` once."""
    n_rows, n_cols = cross.shape
    block = max(1, min(block, n_rows))
    _run("pair_sums", cross.view(-1), n_cols, block, f_row, f_val, start, end, t_col, t_val)


def join_cpu(
    flat: Float[Tensor, " n"],
    base: Int[Tensor, " e"],
    v: Float[Tensor, " e"],
    start: Int[Tensor, " e"],
    end: Int[Tensor, " e"],
    cols: Int[Tensor, " m"],
    vals: Float[Tensor, " m"],
) -> None:
    """``flat[base[e] + cols[p]] += v[e] * vals[p]`` for every entry ``e`` in order and each
    of its partners ``p`` in ``start[e]:end[e]`` in order: ``index_add_`` of those pairs."""
    _run("join", flat, base, v, start, end, cols, vals)


def _run(name: str, *args: Tensor | int) -> None:
    """Loop ``name`` on ``args``, tensors as numpy views of their memory (the sums are
    contiguous, :func:`supported`, so the loop writes into them)."""
    _kernels()[name](*(a.contiguous().numpy() if isinstance(a, Tensor) else a for a in args))


__all__ = ["add_pair_sums_cpu", "join_cpu", "supported"]

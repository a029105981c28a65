"""Top examples that tie exactly in value are ordered by sequence, then position, whatever the
batch size, batch order or sharding (the same inputs give the same page)."""

from __future__ import annotations

import pytest
import torch

from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine.stats import TopExamples, window_offsets
from core.engine.sweep import run_sweep
from core.models import ModelAdapter
from tests.tiny import HOOK, make_model, make_sae, random_tokens


def reference(acts: torch.Tensor, k: int) -> list[list[tuple[float, int, int]]]:
    """Per feature: (value, sequence, position) of the top ``k`` sequences, one per sequence
    (its first maximal position), ordered by value descending, then sequence ascending."""
    n_seq, _, n_feat = acts.shape
    out = []
    for f in range(n_feat):
        rows = []
        for s in range(n_seq):
            col = acts[s, :, f]
            v = float(col.max())
            if v > 0:
                rows.append((v, s, int((col == v).nonzero()[0])))
        out.append(sorted(rows, key=lambda r: (-r[0], r[1]))[:k])
    return out


def entries(top: TopExamples) -> list[list[tuple[float, int, int]]]:
    return [
        [
            (float(v), int(s), int(p))
            for v, s, p in zip(top.values[f], top.seq[f], top.pos[f], strict=True)
            if s >= 0
        ]
        for f in range(top.values.shape[0])
    ]


def swept(acts: torch.Tensor, k: int, bounds: list[int]) -> TopExamples:
    offsets, _ = window_offsets(1, 1, None, "cpu")
    top = TopExamples(acts.shape[2], k, offsets, False, "cpu")
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        top.update(acts[lo:hi], torch.arange(lo, hi), slice(0, acts.shape[2]))
    return top


def test_ties_are_ordered_by_sequence_then_position_for_any_batching():
    g = torch.Generator().manual_seed(0)
    n_seq, length, n_feat, k = 23, 6, 5, 7
    # values from {0, 1, 2, 3}: most sequences tie with many others
    acts = torch.randint(0, 4, (n_seq, length, n_feat), generator=g).float()
    acts[:, :, 4] = 0
    acts[[3, 9, 17], 2, 4] = 1.0  # one feature with fewer sequences than k
    want = reference(acts, k)
    assert any(len({v for v, _, _ in rows}) < len(rows) for rows in want), "no ties to test"
    results = []
    for size in (1, 2, 3, 4, 5, 7, 11, 23):
        bounds = [*range(0, n_seq, size), n_seq]
        top = swept(acts, k, bounds)
        assert entries(top) == want, f"batch size {size}"
        results.append(top)
    for top in results[1:]:
        assert torch.equal(top.windows, results[0].windows)
    # shards merged in either order give the same as one pass
    for split in (1, 8, 12):
        a = swept(acts[:split], k, [0, split])
        b = swept(acts, k, [split, n_seq])
        assert entries(a.merge(b)) == want
        a = swept(acts[:split], k, [0, split])
        b = swept(acts, k, [split, n_seq])
        assert entries(b.merge(a)) == want


class Quantised(SAELensDictionary):
    """An SAE whose activations are rounded to halves, so exact ties are common."""

    def encode(self, x, features=None):
        return (super().encode(x, features) * 2).round() / 2


@pytest.fixture(scope="module")
def tied():
    model = ModelAdapter(make_model(), bos_token_id=0)
    tokens = random_tokens(30, 12, seed=3)
    sample = model.run_to_hooks(tokens, [HOOK])[HOOK].reshape(-1, 32)
    d = Quantised(make_sae("standard", 32, 12, HOOK, sample=sample, density=0.3))
    return model, d, tokens


def test_sweep_pages_do_not_depend_on_the_batch_size(tied):
    model, d, tokens = tied
    pages = {}
    for size in (1, 4, 7, 30):
        cfg = RunConfig(batch_size=size, n_top_examples=8, feature_correlation="none")
        got = run_sweep(model, d, tokens, cfg).features
        pages[size] = {f: [(e.seq, e.pos) for e in got[f].top_examples] for f in range(12)}
        for f in range(12):
            ex = got[f].top_examples
            keys = [(-e.value, e.seq) for e in ex]
            assert keys == sorted(keys), f"feature {f}, batch size {size}: ties out of order"
        ties = sum(
            len({e.value for e in got[f].top_examples}) < len(got[f].top_examples)
            for f in range(12)
        )
        assert ties >= 3, "the quantised SAE should tie often"
    assert all(pages[size] == pages[1] for size in pages), "the pages differ by batch size"

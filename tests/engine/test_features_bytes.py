"""Feature data bytes: the packed writer gives exactly the bytes of the plain one it replaced.

The reference below is the straightforward implementation the memo format was defined by
(``dataclasses.asdict``, numeric lists of 8 or more moved into arrays, one JSON dump,
``safetensors.numpy.save``). Every stored entry was written by it, so the bytes of
:meth:`FeatureData.to_bytes` must stay equal to it for any feature data: features of real
sweeps of tiny models (dead feature, whole sequences, transcoder, cross-layer transcoder
extras) and hand-made values exercising every rule of the layout.
"""

from __future__ import annotations

import dataclasses
import json
from collections import namedtuple
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save as st_save

from core.config import RunConfig
from core.dictionaries.clt import CLTDictionary
from core.dictionaries.saelens import SAELensDictionary
from core.engine.features import (
    SCHEMA_VERSION,
    Example,
    FeatureData,
    Histogram,
    IntervalGroup,
    LogitTable,
    Table,
    features_to_bytes,
)
from core.engine.result import FeatureSet
from core.engine.sweep import run_sweep
from core.models import ModelAdapter
from tests.tiny import HOOK, make_model, make_sae, random_tokens, transcoder_at


# ---- the reference ------------------------------------------------------------------------------
def _reference_extract(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        return {k: _reference_extract(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        if len(obj) >= 8 and all(type(v) is int for v in obj):
            name = f"a{len(arrays)}"
            arrays[name] = np.asarray(obj, dtype=np.int64)
            return {"__array__": name}
        if len(obj) >= 8 and all(type(v) in (int, float) for v in obj):
            name = f"a{len(arrays)}"
            arrays[name] = np.asarray(obj, dtype=np.float64)
            return {"__array__": name, "float": True}
        return [_reference_extract(v, arrays) for v in obj]
    return obj


def reference_bytes(fd: FeatureData) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    skeleton = _reference_extract(dataclasses.asdict(fd), arrays)
    skeleton["__schema__"] = SCHEMA_VERSION
    return st_save(arrays, metadata={"feature": json.dumps(skeleton, ensure_ascii=False)})


def assert_same_bytes(features: list[FeatureData]) -> None:
    assert features
    for fd in features:
        want = reference_bytes(fd)
        assert fd.to_bytes() == want, fd.index
        assert FeatureData.from_bytes(want) == fd  # what is stored reads back the same
    assert features_to_bytes(features) == [reference_bytes(fd) for fd in features]


# ---- real sweeps --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return make_model(n_layers=2)


@pytest.fixture(scope="module")
def tokens():
    return random_tokens(12, 14, seed=3)


def sweep(model, dictionary, tokens, **config) -> FeatureSet:
    n = dictionary.n_features
    cfg = RunConfig(features=list(range(n)), batch_size=4, n_top_examples=6, **config)
    return run_sweep(ModelAdapter(model, bos_token_id=0), dictionary, tokens, cfg).features


@pytest.mark.parametrize("whole_sequence", [False, True])
def test_sae_features_with_a_dead_one(model, tokens, whole_sequence):
    sae = make_sae("standard", 32, 12, HOOK, density=0.2)
    with torch.no_grad():
        sae.b_enc[5] = -1e4  # never fires
    fs = sweep(model, SAELensDictionary(sae), tokens, whole_sequence=whole_sequence)
    assert fs[5].n_active == 0 and fs[5].top_examples == []
    assert any(fd.n_active > 0 for fd in fs.values())
    if whole_sequence:
        assert all(len(e.acts) == tokens.shape[1] for e in fs[0].top_examples)
    assert_same_bytes(list(fs.values()))


def test_transcoder_features(model, tokens):
    tc = transcoder_at(model, tokens, HOOK, "blocks.1.hook_mlp_out", d_sae=10)
    fs = sweep(model, SAELensDictionary(tc), tokens)
    assert_same_bytes(list(fs.values()))


@pytest.mark.parametrize("layer", [0, 8])  # 10 and 2 target layers: long and short extras
def test_cross_layer_transcoder_extras(model, tokens, layer):
    # tests/tiny.py has no CLT builder: the adapter is made from random tensors directly
    g = torch.Generator().manual_seed(layer)
    n_feat, d, n_layers = 9, 32, 10
    clt = CLTDictionary(
        layer=layer,
        num_layers=n_layers,
        W_enc=torch.randn(n_feat, d, generator=g),
        b_enc=torch.randn(n_feat, generator=g),
        W_dec=torch.randn(n_feat, d, generator=g) / d**0.5,
        decoder_norms=torch.rand(n_feat, n_layers - layer, generator=g) + 0.5,
        activation_fn="relu",
        hook_in=HOOK,
        hook_out="blocks.1.hook_mlp_out",
    )
    fs = sweep(model, clt, tokens)
    assert len(fs[0].extras["decoder_layers"]) == n_layers - layer
    assert_same_bytes(list(fs.values()))


# ---- every rule of the layout -------------------------------------------------------------------
@dataclasses.dataclass
class Note:
    text: str
    scores: list[int]


Pair = namedtuple("Pair", "a b")


def handmade(extras: dict[str, Any], effects: dict[str, Any] | None = None) -> FeatureData:
    long_ints = list(range(-3, 7))
    ex = Example(
        seq=1,
        pos=4,
        value=0.5,
        start=2,
        token_ids=long_ints,
        tokens=["é", 'q"uote', "back\\slash", "new\nline", "\x00\x1f\x7f", "\u2028", "", "z"],
        acts=[0.0, 1, 2.5, -0.0, 1e-310, 3, 4, 5.25],  # ints mixed in: a float array
        effects=dict(effects or {}),
    )
    return FeatureData(
        index=7,
        n_tokens=100,
        n_active=3,
        density=0.03,
        max_act=2.5,
        mean_act=float("nan"),
        act_hist=Histogram(edges=[0.0, 1.0], counts=[3]),  # short: stays JSON
        logit_hist=Histogram(edges=[], counts=[]),
        top_logits=LogitTable(token_ids=long_ints[:8], tokens=["a"] * 8, values=[1.0] * 8),
        bottom_logits=LogitTable([], [], []),
        neuron_alignment=Table(indices=[1, 2, 3], columns={"value": [0.1, 0.2, 0.3]}),
        correlated_neurons=Table(indices=[], columns={"zeta": [], "alpha": []}),
        correlated_features=Table(indices=list(range(9)), columns={"p": [float("inf")] * 9}),
        top_examples=[ex, dataclasses.replace(ex, seq=2)],
        intervals=[IntervalGroup(lo=0.0, hi=1.0, n_active=0, share=0.0, examples=[ex])],
        decoder_norm=1.5,
        extras=extras,
    )


LAYOUT_CASES = {
    "empty": {},
    "bools stay lists": {"flags": [True, False] * 5, "bool_int": [True, 1, 2, 3, 4, 5, 6, 7]},
    "int and float lists": {"ints": list(range(20)), "mixed": [1, 2.0] * 4, "short": [1, 2]},
    "nested lists": {"rows": [list(range(8)), [0.5] * 8, [1, 2], ["x"] * 9, [None] * 8]},
    "lists of lists of lists": {"deep": [[list(range(10))], [[0.25] * 8, []]]},
    "tuples are not searched": {"t": tuple(range(12)), "nt": Pair(list(range(9)), 2)},
    "dataclasses in extras": {"note": Note("n", list(range(10))), "notes": [Note("m", [1])]},
    "dataclass in a tuple": {"t": (Note("k", list(range(8))), [1.5] * 8)},
    "dict order kept": {"z": 1, "a": {"y": [2.0] * 8, "b": None}, "m": "text"},
    "float subclass": {"np": [np.float64(0.5)] * 8, "mixed": [np.float64(1.5), 1.0] * 4},
    "many arrays": {f"k{i}": list(range(i, i + 8)) for i in range(30)},
}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_layout_rules(case):
    fd = handmade(LAYOUT_CASES[case], effects={"loss": [0.125] * 11, "ids": list(range(8))})
    assert fd.to_bytes() == reference_bytes(fd)
    assert features_to_bytes([fd, fd]) == [reference_bytes(fd)] * 2


def test_no_arrays_at_all():
    fd = handmade({})
    fd = dataclasses.replace(
        fd,
        top_examples=[],
        intervals=[],
        top_logits=LogitTable([], [], []),
        correlated_features=Table([], {}),
    )
    assert fd.to_bytes() == reference_bytes(fd)
    assert FeatureData.from_bytes(fd.to_bytes()).to_bytes() == fd.to_bytes()  # NaN mean


def test_header_padding_at_every_length():
    """The header is padded to a multiple of 8 bytes: every remainder is met."""
    seen = set()
    for n in range(16):
        fd = handmade({"pad": "x" * n, "ints": list(range(8 + n % 3))})
        data = fd.to_bytes()
        assert data == reference_bytes(fd)
        header = data[8 : 8 + int.from_bytes(data[:8], "little")]
        assert len(header) % 8 == 0
        seen.add(len(header.rstrip(b" ")) % 8)  # the unpadded length
    assert len(seen) == 8


def test_values_that_cannot_be_stored_still_fail():
    with pytest.raises(OverflowError):
        handmade({"big": [2**70] * 8}).to_bytes()
    with pytest.raises(TypeError):
        handmade({"obj": object()}).to_bytes()
    with pytest.raises(TypeError):
        handmade({"np_int": [np.int64(1)] * 8}).to_bytes()


# ---- building many features at once --------------------------------------------------------------
def test_batches_build_what_single_features_build(model, tokens):
    sae = make_sae("standard", 32, 11, HOOK, density=0.2)
    fs = sweep(model, SAELensDictionary(sae), tokens)
    single = {f: fs[f] for f in fs}  # one row at a time
    for size in (1, 4, 64):
        again = FeatureSet(
            fs.order, fs.cols, torch.tensor(fs.tokens), fs.vocab, fs.window, fs.extras
        )
        got = [pair for batch in again.batches(size) for pair in batch]
        assert [f for f, _ in got] == fs.order
        assert all(len(b) <= size for b in again.batches(size))
        for f, data in got:
            assert data == single[f]
            assert data.to_bytes() == single[f].to_bytes()
            assert again[f] is data  # kept, like features built one by one


def test_batches_reuse_features_already_built(model, tokens):
    sae = make_sae("standard", 32, 6, HOOK, density=0.2)
    fs = sweep(model, SAELensDictionary(sae), tokens)
    first = fs[fs.order[2]]
    got = dict(pair for batch in fs.batches(4) for pair in batch)
    assert got[fs.order[2]] is first


def test_token_strings_outside_the_vocabulary(model, tokens):
    sae = make_sae("standard", 32, 5, HOOK, density=0.3)
    fs = sweep(model, SAELensDictionary(sae), tokens)
    short_vocab = fs.vocab[:20]  # ids from 20 on have no string: shown as <id>
    again = FeatureSet(fs.order, fs.cols, torch.tensor(fs.tokens), short_vocab, fs.window)
    for _, data in next(again.batches(8)):
        for e in data.top_examples:
            want = [short_vocab[i] if i < 20 else f"<{i}>" for i in e.token_ids]
            assert e.tokens == want

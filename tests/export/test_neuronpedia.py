"""Neuronpedia batch files: field mapping, schema validation, rounding, bad input."""

from __future__ import annotations

import copy
import json
import math

import jsonschema
import numpy as np
import pytest

from core.export import ExportError
from core.export.neuronpedia import (
    DECIMALS,
    QUALIFYING_INDEX_OFFSET,
    NeuronpediaMeta,
    _rl,
    batch_to_neuronpedia,
    dumps,
    head_distribution,
    load_schema,
    round_values,
    skipped_indexes,
    validate_batch,
    write_batch,
)
from tests.export.tiny_setup import tiny_features

META = NeuronpediaMeta(
    model_id="tiny-gpt2",
    layer=1,
    sae_set="tiny-res",
    sae_id_suffix=None,
    dataset="local/text.txt",
    n_prompts_total=48,
    n_tokens_in_prompt=16,
)


@pytest.fixture(scope="module")
def data():
    fds, (model, dictionary, _) = tiny_features([0, 1, 2, 3])
    import torch

    rows = dictionary.decoder_directions(torch.arange(4)).tolist()
    vectors = dict(enumerate(rows))
    return fds, vectors


def _decimals(x: float) -> int:
    text = repr(x)
    return len(text.split(".")[1]) if "." in text and "e" not in text else 0


def test_batch_matches_schema_and_feature_data(data, tmp_path):
    fds, vectors = data
    batch = batch_to_neuronpedia(fds, META, vectors)
    path = write_batch(tmp_path / "batch-0.json", batch)
    loaded = json.loads(path.read_text())
    jsonschema.validate(loaded, load_schema())  # the full, independent check
    assert list(loaded) == ["model_id", "layer", "sae_set", "sae_id_suffix", "features"]
    assert (loaded["model_id"], loaded["layer"], loaded["sae_set"]) == ("tiny-gpt2", 1, "tiny-res")
    assert loaded["sae_id_suffix"] is None
    for fd, out in zip(fds, loaded["features"], strict=True):
        assert out["feature_index"] == fd.index
        assert out["neuron_alignment_indices"] == fd.neuron_alignment.indices
        assert out["neuron_alignment_l1"] == pytest.approx(
            fd.neuron_alignment.columns["l1_share"], abs=1e-5
        )
        # the reference puts cosine similarities in the *_l1 fields
        assert out["correlated_neurons_l1"] == pytest.approx(
            fd.correlated_neurons.columns["cosine"], abs=1e-5
        )
        assert out["correlated_features_pearson"] == pytest.approx(
            fd.correlated_features.columns["pearson"], abs=1e-5
        )
        assert out["correlated_features_indices"] == fd.correlated_features.indices
        assert out["pos_str"] == fd.top_logits.tokens
        assert out["neg_values"] == pytest.approx(fd.bottom_logits.values, abs=1e-5)
        assert out["frac_nonzero"] == pytest.approx(fd.density, abs=1e-5)
        assert sum(out["freq_hist_data_bar_heights"]) == fd.n_active
        assert len(out["freq_hist_data_bar_values"]) == len(fd.act_hist.counts)
        centre = (fd.act_hist.edges[0] + fd.act_hist.edges[1]) / 2
        assert out["freq_hist_data_bar_values"][0] == pytest.approx(centre, abs=1e-5)
        assert len(out["logits_hist_data_bar_heights"]) == len(fd.logit_hist.counts)
        assert (out["n_prompts_total"], out["n_tokens_in_prompt"]) == (48, 16)
        assert out["dataset"] == "local/text.txt"
        assert out["vector"] == pytest.approx(vectors[fd.index], abs=1e-5)
        assert out["decoder_weights_dist"] == []
        acts = out["activations"]
        n_top = len(fd.top_examples)
        assert len(acts) == n_top + sum(len(g.examples) for g in fd.intervals)
        for a, ex in zip(acts[:n_top], fd.top_examples, strict=True):
            assert (a["bin_min"], a["bin_contains"]) == (-1, -1)
            assert a["bin_max"] == pytest.approx(fd.max_act, abs=1e-5)
            assert a["tokens"] == ex.tokens
            assert a["qualifying_token_index"] == ex.qualifying_index + QUALIFYING_INDEX_OFFSET
            assert max(a["values"]) == pytest.approx(ex.value, abs=1e-5)
        # interval blocks from the highest interval down
        rest = acts[n_top:]
        groups = [g for g in reversed(fd.intervals) for _ in g.examples]
        for a, g in zip(rest, groups, strict=True):
            assert a["bin_min"] == pytest.approx(g.lo, abs=1e-5)
            assert a["bin_max"] == pytest.approx(g.hi, abs=1e-5)
            assert a["bin_contains"] == pytest.approx(g.share, abs=1e-5)
        # every float has at most 5 decimals
        for key in ("neuron_alignment_values", "vector", "freq_hist_data_bar_values"):
            assert all(_decimals(v) <= 5 for v in out[key])
        assert all(_decimals(v) <= 5 for a in acts for v in a["values"])


def test_schema_rejects_what_neuronpedia_cannot_import(data):
    fds, _ = data
    good = batch_to_neuronpedia(fds[:1], META)
    validate_batch(good)
    for mutate, where in [
        (lambda b: b.pop("sae_set"), "top level"),
        (lambda b: b["features"][0].pop("frac_nonzero"), "features/0"),
        (lambda b: b["features"][0].update(feature_index=-2), "features/0/feature_index"),
        (
            lambda b: b["features"][0]["activations"][0].update(values=[], tokens=[]),
            "features/0/activations/0/tokens",
        ),
        (lambda b: b["features"][0].update(pos_values=["x"]), "features/0/pos_values/0"),
        (lambda b: b.update(layer="1"), "at layer"),
    ]:
        bad = copy.deepcopy(good)
        mutate(bad)
        with pytest.raises(ExportError, match="does not match the schema") as err:
            validate_batch(bad)
        assert where in str(err.value)
    bad = copy.deepcopy(good)
    bad["features"][0]["activations"][0]["tokens"].append("extra")
    with pytest.raises(ExportError, match="tokens but"):
        validate_batch(bad)


def test_non_finite_values_are_refused(data):
    fds, _ = data
    fd = type(fds[0]).from_dict(fds[0].to_dict())
    fd.top_logits.values[0] = math.nan
    with pytest.raises(ExportError, match="non-finite"):
        batch_to_neuronpedia([fd], META)


def test_head_distribution_and_skipped_file():
    dist = head_distribution([3.0, 4.0, 0.0, 0.0, 0.0, 5.0], n_heads=3)
    assert dist == pytest.approx([0.5, 0.0, 0.5])
    assert sum(dist) == pytest.approx(1.0)
    with pytest.raises(ExportError, match="does not split"):
        head_distribution([1.0, 2.0, 3.0], n_heads=2)
    meta = NeuronpediaMeta("m", 3, "set", log_sparsity=-6.0)
    out = skipped_indexes(meta, [9, 2])
    assert out == {
        "model_id": "m",
        "layer": "3",
        "sae_set": "set",
        "log_sparsity": -6.0,
        "skipped_indexes": [2, 9],
    }


def test_vectorised_rounding_is_pythons_round_bit_for_bit():
    """round_values gives exactly ``round(v, 5) + 0.0`` (half-to-even on the exact binary
    value, -0.0 turned to 0.0), including values whose 5th-decimal remainder is one half or
    within an ulp of it, huge and tiny values, and float32 arrays (the decoder rows)."""
    rng = np.random.default_rng(0)
    halves = (rng.integers(-(10**9), 10**9, 20_000) * 2 + 1) / (2 * 10**5)  # k + 1/2 at 1e-5
    exact_halves = np.array([0.015625, -0.015625, 0.5 / 2**10, 3 * 2**-6])  # binary halves
    values = np.concatenate(
        [
            rng.standard_normal(50_000),
            rng.standard_normal(20_000) * 1e-5,
            rng.standard_normal(5_000) * 1e12,
            halves,
            np.nextafter(halves, np.inf),
            np.nextafter(halves, -np.inf),
            exact_halves,
            rng.standard_normal(20_000).astype(np.float32).astype(np.float64),
            [0.0, -0.0, -1e-9, 5e-324, -5e-324, 1e300, -1e300, 2.0**52 / 1e5, 2.0**53 / 1e5],
        ]
    )
    got = round_values(values)
    want = np.array([round(v, DECIMALS) + 0.0 for v in values.tolist()])
    assert np.array_equal(got.view(np.int64), want.view(np.int64))
    assert _rl(values) == want.tolist()
    rows = values[np.abs(values) < 1e30].astype(np.float32)  # decoder rows come as float32
    assert _rl(rows) == [round(float(v), DECIMALS) + 0.0 for v in rows]


def test_batch_bytes_are_what_json_dumps_writes(data):
    """:func:`dumps` (orjson) writes a batch byte for byte as ``json.dumps`` does: values
    that Python writes with an exponent (``1e-05``, ``-9e-05``), values just above them,
    large and negative ones, and tokens with quotes, backslashes, control characters,
    non-ASCII text and emoji."""
    fds, vectors = data
    fd = type(fds[0]).from_dict(fds[0].to_dict())
    fd.top_logits.values[:6] = [1e-5, -9.4e-5, 1.04e-4, 123456789.123456, -3.5, 0.0]
    fd.top_logits.tokens[:4] = ['"q"\\', "\x00\x1f\x7f\n\t\u2028", "ß→中", "\U0001f600"]
    fd.top_examples[0].tokens[0] = "</script><b>"
    tiny = {i: [v * 1e-5 for v in range(-9, 10)] for i in vectors}
    for batch in (
        batch_to_neuronpedia(fds, META, vectors),
        batch_to_neuronpedia([fd, *fds[1:]], META, tiny, {0: head_distribution([1, 1e-5], 2)}),
    ):
        want = json.dumps(batch, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        assert dumps(batch) == want.encode("utf-8")
    assert b"1e-05" in dumps(batch) and b"0.00001" not in dumps(batch)

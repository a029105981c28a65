"""Cleaner activations: ``ignore_positions`` and ``max_norm_ratio`` against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import NORM_REFERENCE_SEQUENCES, ConfigError, RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine.sweep import EngineError, run_sweep
from core.models import ModelAdapter
from tests.tiny import BOS_ID, HOOK, make_model, make_sae, random_tokens

SPIKE = 7  # a token id whose embedding is scaled up: a high-norm "sink" wherever it stands


@pytest.fixture(scope="module")
def setup():
    model = make_model(n_layers=2)
    with torch.no_grad():
        model.W_E[SPIKE] *= 40.0
    tokens = random_tokens(70, 12, seed=3)
    tokens[tokens == SPIKE] = SPIKE + 1
    tokens[:, 4] = SPIKE  # every sequence has the sink at position 4, and nowhere else
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    x = cache[HOOK]
    sae = make_sae("standard", 32, 24, HOOK, sample=x.reshape(-1, 32), density=0.2)
    return ModelAdapter(model, bos_token_id=BOS_ID), SAELensDictionary(sae), tokens, x, sae


def reference_ignored(x: torch.Tensor, tokens: torch.Tensor, ratio: float) -> np.ndarray:
    """Tokens over ``ratio`` x the lower median norm of the first sequences' non-BOS tokens."""
    norms = np.linalg.norm(x.double().numpy(), axis=-1)
    valid = (tokens != BOS_ID).numpy()
    ref = np.sort(norms[:NORM_REFERENCE_SEQUENCES][valid[:NORM_REFERENCE_SEQUENCES]])
    median = ref[(len(ref) - 1) // 2]
    return (norms > ratio * median) & valid


def test_max_norm_ratio_ignores_exactly_the_reference_tokens(setup):
    model, d, tokens, x, sae = setup
    ratio = 3.0
    ignored = reference_ignored(x, tokens, ratio)
    assert ignored[:, 4].all() and not np.delete(ignored, 4, axis=1).any()  # the sinks, only
    fs = run_sweep(model, d, tokens, RunConfig(max_norm_ratio=ratio, batch_size=16)).features
    kept = (tokens != BOS_ID).numpy() & ~ignored
    with torch.no_grad():
        acts = sae.encode(x.reshape(-1, 32)).reshape(*tokens.shape, -1).double().numpy()
    acts = acts * kept[..., None]
    for f in range(24):
        fd = fs[f]
        assert fd.n_tokens == int(kept.sum())
        assert fd.n_active == int((acts[..., f] > 0).sum())
        assert fd.max_act == pytest.approx(acts[..., f].max(), rel=1e-4)
        assert all(e.pos != 4 for e in fd.top_examples)
    # the same sweep masked by hand (the sink position ignored) gives the same data, byte for byte
    by_hand = run_sweep(model, d, tokens, RunConfig(ignore_positions=[4], batch_size=16)).features
    for f in range(24):
        assert fs[f].to_dict() == by_hand[f].to_dict()


def test_ignore_positions_and_key(setup):
    model, d, tokens, x, _ = setup
    fs = run_sweep(
        model, d, tokens, RunConfig(features=[0, 1], ignore_positions=[0, 1, 99])
    ).features
    valid = (tokens != BOS_ID).numpy()
    valid[:, :2] = False
    assert fs[0].n_tokens == int(valid.sum())
    assert all(e.pos >= 2 for e in fs[0].top_examples + fs[1].top_examples)
    # new fields enter the memo key only when set, so earlier keys stay as they were
    plain = RunConfig().result_key_dict()
    assert "max_norm_ratio" not in plain and "ignore_positions" not in plain
    assert RunConfig(ignore_positions=[0]).result_key_dict() != plain
    assert (
        RunConfig(max_norm_ratio=10).result_key_dict()
        == RunConfig(max_norm_ratio=10.0).result_key_dict()
    )
    assert RunConfig(ignore_positions=0).ignore_positions == [0]


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_norm_ratio", 0),
        ("max_norm_ratio", float("nan")),
        ("max_norm_ratio", "10"),
        ("ignore_positions", [-1]),
        ("ignore_positions", ["0"]),
        ("ignore_positions", True),
    ],
)
def test_bad_values_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        RunConfig(**{field: value})


def test_no_reference_tokens_is_an_error(setup):
    model, d, tokens, _, _ = setup
    cfg = RunConfig(features=[0], max_norm_ratio=2.0, ignore_positions=list(range(12)))
    with pytest.raises(EngineError, match="ignore fewer positions"):
        run_sweep(model, d, tokens, cfg)

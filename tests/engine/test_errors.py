"""Bad input gets a clear error naming the problem, before heavy compute."""

from __future__ import annotations

import pytest
import torch

from core.config import ConfigError, RunConfig, parse_features
from core.dictionaries.protocol import DictionaryError
from core.dictionaries.saelens import SAELensDictionary
from core.engine.sweep import EngineError, run_sweep
from core.models import ModelAdapter
from tests.tiny import HOOK, make_model, make_sae


@pytest.fixture(scope="module")
def pair():
    model = make_model()
    sae = make_sae("standard", 32, 16, HOOK)
    return ModelAdapter(model, bos_token_id=0), SAELensDictionary(sae)


def test_feature_out_of_range(pair, tiny_tokens):
    with pytest.raises(EngineError, match=r"feature index 16 is out of range.*16 features.*0-15"):
        run_sweep(*pair, tiny_tokens, RunConfig(features=[3, 16]))
    with pytest.raises(EngineError, match="out of range"):
        run_sweep(*pair, tiny_tokens, RunConfig(features=[-1]))


def test_hook_not_in_model(pair, tiny_tokens):
    with pytest.raises(EngineError, match=r"hook 'blocks\.7\.hook_resid_pre' is not in model"):
        run_sweep(*pair, tiny_tokens, RunConfig(hook="blocks.7.hook_resid_pre"))


def test_width_mismatch(pair, tiny_tokens):
    model, _ = pair
    wrong = SAELensDictionary(make_sae("standard", 16, 8, HOOK))
    with pytest.raises(DictionaryError, match=r"reads 16-wide inputs but hook .* is 32 wide"):
        run_sweep(model, wrong, tiny_tokens, RunConfig())
    # an MLP hook is 128 wide: also refused
    with pytest.raises(DictionaryError, match="128 wide"):
        run_sweep(model, pair[1], tiny_tokens, RunConfig(hook="blocks.0.mlp.hook_post"))


def test_no_tokens(pair):
    with pytest.raises(EngineError, match="no tokens"):
        run_sweep(*pair, torch.zeros((0, 8), dtype=torch.long), RunConfig())
    with pytest.raises(EngineError, match="integer ids"):
        run_sweep(*pair, torch.zeros((2, 8)), RunConfig())


def test_nan_activations(tiny_tokens):
    model = make_model(seed=3)
    with torch.no_grad():
        model.W_E[5].fill_(float("nan"))
    ma = ModelAdapter(model, bos_token_id=0)
    d = SAELensDictionary(make_sae("standard", 32, 16, HOOK))
    with pytest.raises(EngineError, match="NaN or infinite activations"):
        run_sweep(ma, d, tiny_tokens, RunConfig())


def test_bad_config_values():
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        RunConfig(batch_size=0)
    with pytest.raises(ConfigError, match="dtype must be one of"):
        RunConfig(dtype="float64")
    with pytest.raises(ConfigError, match="unknown config field"):
        RunConfig.from_dict({"batchsize": 3})
    assert parse_features("0:4,9") == [0, 1, 2, 3, 9]
    assert parse_features("all") is None
    assert parse_features("5:", n_features=8) == [5, 6, 7]
    with pytest.raises(ConfigError, match="cannot read feature"):
        parse_features("a:b")


def test_sae_without_hook_name():
    sae = make_sae("standard", 32, 8, HOOK)
    sae.cfg.metadata.hook_name = None
    with pytest.raises(DictionaryError, match="hook_name is empty"):
        SAELensDictionary(sae)


def test_feature_specs_are_checked_before_they_are_expanded():
    """A huge range fails on its text, in constant memory, naming the range and the valid
    indices (it used to be listed first: 0:99999999 ran out of memory)."""
    import tracemalloc

    from core.config import MAX_FEATURES

    tracemalloc.start()
    try:
        for spec, named in [
            ("0:3000000", "feature range 0:3000000"),
            ("0:60000000", "feature range 0:60000000"),
            ("0:9999999999999", "feature range 0:9999999999999"),
            ("2,5,99999999", "feature index 99999999"),
            ("4090:4097", "feature range 4090:4097"),
            ("-3:5", "feature range -3:5"),
        ]:
            with pytest.raises(ConfigError, match=f"{named} is out of range") as err:
                parse_features(spec, n_features=4096)
            assert "4,096 features (valid indices 0-4095)" in str(err.value)
        with pytest.raises(ConfigError, match="out of range"):
            parse_features(range(0, 10**15, 7), n_features=4096)
        # without the dictionary size, a range larger than any dictionary is refused
        with pytest.raises(ConfigError, match="more than any dictionary"):
            parse_features("0:9999999999999")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak:,} bytes were allocated checking the specs"
    assert parse_features("4090:", n_features=4096) == list(range(4090, 4096))
    assert parse_features(range(1, 9, 3), n_features=16) == [1, 4, 7]
    assert len(parse_features(f"0:{MAX_FEATURES}")) == MAX_FEATURES


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("W_enc", r"the activations of feature\(s\) 3 at hook 'blocks\.1\.hook_resid_pre' are NaN"),
        ("W_enc_inf", r"the activations of feature\(s\) 3 at hook .* NaN or infinite"),
        ("W_dec", r"the decoder of feature\(s\) 3 holds NaN or infinite values"),
        ("b_enc", r"the activations of feature\(s\) 3 at hook"),
    ],
)
def test_non_finite_weights_in_the_sweep(pair, tiny_tokens, damage, message):
    """Weights damaged after loading (the load-time check cannot see them): the sweep names
    the feature and the hook instead of returning NaN dashboards or failing in bincount."""
    model, _ = pair
    sae = make_sae("standard", 32, 16, HOOK)
    d = SAELensDictionary(sae)
    with torch.no_grad():
        if damage == "W_enc":
            sae.W_enc[:, 3] = float("nan")
        elif damage == "W_enc_inf":
            sae.W_enc[:, 3] = float("inf")
        elif damage == "W_dec":
            sae.W_dec[3, 0] = float("inf")
        else:
            sae.b_enc[3] = float("nan")
    with pytest.raises(EngineError, match=message):
        run_sweep(model, d, tiny_tokens, RunConfig(features=[1, 3, 5], feature_correlation="all"))
    # the other features still compute
    out = run_sweep(model, d, tiny_tokens, RunConfig(features=[1, 5])).features
    assert all(torch.isfinite(torch.tensor(out[f].max_act)) for f in (1, 5))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_unembedding_names_the_features(pair, tiny_tokens, value):
    """A NaN or infinite unembedding entry makes those logit effects non-finite: the sweep names
    the features whose logit effects it reaches and points at W_U."""
    _, d = pair
    model = make_model()
    with torch.no_grad():
        model.W_U[:, 5] = value
    with pytest.raises(EngineError, match=r"logit effects of feature\(s\) 1, 3 are NaN .*W_U"):
        run_sweep(ModelAdapter(model, bos_token_id=0), d, tiny_tokens, RunConfig(features=[1, 3]))

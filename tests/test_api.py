"""The notebook API: SAEDashboard's quick-start names, raw SAELens/TransformerLens objects."""

from __future__ import annotations

import json
import re

import pytest
import torch

from core.config import RunConfig
from core.engine.sweep import run_sweep
from tests.tiny import make_model, make_sae, random_tokens

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def setup():
    model = make_model()
    tokens = random_tokens(24, 16, seed=3)
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    sae = make_sae("standard", 32, 48, HOOK, sample=cache[HOOK].reshape(-1, 32))
    return model, sae, tokens


def test_three_lines(setup, tmp_path):
    model, sae, tokens = setup
    w_dec = sae.W_dec.detach().clone()

    from core.api import SaeVisConfig, SaeVisRunner, save_feature_centric_vis

    config = SaeVisConfig(hook_point=HOOK, features=range(6), minibatch_size_tokens=8, device="cpu")
    data = SaeVisRunner(config).run(encoder=sae, model=model, tokens=tokens)
    paths = save_feature_centric_vis(sae_vis_data=data, filename=tmp_path / "dash.html")

    assert data.features == list(range(6))
    assert paths == [tmp_path / "dash.html"] and paths[0].stat().st_size > 100_000
    page = paths[0].read_text()
    shown = json.loads(re.search(r'id="fs-data">(.*?)</script>', page, re.S).group(1))
    assert [f["i"] for f in shown["features"]] == list(range(6))
    assert torch.equal(sae.W_dec, w_dec)  # the SAE is left as it was
    # the same numbers as the engine on the wrapped objects
    from core.dictionaries.saelens import SAELensDictionary
    from core.models import ModelAdapter

    ref = run_sweep(
        ModelAdapter(model),
        SAELensDictionary(sae),
        tokens,
        RunConfig(features=list(range(6)), device="cpu", batch_size=8),
    )
    for f in range(6):
        assert data.feature_data_dict[f].to_dict() == ref.features[f].to_dict()


def test_options_files_and_cache(setup, tmp_path):
    model, sae, tokens = setup
    from core.api import SaeVisConfig, SaeVisData, SaeVisRunner, save_feature_centric_vis

    cfg = SaeVisConfig(
        features="2:5",
        device="cpu",
        cache_dir=tmp_path / "memo",
        feature_centric_layout=["summary", "top_examples"],
        run_options={"n_top_examples": 4},
        verbose=True,
    )
    first = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
    again = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)  # from the memo
    assert first.features == [2, 3, 4]
    assert all(len(fd.top_examples) <= 4 for fd in first.feature_data_dict.values())
    assert {k: v.to_dict() for k, v in again.feature_data_dict.items()} == {
        k: v.to_dict() for k, v in first.feature_data_dict.items()
    }
    paths = save_feature_centric_vis(first, tmp_path / "one.html", separate_files=True)
    assert [p.name for p in paths] == ["one_2.html", "one_3.html", "one_4.html"]
    layout = json.loads(re.search(r'id="fs-data">(.*?)</script>', paths[0].read_text(), re.S)[1])
    assert layout["layout"] == ["summary", "top_examples"]
    (p,) = save_feature_centric_vis(
        first, tmp_path / "some.html", feature_idx=4, include_only=[3, 4]
    )
    assert '"start":4' in p.read_text()
    with pytest.raises(KeyError, match="not in this data"):
        save_feature_centric_vis(first, tmp_path / "x.html", include_only=[0])
    saved = first.save_json(tmp_path / "data.json")
    back = SaeVisData.load_json(saved)
    assert back.feature_data_dict[3].to_dict() == first.feature_data_dict[3].to_dict()


def test_clear_errors(setup):
    model, sae, tokens = setup
    from core.api import SaeVisConfig, SaeVisRunner

    with pytest.raises(TypeError, match="encoder must be a sae_lens SAE"):
        SaeVisRunner(SaeVisConfig(device="cpu")).run(encoder=object(), model=model, tokens=tokens)
    with pytest.raises(TypeError, match="model must be a transformer_lens HookedTransformer"):
        SaeVisRunner(SaeVisConfig(device="cpu")).run(encoder=sae, model="gpt2", tokens=tokens)
    with pytest.raises(NotImplementedError, match="use_dfa"):
        SaeVisRunner(SaeVisConfig(use_dfa=True)).run(encoder=sae, model=model, tokens=tokens)
    with pytest.raises(ValueError, match="out of range"):
        SaeVisRunner(SaeVisConfig(features=[99], device="cpu")).run(
            encoder=sae, model=model, tokens=tokens
        )
    with pytest.raises(ValueError, match="hook 'blocks.9.hook_resid_pre' is not in model"):
        SaeVisRunner(SaeVisConfig(hook_point="blocks.9.hook_resid_pre", device="cpu")).run(
            encoder=sae, model=model, tokens=tokens
        )
    with pytest.warns(UserWarning, match="ignore_tokens"):
        SaeVisRunner(SaeVisConfig(features=[0], ignore_tokens={7}, device="cpu")).run(
            encoder=sae, model=model, tokens=tokens
        )


def test_feature_ranges_are_checked_against_the_dictionary_before_expansion(setup):
    """A range or string larger than the dictionary fails at once, naming the range and the
    valid indices (a range of 10**12 used to be listed first)."""
    model, sae, tokens = setup
    from core.api import SaeVisConfig, SaeVisRunner

    for features, named in [
        ("0:3000000", "feature range 0:3000000"),
        (range(3_000_000), "feature range 0:3000000"),
        (range(0, 10**12, 5), "feature range 0:999999999996"),
        ("0:99999999", "feature range 0:99999999"),
    ]:
        with pytest.raises(ValueError, match=f"{named} .*is out of range.*valid indices 0-47"):
            SaeVisRunner(SaeVisConfig(features=features, device="cpu")).run(
                encoder=sae, model=model, tokens=tokens
            )

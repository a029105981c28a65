"""Release and model-name checks, made offline before any download."""

from __future__ import annotations

import pytest

from core.releases import (
    all_releases,
    check_model_name,
    check_release,
    closest_model_names,
    releases_for,
    same_model,
)
from core.sources import SourceError


def test_model_names_and_aliases_are_one_model():
    assert same_model("gpt2-small", "gpt2")
    assert same_model("gemma-2-2b", "google/gemma-2-2b")
    assert not same_model("gemma-2-2b", "google/gemma-2-2b-it")
    assert not same_model("gpt2-small", "pythia-70m")


def test_releases_are_filtered_by_the_model():
    everything = all_releases()
    gpt2 = releases_for("gpt2-small")
    assert gpt2 and len(gpt2) < len(everything)
    assert all(same_model(r.model, "gpt2") for r in gpt2.values())
    assert list(gpt2) == sorted(gpt2)
    # every release for gpt2 is found whichever of its names is used
    assert releases_for("gpt2") == gpt2
    # the demo model has none: the page says so instead of listing other models' releases
    assert releases_for("SmolLM2-135M-Instruct") == {}


def test_release_for_another_model_is_refused_before_download():
    rel = next(iter(releases_for("gpt2-small").values()))
    assert check_release(rel.name, rel.ids[0], "gpt2").name == rel.name
    with pytest.raises(SourceError, match=r"trained on gpt2-small, but the model is pythia-70m"):
        check_release(rel.name, rel.ids[0], "pythia-70m")
    with pytest.raises(SourceError, match="no SAE id 'nope'"):
        check_release(rel.name, "nope", "gpt2")
    with pytest.raises(SourceError, match="no SAELens release 'gpt2-small-res-jbb'.*gpt2-small"):
        check_release("gpt2-small-res-jbb", None, None)


def test_release_layer_beyond_the_model_is_refused():
    rel = all_releases()["gpt2-small-res-jb"]
    sae_id = "blocks.8.hook_resid_pre"
    assert rel.layer_of(sae_id) == 8
    check_release(rel.name, sae_id, "gpt2-small", n_layers=12)
    with pytest.raises(SourceError, match="reads layer 8, but the model has 4 layers"):
        check_release(rel.name, sae_id, "gpt2-small", n_layers=4)
    gemma = all_releases()["gemma-scope-2b-pt-res-canonical"]
    assert gemma.layer_of(gemma.ids[3]) == 3


def test_unknown_model_name_suggests_a_few_close_names():
    assert check_model_name("gpt2-small") == "gpt2-small"
    with pytest.raises(SourceError) as err:
        check_model_name("gtp2-smal")
    text = str(err.value)
    assert "gpt2" in text and len(text) < 400  # a few names, not hundreds
    assert closest_model_names("pythia-70")[0].startswith("EleutherAI/pythia-70m")
    assert closest_model_names("zzzzqqqq") == []


def test_loaders_refuse_before_any_download(monkeypatch):
    """The checks run in the loaders: nothing reaches the hub for a wrong pairing or name."""
    import sae_lens
    import transformer_lens

    from core.sources import DatasetSpec, DictionarySpec, ModelSpec, load_model, load_sources

    calls: list[str] = []

    def no_download(*args, **kwargs):
        calls.append(str(args[:2]))
        raise AssertionError("download attempted")

    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", no_download)
    monkeypatch.setattr(transformer_lens.HookedTransformer, "from_pretrained", no_download)
    gpt2_release = next(iter(releases_for("gpt2-small").values()))
    with pytest.raises(SourceError, match="trained on gpt2-small, but the model is pythia-70m"):
        load_sources(
            ModelSpec(kind="hub", name="pythia-70m"),
            DictionarySpec(kind="saelens", release=gpt2_release.name, sae_id=gpt2_release.ids[0]),
            DatasetSpec(kind="demo"),
        )
    with pytest.raises(SourceError, match="but the model is SmolLM2-135M-Instruct"):
        load_sources(
            ModelSpec(kind="demo"),
            DictionarySpec(kind="saelens", release=gpt2_release.name, sae_id=gpt2_release.ids[0]),
            DatasetSpec(kind="demo"),
        )
    with pytest.raises(SourceError, match="Closest known names: .*gpt2"):
        load_model(ModelSpec(kind="hub", name="gtp2-smal"))
    assert calls == []

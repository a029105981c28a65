"""A tiny, deterministic workspace for the app tests.

``FEATURESCOPE_TEST_WORKSPACE=tests.app.fixtures:make_workspace`` makes the app build its
default workspace with :func:`make_workspace` instead of loading the demo. Everything is
built in memory from fixed seeds by :mod:`tests.tiny` (a 2-layer HookedTransformer with a
word-level tokenizer, a standard SAE whose features fire on about 15% of tokens, a token set
made of word sequences), so every process (pytest, ``streamlit run``) gets the same
workspace and the same identity key. Computed features go to a :class:`~core.memo.Memo`
in ``$FEATURESCOPE_CACHE_DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.tiny import HOOK, make_model, make_sae, random_tokens, save_hf_model, word_tokenizer

_TEXT = (
    "the cat sat on a mat dog ran far away and then came back home it was very "
    "happy to see its friend who had been waiting by old tree for long time while "
    "rain fell softly over quiet town where people slept in warm houses under "
    "dark sky full of stars"
)
WORDS = _TEXT.split()
N_FEATURES = 64
#: text that the tests type into the prompt search
PROMPT = "the cat sat on a mat and the dog ran home"


def make_tokenizer():
    """A word-level fast tokenizer over :data:`WORDS` (id 0 is BOS/EOS/UNK) that a
    HookedTransformer uses as it is (see :func:`tests.tiny.word_tokenizer`)."""
    return word_tokenizer(WORDS, transformer_lens_name="tiny-test")


def save_local_sources(directory: Path) -> None:
    """Files for the Sources page's local choices: a tiny Hugging Face model
    (``directory/tiny-gpt2``) and a SAELens SAE at its ``blocks.1.hook_resid_pre`` (``sae``)."""
    import sae_lens as sl

    save_hf_model(directory / "tiny-gpt2", make_tokenizer(), special_ids=False)
    sae = sl.StandardSAE(sl.StandardSAEConfig(d_in=32, d_sae=24))
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    sae.save_model(str(directory / "sae"))


def fill_local_sources(at: Any, directory: Path, data: Path) -> None:
    """Set an AppTest's Sources form to :func:`save_local_sources`'s files and the local
    token set ``data`` (512 tokens in rows of 32); nothing is loaded yet."""
    at.radio(key="fs_m_kind").set_value("local").run()
    at.text_input(key="fs_m_path").input(str(directory / "tiny-gpt2")).run()
    at.radio(key="fs_d_kind").set_value("saelens_local").run()
    at.text_input(key="fs_d_path").input(str(directory / "sae")).run()
    at.radio(key="fs_t_kind").set_value("local").run()
    at.text_input(key="fs_t_path_local").input(str(data)).run()
    at.number_input(key="fs_t_budget").set_value(512).run()
    at.number_input(key="fs_t_ctx").set_value(32).run()


def make_workspace():
    """The test workspace: tiny model, 64-feature SAE, 48 x 24 tokens, memo on disk."""
    from core.config import RunConfig
    from core.dictionaries.saelens import SAELensDictionary
    from core.memo import Memo
    from core.models import ModelAdapter
    from core.workspace import Workspace

    tok = make_tokenizer()
    d_vocab = len(tok.get_vocab())
    model = make_model(d_vocab=d_vocab, n_ctx=64, model_name="tiny-test", tokenizer=tok)
    model.cfg.default_prepend_bos = True
    adapter = ModelAdapter(model, {"kind": "test", "name": "tiny-test"})

    tokens = random_tokens(48, 24, seed=1, d_vocab=d_vocab)
    with torch.no_grad():
        sample = adapter.run_to_hooks(tokens[:16], [HOOK])[HOOK].reshape(-1, model.cfg.d_model)
    sae = make_sae("standard", model.cfg.d_model, N_FEATURES, HOOK, sample=sample, density=0.15)
    dictionary = SAELensDictionary(sae, source={"kind": "test", "name": "tiny-test-sae"})
    config = RunConfig(n_top_examples=8, n_interval_examples=3, n_intervals=5, batch_size=16)
    dataset = {"kind": "test", "name": "random words", "n_tokens": int(tokens.numel())}
    return Workspace(adapter, dictionary, tokens, dataset, Memo(), config)


def make_slow_workspace():
    """:func:`make_workspace` whose encoder sleeps a little per call, so a background job
    lasts long enough (seconds) for a browser to watch its progress."""
    import time

    ws = make_workspace()
    encode = ws.dictionary.encode

    def slow_encode(*args, **kwargs):
        time.sleep(0.1)
        return encode(*args, **kwargs)

    ws.dictionary.encode = slow_encode
    return ws


def make_z_workspace():
    """:func:`make_workspace`'s model and tokens with a 16-feature SAE on the attention
    output ``blocks.1.attn.hook_z`` (direct feature attribution on the Feature page)."""
    from core.dictionaries.saelens import SAELensDictionary
    from tests.tiny import z_sae_at

    ws = make_workspace()
    sae = z_sae_at(ws.model.model, ws.tokens[:16], layer=1)
    dictionary = SAELensDictionary(sae, source={"kind": "test", "name": "tiny-test-z-sae"})
    return type(ws)(ws.model, dictionary, ws.tokens, ws.dataset, ws.memo, ws.config)


def make_directions_workspace():
    """:func:`make_workspace`'s model and tokens with 4 given directions at the same hook
    (signed activations: the Feature page shows the most positive and most negative)."""
    from tests.tiny import make_directions

    ws = make_workspace()
    dictionary = make_directions(ws.model.model.cfg.d_model, 4, HOOK, seed=3)
    return type(ws)(ws.model, dictionary, ws.tokens, ws.dataset, ws.memo, ws.config)

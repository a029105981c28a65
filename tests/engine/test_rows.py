"""A feature's stored form (its row of the sweep's columns) reads back as the data the sweep
built, for every kind of feature; the example windows' token ids and strings match the
tokens directly; bad bytes are refused.

Sweeps of tiny models: an SAE with a dead feature (windows and whole sequences), a
transcoder, a cross-layer transcoder (extras), signed directions (bottom examples), an
attention SAE (direct feature attribution extras).
"""

from __future__ import annotations

import json

import pytest
import torch

from core.config import RunConfig
from core.dictionaries.clt import CLTDictionary
from core.dictionaries.saelens import SAELensDictionary
from core.engine.dfa import attach_dfa
from core.engine.features import SCHEMA_VERSION, FeatureData
from core.engine.result import FeatureSet, window_ids
from core.engine.rows import feature_from_row
from core.engine.sweep import run_sweep
from core.models import ModelAdapter
from core.previews import summary_table
from tests.tiny import HOOK, make_directions, make_model, make_sae, random_tokens, transcoder_at


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


def check_windows(fd: FeatureData, tokens: torch.Tensor, vocab: list[str]) -> int:
    """Every example's token ids are its sequence's tokens over its shown span, with their
    strings (``<id>`` for ids without one); returns how many examples were checked."""
    examples = list(fd.top_examples)
    examples += [e for g in fd.intervals for e in g.examples]
    examples += fd.bottom_examples
    for e in examples:
        assert e.token_ids == tokens[e.seq, e.start : e.start + len(e.acts)].tolist()
        assert e.tokens == [vocab[i] if i < len(vocab) else f"<{i}>" for i in e.token_ids]
        assert e.acts[e.qualifying_index] == e.value
    return len(examples)


def assert_rows_read_back(fs: FeatureSet, tokens: torch.Tensor) -> None:
    rows = fs.row_bytes(0, len(fs))
    assert rows == fs.row_bytes(0, len(fs))  # the same bytes every time
    checked = 0
    for f, row in zip(fs.order, rows, strict=True):
        back = feature_from_row(row)
        assert back == fs[f], f
        assert back.to_json() == fs[f].to_json()  # dict order too (a table's columns)
        checked += check_windows(back, tokens, fs.vocab)
    assert checked > 0
    # streamed in batches of any size: the same data and the same bytes, and each batch's
    # summary from the columns is summary_table's of its features (values and types)
    for size in (1, 5, 64):
        got = list(fs.stored_batches(size))
        assert all(len(part) == len(stored) <= size for part, stored in got)
        assert [f for part, _ in got for f in part] == fs.order
        assert [part[f] for part, _ in got for f in part] == [fs[f] for f in fs.order]
        assert [b for _, stored in got for b in stored] == rows
        for part, _ in got:
            want = summary_table([fs[f] for f in part])
            assert json.dumps(part.summary()) == json.dumps(want)
    assert fs.summary() == summary_table(fs.values())


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
    assert_rows_read_back(fs, tokens)


def test_transcoder_features(model, tokens):
    tc = transcoder_at(model, tokens, HOOK, "blocks.1.hook_mlp_out", d_sae=10)
    assert_rows_read_back(sweep(model, SAELensDictionary(tc), tokens), tokens)


@pytest.mark.parametrize("layer", [0, 8])  # 10 and 2 target layers: long and short extras
def test_cross_layer_transcoder_extras(model, tokens, layer):
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
    assert_rows_read_back(fs, tokens)


def test_signed_directions_keep_their_bottom_examples(model, tokens):
    fs = sweep(model, make_directions(32, 5, HOOK), tokens)
    assert all(fs[f].signed and fs[f].bottom_examples for f in fs)
    assert_rows_read_back(fs, tokens)


def test_attention_features_keep_their_attribution(model, tokens):
    from tests.tiny import z_sae_at

    sae = z_sae_at(model, tokens, layer=1, d_sae=6)
    adapter = ModelAdapter(model, bos_token_id=0)
    cfg = RunConfig(features=list(range(6)), batch_size=4, n_top_examples=4)
    fs = run_sweep(adapter, SAELensDictionary(sae), tokens, cfg).features
    assert attach_dfa(adapter, SAELensDictionary(sae), tokens, cfg, fs)
    assert any(fs[f].extras.get("dfa") for f in fs)
    assert_rows_read_back(fs, tokens)


def test_extras_of_any_json_survive(model, tokens):
    sae = make_sae("standard", 32, 3, HOOK, density=0.3)
    fs = sweep(model, SAELensDictionary(sae), tokens)
    fs.extras["note"] = [
        {"z": "é \u2028 \x00", "a": [1.5, None, True, float("nan")]},
        {},
        {"deep": [[['q"uote', "back\\slash", "new\nline"]]]},
    ]
    rows = fs.row_bytes(0, 3)
    for f, row in zip(fs.order, rows, strict=True):
        back = feature_from_row(row)
        assert back.to_json() == fs[f].to_json()  # NaN != NaN: compared as text
        assert list(back.extras["note"]) == list(fs[f].extras["note"])


def test_token_strings_outside_the_vocabulary(model, tokens):
    sae = make_sae("standard", 32, 5, HOOK, density=0.3)
    fs = sweep(model, SAELensDictionary(sae), tokens)
    short = fs.vocab[:20]  # ids from 20 on have no string: shown as <id>
    again = FeatureSet(fs.order, fs.cols, fs.tokens, short, fs.window)
    checked = 0
    for f, row in zip(again.order, again.row_bytes(0, 5), strict=True):
        back = feature_from_row(row)
        assert back == again[f]
        checked += check_windows(back, tokens, short)
        assert back.top_logits.tokens == [
            short[i] if i < 20 else f"<{i}>" for i in back.top_logits.token_ids
        ]
    assert checked > 0
    table = again.summary()
    assert json.dumps(table) == json.dumps(summary_table(again.values()))
    assert any(t.startswith("<") for fires in table["fires_on"] for t in fires)


def test_window_ids_against_a_loop(tokens):
    g = torch.Generator().manual_seed(0)
    n_seq, length = tokens.shape
    seq = torch.randint(-1, n_seq, (7, 3), generator=g)
    pos = torch.randint(0, length, (7, 3), generator=g)
    for window in [(5, 5), (0, 2), (20, 1), None]:
        got = window_ids(tokens, seq, pos, window)
        before, after = window or (0, length - 1)
        for idx in torch.cartesian_prod(torch.arange(7), torch.arange(3)).tolist():
            s, p = int(seq[tuple(idx)]), int(pos[tuple(idx)])
            start = p - before if window else 0
            want = [
                int(tokens[s, q]) if s >= 0 and 0 <= q < length else -1
                for q in range(start, start + before + after + 1)
            ]
            assert got[tuple(idx)].tolist() == want


def test_bytes_of_another_schema_or_broken_are_refused(model, tokens):
    sae = make_sae("standard", 32, 2, HOOK, density=0.3)
    row = sweep(model, SAELensDictionary(sae), tokens).row_bytes(0, 1)[0]
    n = int.from_bytes(row[:8], "little")
    header = row[8 : 8 + n].decode()
    old = header.replace(f'\\"schema\\": {SCHEMA_VERSION}', '\\"schema\\": 3')
    assert old != header and len(old) == len(header)
    with pytest.raises(ValueError, match="schema 3"):
        feature_from_row(row[:8] + old.encode() + row[8 + n :])
    for bad in (b"", row[:6], b"\xff" * 8 + row[8:], row[: 8 + n // 2]):
        with pytest.raises(ValueError):
            feature_from_row(bad)
    assert json.loads(json.loads(header)["__metadata__"]["feature"])["index"] == 0


# ---- building many features at once --------------------------------------------------------------
def test_batches_build_what_single_features_build(model, tokens):
    sae = make_sae("standard", 32, 11, HOOK, density=0.2)
    fs = sweep(model, SAELensDictionary(sae), tokens)
    single = {f: fs[f] for f in fs}  # one row at a time
    for size in (1, 4, 64):
        again = FeatureSet(fs.order, fs.cols, fs.tokens, fs.vocab, fs.window, fs.extras)
        got = [pair for batch in again.batches(size) for pair in batch]
        assert [f for f, _ in got] == fs.order
        assert all(len(b) <= size for b in again.batches(size))
        for f, data in got:
            assert data == single[f]
            assert again[f] is data  # kept, like features built one by one


def test_batches_reuse_features_already_built(model, tokens):
    sae = make_sae("standard", 32, 6, HOOK, density=0.2)
    fs = sweep(model, SAELensDictionary(sae), tokens)
    first = fs[fs.order[2]]
    got = dict(pair for batch in fs.batches(4) for pair in batch)
    assert got[fs.order[2]] is first


def test_reading_rows_needs_no_torch(model, tokens, tmp_path):
    """A light reader (the memo, a precompute output's store) reads features without
    importing torch."""
    import subprocess
    import sys
    from pathlib import Path

    sae = make_sae("standard", 32, 2, HOOK, density=0.3)
    fs = sweep(model, SAELensDictionary(sae), tokens)
    (tmp_path / "row").write_bytes(fs.row_bytes(0, 1)[0])
    code = (
        "import sys;from core.engine.rows import feature_from_row;"
        "fd=feature_from_row(open(sys.argv[1],'rb').read());"
        "print(fd.to_json());print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "row")],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.splitlines()
    assert out == [fs[0].to_json(), "False"]

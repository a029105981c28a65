"""Given directions as a dictionary: the file form, the spec, the notebook API, the errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from core.api import SaeVisConfig, SaeVisRunner
from core.config import RunConfig
from core.dictionaries import DictionaryError
from core.dictionaries.directions import DirectionsDictionary
from core.engine.sweep import run_sweep
from core.gate import WorkspaceError
from core.memo import Memo
from core.models import ModelAdapter
from core.source_guard import SourceError
from core.sources import load_dictionary
from core.specs import parse_dictionary, spec_text
from core.workspace import open_workspace
from tests.tiny import BOS_ID, HOOK, make_directions, make_model, random_tokens, write_hf_model


@pytest.fixture(scope="module")
def model():
    return make_model(n_layers=2)


def test_file_spec_load_round_trip(tmp_path):
    path = tmp_path / "vecs.safetensors"
    made = make_directions(32, 3, HOOK, seed=1, path=path)
    spec = parse_dictionary(f"directions:{path}")
    assert (spec.kind, spec.path) == ("directions", str(path))
    assert parse_dictionary(spec_text(spec)) == spec
    loaded = load_dictionary(spec, device="cpu")
    assert isinstance(loaded, DirectionsDictionary) and loaded.signed
    assert (loaded.hook_in, loaded.hook_out, loaded.n_features, loaded.d_in) == (HOOK, HOOK, 3, 32)
    assert torch.equal(loaded.W, made.W) and loaded.fingerprint() == made.fingerprint()
    assert loaded.identity()["path"] == str(path)
    x = torch.randn(5, 32)
    assert torch.equal(loaded.encode(x), x @ made.W.T)  # raw dot product, vectors as given
    assert torch.equal(loaded.encode(x, torch.tensor([2])), x @ made.W[2:].T)
    assert torch.equal(loaded.decoder_directions(), made.W)


def test_a_single_tensor_of_any_name_and_one_vector(tmp_path):
    path = tmp_path / "probe.safetensors"
    save_file({"probe": torch.ones(32)}, str(path), metadata={"hook_name": HOOK})
    d = load_dictionary(parse_dictionary(f"directions:{path}"), device="cpu")
    assert d.n_features == 1 and d.d_in == 32


def test_clear_errors(tmp_path, model):
    no_hook = tmp_path / "a.safetensors"
    save_file({"directions": torch.ones(2, 32)}, str(no_hook))
    with pytest.raises(SourceError, match="metadata has no 'hook_name'"):
        load_dictionary(parse_dictionary(f"directions:{no_hook}"), device="cpu")
    two = tmp_path / "b.safetensors"
    save_file({"u": torch.ones(2, 32), "w": torch.ones(2, 32)}, str(two), {"hook_name": HOOK})
    with pytest.raises(SourceError, match="none is named 'directions'"):
        load_dictionary(parse_dictionary(f"directions:{two}"), device="cpu")
    bad_hook = tmp_path / "c.safetensors"
    save_file({"directions": torch.ones(2, 32)}, str(bad_hook), {"hook_name": "resid 6"})
    with pytest.raises(SourceError, match="not a TransformerLens hook name"):
        load_dictionary(parse_dictionary(f"directions:{bad_hook}"), device="cpu")
    not_st = tmp_path / "d.safetensors"
    not_st.write_bytes(b"not a safetensors file")
    with pytest.raises(SourceError, match="could not read"):
        load_dictionary(parse_dictionary(f"directions:{not_st}"), device="cpu")
    with pytest.raises(SourceError, match="no such file"):
        parse_dictionary(f"directions:{tmp_path / 'missing.safetensors'}")
    with pytest.raises(DictionaryError, match="2-D tensor"):
        DirectionsDictionary(torch.ones(2, 3, 4), HOOK)
    with pytest.raises(DictionaryError, match="NaN"):
        DirectionsDictionary(torch.full((2, 32), float("nan")), HOOK)
    # the width is checked against the hook before any sweep
    narrow = DirectionsDictionary(torch.ones(2, 7), HOOK)
    tokens = random_tokens(2, 6, seed=0)
    with pytest.raises(DictionaryError, match="reads 7-wide inputs but hook"):
        run_sweep(ModelAdapter(model, bos_token_id=BOS_ID), narrow, tokens, RunConfig(device="cpu"))


def test_notebook_api_takes_a_tensor(model):
    tokens = random_tokens(4, 8, seed=3)
    vecs = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    cfg = SaeVisConfig(hook_point=HOOK, features=range(3), device="cpu")
    data = SaeVisRunner(cfg).run(encoder=vecs, model=model, tokens=tokens)
    fd = data.feature_data_dict[1]
    assert fd.signed and fd.min_act < 0 < fd.max_act and fd.bottom_examples
    with pytest.raises(TypeError, match="hook_point"):
        SaeVisRunner(SaeVisConfig(device="cpu")).run(encoder=vecs, model=model, tokens=tokens)


def test_open_workspace_takes_a_tensor(tmp_path):
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "a", "dog", "ran", "home"]
    write_hf_model(tmp_path / "lm", words)
    (tmp_path / "text.txt").write_text(" ".join(words * 30))
    vecs = torch.randn(3, 32, generator=torch.Generator().manual_seed(4))
    memo = Memo(tmp_path / "cache" / "memo")
    kw = dict(n_tokens=128, context_length=16, device="cpu", memo=memo)
    model, data = f"local:{tmp_path / 'lm'}", f"local:{tmp_path / 'text.txt'}"
    ws = open_workspace(model, dataset=data, directions=vecs, hook=HOOK, **kw)
    assert isinstance(ws.dictionary, DirectionsDictionary)
    assert torch.equal(ws.dictionary.W, vecs) and ws.dictionary.hook_in == HOOK
    files = list((tmp_path / "cache" / "directions").iterdir())
    assert len(files) == 1  # named by content: opening again writes nothing new
    again = open_workspace(model, dataset=data, directions=vecs.clone(), hook=HOOK, **kw)
    assert list((tmp_path / "cache" / "directions").iterdir()) == files
    assert again.identity_key() == ws.identity_key()
    fd = ws.feature(2)
    assert fd.signed and fd.min_act < 0 < fd.max_act
    with pytest.raises(WorkspaceError, match="hook they are read at"):
        open_workspace(model, dataset=data, directions=vecs, **kw)
    with pytest.raises(WorkspaceError, match="not both"):
        open_workspace(model, "demo-x", data, directions=vecs, hook=HOOK, **kw)

"""Sources: every SAELens architecture from disk, a local HF model, local datasets, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sae_lens as sl
import torch

from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine.sweep import run_sweep
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
    validate_device,
)
from tests.tiny import make_model, write_hf_model
from tests.tolerance import encode_tolerance

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
    # a column subset sums the same terms in another order: rounding only (tests/tolerance.py)
    tol = torch.from_numpy(encode_tolerance(sae, x)[idx.numpy()]).float()
    assert ((d.encode(x, idx) - sae.encode(x)[:, idx]).abs() <= tol).all()
    torch.testing.assert_close(d.decoder_directions(idx), sae.W_dec[idx])
    # and the engine runs on it: activations from the input hook
    model = make_model()
    res = run_sweep(ModelAdapter(model, bos_token_id=0), d, tiny_tokens, RunConfig(features=[0, 5]))
    _, cache = model.run_with_cache(tiny_tokens, names_filter=d.hook_in)
    acts = sae.encode(cache[d.hook_in].reshape(-1, D)).reshape(*tiny_tokens.shape, -1)
    sweep_tol = encode_tolerance(sae, cache[d.hook_in])
    for f in (0, 5):
        for e in res.features[f].top_examples:
            want = float(acts[e.seq, e.pos, f].detach())
            assert e.value == pytest.approx(want, abs=sweep_tol[f])


def test_saelens_release_list_is_offline():
    rel = saelens_releases("gpt2-small")
    assert "gpt2-small-res-jb" in rel
    assert "blocks.8.hook_resid_pre" in rel["gpt2-small-res-jb"]["ids"]
    assert all(v["model"] == "gpt2-small" for v in rel.values())
    with pytest.raises(SourceError, match="there is no SAELens release 'nope'"):
        load_dictionary(DictionarySpec(kind="saelens", release="nope", sae_id="x"))
    with pytest.raises(SourceError, match="has no SAE id 'x'"):
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
    hf, tok = write_hf_model(path, words)
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


# ==== hardening: code, devices and memory from files ============================================
def write_remote_code_model(root: Path, config: str = "config.json") -> tuple[Path, Path]:
    """A tiny model directory whose ``config`` maps a class to a Python file that writes a
    marker file when imported. Returns ``(model_dir, marker)``."""
    model_dir, marker = root / "model", root / "MARKER-imported"
    write_hf_model(model_dir, ["the", "cat", "sat", "on", "a", "mat"])
    (model_dir / "evil.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import GPT2Config, PreTrainedTokenizerFast\n"
        "class EvilConfig(GPT2Config):\n    pass\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    cfg = json.loads((model_dir / config).read_text())
    cfg["auto_map"] = (
        {"AutoConfig": "evil.EvilConfig"}
        if config == "config.json"
        else {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    )
    (model_dir / config).write_text(json.dumps(cfg))
    return model_dir, marker


def write_sae_dir(root: Path, **metadata) -> Path:
    sae = _build("standard")
    for key, value in metadata.items():
        setattr(sae.cfg.metadata, key, value)
    sae.save_model(str(root))
    return root


@pytest.mark.parametrize("config", ["config.json", "tokenizer_config.json"])
def test_remote_code_is_refused_and_never_imported(tmp_path, config):
    from core.sources import load_sources

    model_dir, marker = write_remote_code_model(tmp_path, config)
    sae_dir = write_sae_dir(
        tmp_path / "sae", model_from_pretrained_kwargs={"trust_remote_code": True}
    )
    (tmp_path / "a.txt").write_text("the cat sat on a mat " * 20)
    with pytest.raises(SourceError, match=f"asks to run its own Python code \\({config}"):
        load_sources(
            ModelSpec(kind="local", path=str(model_dir), device="cpu"),
            DictionarySpec(kind="saelens_local", path=str(sae_dir)),
            DatasetSpec(kind="local", path=str(tmp_path / "a.txt"), n_tokens=16, context_length=4),
        )
    assert not marker.exists()


def test_cli_compute_refuses_remote_code(tmp_path):
    model_dir, marker = write_remote_code_model(tmp_path)
    sae_dir = write_sae_dir(
        tmp_path / "sae", model_from_pretrained_kwargs={"trust_remote_code": True}
    )
    (tmp_path / "a.txt").write_text("the cat sat on a mat " * 20)
    args = ["--model", str(model_dir), "--dictionary", str(sae_dir), "--device", "cpu"]
    args += ["--dataset", str(tmp_path / "a.txt"), "--n-tokens", "16", "--context-length", "4"]
    done = subprocess.run(
        [sys.executable, "-m", "core", "compute", *args, "--features", "0", "--no-memo"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "FEATURESCOPE_DATA_DIR": str(tmp_path / "data")},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "asks to run its own Python code" in done.stderr
    assert not marker.exists()


def test_dictionary_model_kwargs_are_allowlisted(local_hf_model, tmp_path, caplog):
    """trust_remote_code / n_devices in a dictionary's metadata are dropped and reported;
    processing options are kept; a spec asking for them is refused."""
    from core.sources import model_kwargs_for

    path, _, _ = local_hf_model
    kwargs = {"trust_remote_code": True, "n_devices": 8, "center_unembed": False}
    d = load_dictionary(
        DictionarySpec(
            kind="saelens_local",
            path=str(write_sae_dir(tmp_path / "sae", model_from_pretrained_kwargs=kwargs)),
        )
    )
    with caplog.at_level("WARNING", logger="core"):
        got = model_kwargs_for(d)
    assert got == {"center_unembed": False}
    assert "n_devices=8" in caplog.text and "trust_remote_code=True" in caplog.text
    # load_model filters what it is given directly too (no AssertionError from n_devices)
    model = load_model(ModelSpec(kind="local", path=str(path), device="cpu"), kwargs)
    assert model.d_vocab > 0
    with pytest.raises(SourceError, match="trust_remote_code=True.*remove them"):
        load_model(
            ModelSpec(
                kind="local",
                path=str(path),
                device="cpu",
                from_pretrained_kwargs={"trust_remote_code": True},
            )
        )


@pytest.mark.parametrize("device", ["meta", "cuda:7", "gpu", "cpu; rm", "", 3])
def test_devices_are_validated_before_loading(device, local_hf_model, tmp_path):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    path, _, _ = local_hf_model
    with pytest.raises(SourceError, match=r"is not available on this machine.*'cpu'"):
        validate_device(device)
    with pytest.raises(SourceError, match="is not available on this machine"):
        load_model(ModelSpec(kind="local", path=str(path), device=device))
    with pytest.raises(SourceError, match="is not available on this machine"):
        load_dictionary(
            DictionarySpec(kind="saelens_local", path=str(write_sae_dir(tmp_path / "s"))),
            device=device,
        )
    assert validate_device("cpu") == "cpu"
    assert validate_device(" CPU ") == "cpu"
    assert validate_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(
    ("hook", "which"),
    [
        ("blocks.1.hook_resid_pre; import os", "hook_name"),
        ("{0.__class__}", "hook_name"),
        ("blocks.0.hook_mlp_out\nblocks.1.hook_mlp_out", "hook_name_out"),
    ],
)
def test_saelens_hook_names_are_checked(tmp_path, hook, which):
    sae = _build("transcoder")
    setattr(sae.cfg.metadata, which, hook)
    sae.save_model(str(tmp_path / "tc"))
    with pytest.raises(SourceError, match=f"{which} is .*not a TransformerLens hook name"):
        load_dictionary(DictionarySpec(kind="saelens_local", path=str(tmp_path / "tc")))


@pytest.mark.parametrize(
    ("tensor", "value", "words"),
    [("W_enc", float("nan"), "3 NaN"), ("W_dec", float("inf"), "3 inf")],
)
def test_non_finite_sae_weights_are_refused(tmp_path, tensor, value, words):
    sae = _build("standard")
    with torch.no_grad():
        getattr(sae, tensor).view(-1)[[0, 7, 11]] = value
    sae.save_model(str(tmp_path / "sae"))
    with pytest.raises(SourceError, match=f"tensor '{tensor}' .* holds .*{words}"):
        load_dictionary(DictionarySpec(kind="saelens_local", path=str(tmp_path / "sae")))


# ---- datasets ---------------------------------------------------------------------------------
def _tokens(model, path: Path, n_tokens: int = 48, context: int = 8, **kw):
    spec = DatasetSpec(
        kind="local", path=str(path), n_tokens=n_tokens, context_length=context, **kw
    )
    return load_tokens(spec, model)[0]


@pytest.fixture
def tiny_local(local_hf_model, tmp_path, monkeypatch):
    monkeypatch.setattr("core.sources.CACHE_ROOT", tmp_path / "cache")
    path, _, _ = local_hf_model
    return load_model(ModelSpec(kind="local", path=str(path), device="cpu"))


def test_fifo_and_devices_are_refused_without_reading(tiny_local, tmp_path):
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)

    def unblock() -> None:  # if the loader blocks on the FIFO, end it (the test then fails)
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass

    timer = threading.Timer(20, unblock)
    timer.start()
    try:
        with pytest.raises(SourceError, match="is a FIFO .*not a regular file"):
            _tokens(tiny_local, fifo)
    finally:
        timer.cancel()
    (tmp_path / "zero.txt").symlink_to("/dev/zero")
    with pytest.raises(SourceError, match="is a character device, not a regular file"):
        _tokens(tiny_local, tmp_path / "zero.txt")
    (tmp_path / "zero.jsonl").symlink_to("/dev/zero")
    with pytest.raises(SourceError, match="character device"):
        _tokens(tiny_local, tmp_path / "zero.jsonl")


def test_sparse_nul_file_is_refused_as_binary(tiny_local, tmp_path):
    big = tmp_path / "nul.txt"
    with big.open("wb") as fh:
        fh.truncate(2 << 30)  # 2 GiB of NUL bytes, no disk used
    assert os.stat(big).st_blocks * 512 < 1 << 20
    with pytest.raises(SourceError, match="looks like a binary file.*100% .* NUL"):
        _tokens(tiny_local, big)


def test_text_is_read_only_up_to_the_token_budget(tiny_local, tmp_path, monkeypatch):
    """A 24 MB single line: read piece by piece, and no further than the budget needs."""
    import core.sources as sources

    line = "the cat sat on a mat and then came back home " * 540_000
    (tmp_path / "line.txt").write_text(line)
    consumed = {"pieces": 0, "finished": False}
    real = sources.text_file_pieces

    def counting(path):
        for item in real(path):
            consumed["pieces"] += 1
            yield item
        consumed["finished"] = True

    monkeypatch.setattr(sources, "text_file_pieces", counting)
    toks = _tokens(tiny_local, tmp_path / "line.txt", n_tokens=64, context=8)
    assert consumed == {"pieces": 1, "finished": False}
    want = tiny_local.tokenizer(line[:2000], add_special_tokens=False)["input_ids"]
    assert toks[0].tolist() == [0, *want[:7]] and toks.shape == (8, 8)


def test_long_documents_give_the_same_tokens_in_pieces(tiny_local, tmp_path, monkeypatch):
    """Cutting a document into pieces at whitespace does not change its tokens."""
    docs = ["the cat sat on a mat " * 30, "dog ran far away and then came back home " * 25]
    (tmp_path / "a.txt").write_text("\n\n\n".join(docs))
    whole = _tokens(tiny_local, tmp_path / "a.txt", n_tokens=10_000, context=8)
    monkeypatch.setattr("core.dataset_files.MAX_PIECE_CHARS", 50)
    monkeypatch.setattr("core.dataset_files.CHUNK_CHARS", 37)
    monkeypatch.setattr("core.sources.CACHE_ROOT", tmp_path / "cache2")
    assert torch.equal(_tokens(tiny_local, tmp_path / "a.txt", n_tokens=10_000, context=8), whole)


def test_utf16_text(tiny_local, tmp_path):
    text = "the cat sat on a mat\n\n\ndog ran far away and then came back home " * 4
    (tmp_path / "u8.txt").write_text(text, encoding="utf-8")
    (tmp_path / "u16.txt").write_text(text, encoding="utf-16")  # with a byte-order mark
    (tmp_path / "u16.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-16")
    want = _tokens(tiny_local, tmp_path / "u8.txt")
    assert torch.equal(_tokens(tiny_local, tmp_path / "u16.txt"), want)
    assert _tokens(tiny_local, tmp_path / "u16.jsonl").shape == want.shape
    (tmp_path / "nobom.txt").write_bytes(text.encode("utf-16-le"))
    with pytest.raises(SourceError, match="binary file.*save it as UTF-8"):
        _tokens(tiny_local, tmp_path / "nobom.txt")


def test_json_decoder_failures_are_clear(tiny_local, tmp_path, monkeypatch):
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(SourceError, match="nested too deeply"):
        _tokens(tiny_local, tmp_path / "deep.json")
    (tmp_path / "deep.jsonl").write_text('{"text": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    with pytest.raises(SourceError, match="line 1 is nested too deeply"):
        _tokens(tiny_local, tmp_path / "deep.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(SourceError, match="line 1 is not utf-8 text.*save it as UTF-8"):
        _tokens(tiny_local, tmp_path / "latin1.jsonl")
    monkeypatch.setattr("core.dataset_files.MAX_RECORD_CHARS", 1000)
    (tmp_path / "long.jsonl").write_text(json.dumps({"text": "the cat " * 500}) + "\n")
    with pytest.raises(SourceError, match="line 1 is longer than 1,000 characters"):
        _tokens(tiny_local, tmp_path / "long.jsonl")


def test_json_array_is_read_item_by_item(tiny_local, tmp_path, monkeypatch):
    """Items after the budget are never parsed (here: they are not even valid JSON)."""
    monkeypatch.setattr("core.dataset_files.CHUNK_CHARS", 64)
    docs = [{"text": "the cat sat on a mat " * 3, "n": 12345678}] * 50
    body = json.dumps(docs)[:-1] + ", {broken"
    (tmp_path / "a.json").write_text(body)
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    assert torch.equal(
        _tokens(tiny_local, tmp_path / "a.json"), _tokens(tiny_local, tmp_path / "a.jsonl")
    )
    with pytest.raises(SourceError, match="item 51 is not valid JSON"):
        _tokens(tiny_local, tmp_path / "a.json", n_tokens=100_000)


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        (["1", "2", "3", "4", "5", "6", "7", "8"], "holds '1' \\(str\\)"),
        ([1.7, 2, 3, 4, 5, 6, 7, 8], "holds 1.7 \\(float\\)"),
        ([True, False, 1, 2, 3, 4, 5, 6], "holds True \\(bool\\)"),
        ([[1, 2], [3, 4], 5, 6, 7, 8, 9, 10], "holds \\[1, 2\\] \\(list\\)"),
        ("1 2 3 4 5 6 7 8", "holds '1 2 3 4 5 6 7 8' \\(str\\), not a list"),
        ([0, 1, 2, 3, 4, 5, 6, 999], "holds token id 999, outside the model's vocabulary"),
    ],
)
def test_token_id_columns_are_validated(tiny_local, tmp_path, bad, shown):
    rows = [{"input_ids": [0, 1, 2, 3, 4, 5, 6, 7]}, {"input_ids": bad}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(SourceError, match=f"row 1 of column 'input_ids' {shown}"):
        _tokens(tiny_local, tmp_path / "t.jsonl", n_tokens=16)


def test_prefix_and_suffix_around_every_document(tiny_local, tmp_path):
    """Both strings appear in the token rows around each document, in the token set's
    identity and its fingerprint (so in the memo key); pre-tokenised data refuses them."""
    from core.engine.keys import token_fingerprint

    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "cat sat"}\n{"text": "dog ran far"}\n{"text": "mat"}\n')
    spec = DatasetSpec(kind="local", path=str(path), n_tokens=16, context_length=4)
    plain, plain_id = load_tokens(spec, tiny_local)
    dressed_spec = DatasetSpec(**{**spec.to_dict(), "prefix": "the", "suffix": "back home"})
    dressed, dressed_id = load_tokens(dressed_spec, tiny_local)
    ids = tiny_local.tokenizer.get_vocab()
    # independent reference: documents wrapped, joined by BOS, rows of 3 after a leading BOS
    words = [
        "the",
        "cat",
        "sat",
        "back",
        "home",
        "|",
        "the",
        "dog",
        "ran",
        "far",
        "back",
        "home",
        "|",
        "the",
        "mat",
        "back",
        "home",
        "|",
    ]
    stream = [0 if w == "|" else ids[w] for w in words]
    want = [[0, *stream[i : i + 3]] for i in range(0, 12, 3)]
    assert dressed.tolist() == want
    assert plain[0].tolist() == [0, ids["cat"], ids["sat"], 0]
    assert "prefix" not in plain_id and "prefix" not in spec.to_dict()
    assert dressed_id["prefix"] == "the" and dressed_id["suffix"] == "back home"
    assert dressed_spec.key() != spec.key()
    assert token_fingerprint(dressed) != token_fingerprint(plain)
    assert DatasetSpec.from_dict(dressed_spec.to_dict()) == dressed_spec
    tokenised = tmp_path / "ids.jsonl"
    tokenised.write_text('{"input_ids": [1, 2, 3, 4, 5]}\n')
    with pytest.raises(SourceError, match="already tokenised.*prefix or suffix"):
        load_tokens(
            DatasetSpec(
                kind="local", path=str(tokenised), n_tokens=8, context_length=4, prefix="the"
            ),
            tiny_local,
        )
    with pytest.raises(SourceError, match="prefix must be text"):
        load_tokens(DatasetSpec(kind="local", path=str(path), prefix=3), tiny_local)

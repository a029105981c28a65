"""CLT adapter: both on-disk layouts, encoding against plain-torch references, bad inputs.

Every CLT directory is built here with random weights; the expected activations are
computed with plain torch ops straight from the tensors that were written, not through
the adapter's code path.
"""

from __future__ import annotations

import fnmatch
import json
import math
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import core.dictionaries.clt.hub as clt_hub
from core.config import RunConfig
from core.dictionaries import REGISTRY, DictionaryError
from core.dictionaries.clt import CLTDictionary, load_clt
from core.engine.sweep import run_sweep
from core.models import ModelAdapter
from tests.tiny import make_model, random_tokens
from tests.tolerance import sum_tolerance, switch_margin

N_LAYERS, N_FEAT, D_MODEL = 3, 24, 32


# ---- builders ---------------------------------------------------------------------------------
def reference_tensors(
    n_layers: int = N_LAYERS,
    n_feat: int = N_FEAT,
    d_model: int = D_MODEL,
    seed: int = 0,
    with_theta: bool = True,
) -> dict[str, torch.Tensor]:
    """Random weights in the reference layout."""
    g = torch.Generator().manual_seed(seed)
    t: dict[str, torch.Tensor] = {}
    for i in range(n_layers):
        t[f"encoder_module.encoders.{i}.weight"] = torch.randn(n_feat, d_model, generator=g) / 4
        t[f"encoder_module.encoders.{i}.bias_param"] = torch.randn(n_feat, generator=g) * 0.3
        for j in range(i, n_layers):
            scale = 1.0 + 0.5 * (j - i)  # distinct norms per target layer
            t[f"decoder_module.decoders.{i}->{j}.weight"] = (
                torch.randn(d_model, n_feat, generator=g) * scale
            )
            t[f"decoder_module.decoders.{i}->{j}.bias_param"] = torch.randn(d_model, generator=g)
    if with_theta:
        t["theta_manager.log_threshold"] = torch.log(
            torch.rand(n_layers, n_feat, generator=g) * 0.8 + 0.1
        )
    return t


def norm_stats(n_layers: int = N_LAYERS, d_model: int = D_MODEL, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        str(i): {
            "inputs": {
                "mean": (torch.randn(d_model, generator=g) * 0.2).tolist(),
                "std": (torch.rand(d_model, generator=g) + 0.5).tolist(),
            },
            "targets": {"mean": [0.0] * d_model, "std": [1.0] * d_model},
        }
        for i in range(n_layers)
    }


def base_cfg(activation: str = "jumprelu", norm: str = "mean_std", **extra) -> dict:
    cfg = {
        "num_features": N_FEAT,
        "num_layers": N_LAYERS,
        "d_model": D_MODEL,
        "activation_fn": activation,
        "normalization_method": norm,
        "tl_input_template": "blocks.{}.ln2.hook_normalized",
        "jumprelu_threshold": 0.03,
        "model_name": "tiny-random",
        "context_size": 16,
        "prepend_bos": True,
    }
    cfg.update(extra)
    return cfg


def write_reference(
    root: Path,
    tensors: dict[str, torch.Tensor],
    cfg: dict | None,
    stats: dict | None = None,
    weights_name: str = "clt_weights.safetensors",
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if cfg is not None:
        (root / "cfg.json").write_text(json.dumps(cfg))
    if stats is not None:
        (root / "norm_stats.json").write_text(json.dumps(stats))
    if weights_name.endswith(".safetensors"):
        save_file(tensors, str(root / weights_name))
    else:
        torch.save(tensors, root / weights_name)
    return root


def circuit_tracer_tensors(
    n_layers: int = N_LAYERS,
    n_feat: int = N_FEAT,
    d_model: int = D_MODEL,
    seed: int = 2,
    threshold: bool = True,
    transposed: bool = False,
) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    enc: dict[int, dict[str, torch.Tensor]] = {}
    dec: dict[int, dict[str, torch.Tensor]] = {}
    for i in range(n_layers):
        w = torch.randn(n_feat, d_model, generator=g) / 4
        enc[i] = {
            f"W_enc_{i}": w.T.contiguous() if transposed else w,
            f"b_enc_{i}": torch.randn(n_feat, generator=g) * 0.3,
            f"b_dec_{i}": torch.randn(d_model, generator=g),
        }
        if threshold:
            enc[i][f"threshold_{i}"] = torch.rand(n_feat, generator=g) * 0.5
        dec[i] = {f"W_dec_{i}": torch.randn(n_feat, n_layers - i, d_model, generator=g)}
    return enc, dec


def write_circuit_tracer(root: Path, enc: dict, dec: dict, config_yaml: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in enc:
        save_file(enc[i], str(root / f"W_enc_{i}.safetensors"))
        save_file(dec[i], str(root / f"W_dec_{i}.safetensors"))
    if config_yaml is not None:
        (root / "config.yaml").write_text(config_yaml)
    return root


# ---- plain-torch references -------------------------------------------------------------------
def ref_pre(x, w, b, mean=None, std=None, sqrt_d=False):
    if mean is not None:
        x = (x - mean) / (std + 1e-6)
    if sqrt_d:
        x = x * (x.shape[-1] ** 0.5)
    return torch.einsum("nd,fd->nf", x.double(), w.double()) + b.double()


def ref_jumprelu(pre, thr):
    return torch.where(pre > thr.double(), pre, torch.zeros_like(pre))


def ref_pre_tol(x, w, b, mean=None, std=None, sqrt_d=False):
    """Rounding bound of a float32 encode against :func:`ref_pre` (float64): the sum of the
    terms' magnitudes times gamma(d + 4) (the products, the bias, and the normalisation's
    subtraction, division and scaling of each input)."""
    if mean is not None:
        x = (x - mean) / (std + 1e-6)
    if sqrt_d:
        x = x * (x.shape[-1] ** 0.5)
    abs_sum = torch.einsum("nd,fd->nf", x.double().abs(), w.double().abs()) + b.double().abs()
    return torch.from_numpy(sum_tolerance(abs_sum.numpy(), x.shape[-1] + 4, computations=1))


def check_encode(got, want, pre, tol, thr=None, k=None):
    """``got`` (float32) is the float64 reference up to rounding, except entries within rounding
    of switching on or off (at 0, at the threshold, or at the k-th largest pre-activation)."""
    unsure = switch_margin(pre, thr, k) <= tol
    assert unsure.double().mean() < 0.01
    diff = (got.double() - want).abs()
    assert (diff[~unsure] <= tol[~unsure]).all(), float((diff - tol).max())


def ref_topk(pre, k):
    out = torch.zeros_like(pre)
    for r in range(pre.shape[0]):
        order = sorted(range(pre.shape[1]), key=lambda j: -float(pre[r, j]))[:k]
        for j in order:
            out[r, j] = max(float(pre[r, j]), 0.0)
    return out


def inputs(n: int = 64, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, D_MODEL, generator=torch.Generator().manual_seed(seed))


def stats_tensors(stats: dict, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = stats[str(layer)]["inputs"]
    return torch.tensor(s["mean"]), torch.tensor(s["std"])


# ---- reference layout ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jumprelu_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clt_jumprelu")
    tensors, stats = reference_tensors(), norm_stats()
    write_reference(root, tensors, base_cfg(), stats)
    return root, tensors, stats


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_jumprelu_mean_std_encoding_matches_reference(jumprelu_dir, layer):
    root, t, stats = jumprelu_dir
    clt = load_clt(root, layer)
    assert clt.activation_fn == "jumprelu" and clt.normalization == "mean_std"
    assert clt.encode_is_separable
    x = inputs()
    mean, std = stats_tensors(stats, layer)
    pre = ref_pre(
        x,
        t[f"encoder_module.encoders.{layer}.weight"],
        t[f"encoder_module.encoders.{layer}.bias_param"],
        mean,
        std,
    )
    thr = t["theta_manager.log_threshold"][layer].exp()
    want = ref_jumprelu(pre, thr)
    tol = ref_pre_tol(
        x,
        t[f"encoder_module.encoders.{layer}.weight"],
        t[f"encoder_module.encoders.{layer}.bias_param"],
        mean,
        std,
    )
    got = clt.encode(x)
    assert got.shape == (64, N_FEAT)
    assert (got >= 0).all()
    assert 0 < (want > 0).double().mean() < 1  # the check is not vacuous
    check_encode(got, want, pre, tol, thr=thr)
    # subset == full sliced, in any order, with repeats
    feats = torch.tensor([5, 0, 23, 5, 11])
    sub = clt.encode(x, feats)  # two float32 encodes: twice the bound
    check_encode(sub, got[:, feats].double(), pre[:, feats], 2 * tol[:, feats], thr=thr[feats])


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_decoder_directions_and_downstream_norms(jumprelu_dir, layer):
    root, t, _ = jumprelu_dir
    clt = load_clt(root, layer)
    w_ll = t[f"decoder_module.decoders.{layer}->{layer}.weight"]
    assert clt.d_out == D_MODEL and clt.d_in == D_MODEL and clt.n_features == N_FEAT
    torch.testing.assert_close(clt.decoder_directions(), w_ll.T)
    feats = torch.tensor([3, 7, 0])
    torch.testing.assert_close(clt.decoder_directions(feats), w_ll.T[feats])

    extras = clt.feature_extras(feats)
    assert set(extras) == {"decoder_layers", "decoder_norms_by_layer"}
    assert extras["decoder_layers"] == [list(range(layer, N_LAYERS))] * 3
    json.dumps(extras)  # JSON-able
    for row, f in zip(extras["decoder_norms_by_layer"], feats.tolist(), strict=True):
        want = [
            float(torch.linalg.vector_norm(t[f"decoder_module.decoders.{layer}->{j}.weight"][:, f]))
            for j in range(layer, N_LAYERS)
        ]
        assert row == pytest.approx(want, rel=1e-5)


def test_hooks_identity_and_registry(jumprelu_dir, tmp_path):
    root, t, stats = jumprelu_dir
    assert REGISTRY["clt"] is CLTDictionary
    clt = load_clt(str(root), 2)
    assert clt.hook_in == "blocks.2.ln2.hook_normalized"
    assert clt.hook_out == "blocks.2.hook_mlp_out"
    ident = clt.identity()
    assert (
        ident["role"] == ident["adapter"] == clt.family == "clt"
        and ident["layer"] == 2
        and ident["num_layers"] == N_LAYERS
    )
    assert ident["activation_fn"] == "jumprelu" and ident["path"] == str(root)
    assert ident["format"] == "reference" and ident["weights_file"] == "clt_weights.safetensors"
    assert ident["model_name"] == "tiny-random"
    json.dumps(ident)

    cfg = base_cfg(tl_output_template="blocks.{}.hook_resid_post")
    other = write_reference(tmp_path / "c", t, cfg, stats)
    assert load_clt(other, 1).hook_out == "blocks.1.hook_resid_post"
    # the fingerprint follows the tensors: same weights -> same digest, other layer -> other
    assert load_clt(other, 1).fingerprint() == load_clt(root, 1).fingerprint()
    assert load_clt(root, 0).fingerprint() != load_clt(root, 1).fingerprint()


def test_relu_pt_checkpoint_no_normalisation(tmp_path):
    t = reference_tensors(with_theta=False)
    root = write_reference(tmp_path, t, base_cfg("relu", "none"), weights_name="clt.pt")
    clt = load_clt(root, 1)
    x = inputs()
    w, b = t["encoder_module.encoders.1.weight"], t["encoder_module.encoders.1.bias_param"]
    pre = ref_pre(x, w, b)
    check_encode(clt.encode(x), pre.clamp_min(0), pre, ref_pre_tol(x, w, b))
    assert clt.identity()["weights_file"] == "clt.pt"


def test_sqrt_d_model_and_legacy_auto(tmp_path):
    t, stats = reference_tensors(), norm_stats()
    x = inputs()
    w, b = t["encoder_module.encoders.0.weight"], t["encoder_module.encoders.0.bias_param"]
    thr = t["theta_manager.log_threshold"][0].exp()

    clt = load_clt(write_reference(tmp_path / "s", t, base_cfg(norm="sqrt_d_model")), 0)
    pre = ref_pre(x, w, b, sqrt_d=True)
    tol = ref_pre_tol(x, w, b, sqrt_d=True)
    check_encode(clt.encode(x), ref_jumprelu(pre, thr), pre, tol, thr=thr)

    for legacy in ("auto", "estimated_mean_std"):
        clt = load_clt(write_reference(tmp_path / legacy, t, base_cfg(norm=legacy), stats), 0)
        assert clt.normalization == "mean_std"
        mean, std = stats_tensors(stats, 0)
        pre = ref_pre(x, w, b, mean, std)
        tol = ref_pre_tol(x, w, b, mean, std)
        check_encode(clt.encode(x), ref_jumprelu(pre, thr), pre, tol, thr=thr)


def test_scalar_threshold_from_cfg(tmp_path):
    t = reference_tensors(with_theta=False)
    cfg = base_cfg(norm="none", jumprelu_threshold=0.4)
    clt = load_clt(write_reference(tmp_path, t, cfg), 0)
    x = inputs()
    w, b = t["encoder_module.encoders.0.weight"], t["encoder_module.encoders.0.bias_param"]
    pre = ref_pre(x, w, b)
    thr = torch.tensor(0.4)
    check_encode(clt.encode(x), ref_jumprelu(pre, thr), pre, ref_pre_tol(x, w, b), thr=thr)


@pytest.mark.parametrize(("act", "key"), [("topk", "topk_k"), ("batchtopk", "batchtopk_k")])
def test_topk_and_batchtopk_per_token(tmp_path, act, key):
    t = reference_tensors(with_theta=False)
    clt = load_clt(write_reference(tmp_path, t, base_cfg(act, "none", **{key: 5})), 1)
    assert not clt.encode_is_separable
    x = inputs(16)
    w, b = t["encoder_module.encoders.1.weight"], t["encoder_module.encoders.1.bias_param"]
    pre = ref_pre(x, w, b)
    tol = ref_pre_tol(x, w, b)
    want = ref_topk(pre, 5)
    got = clt.encode(x)
    check_encode(got, want, pre, tol, k=5)
    assert ((got > 0).sum(1) <= 5).all()
    feats = torch.tensor([2, 9, 17])
    sub = clt.encode(x, feats)  # selected from the full encode: the same float32 values
    torch.testing.assert_close(sub, got[:, feats], rtol=0, atol=0)
    # a fractional k is a share of the features
    clt2 = load_clt(write_reference(tmp_path / "f", t, base_cfg(act, "none", **{key: 0.25})), 1)
    assert clt2.k_abs == 6


def test_weights_file_choice(tmp_path):
    t_a, t_b = reference_tensors(seed=10), reference_tensors(seed=11)
    root = write_reference(tmp_path, t_a, base_cfg(norm="none"), weights_name="a.safetensors")
    save_file(t_b, str(root / "b.safetensors"))
    w_b = t_b["encoder_module.encoders.0.weight"]
    assert torch.equal(load_clt(root, 0, weights_file="b.safetensors").W_enc, w_b)
    assert torch.equal(load_clt(root, 0).W_enc, t_a["encoder_module.encoders.0.weight"])


def test_dtype_and_device_arguments(jumprelu_dir):
    root, _, _ = jumprelu_dir
    clt = load_clt(root, 0, dtype=torch.bfloat16)
    assert clt.W_enc.dtype == torch.bfloat16 and clt.device == torch.device("cpu")
    x = inputs().to(torch.bfloat16)
    got = clt.encode(x)
    assert got.dtype == torch.bfloat16
    ref = load_clt(root, 0).encode(x.float())
    same = (got > 0) == (ref > 0)  # bfloat16 may flip a pre-activation across the threshold
    assert same.double().mean() > 0.95
    assert (got.float() - ref)[same].abs().max() < 0.1
    clt.to("cpu", torch.float32)
    assert clt.W_dec.dtype == torch.float32


# ---- circuit-tracer layout -----------------------------------------------------------------------
@pytest.mark.parametrize("transposed", [False, True])
def test_circuit_tracer_layout(tmp_path, transposed):
    enc, dec = circuit_tracer_tensors(transposed=transposed)
    root = write_circuit_tracer(tmp_path, enc, dec)
    x = inputs()
    for layer in range(N_LAYERS):
        clt = load_clt(root, layer)
        assert clt.num_layers == N_LAYERS and clt.activation_fn == "jumprelu"
        assert clt.hook_in == f"blocks.{layer}.ln2.hook_normalized"
        assert clt.hook_out == f"blocks.{layer}.hook_mlp_out"
        assert clt.identity()["format"] == "circuit_tracer"
        w = enc[layer][f"W_enc_{layer}"]
        w = w.T if transposed else w
        pre = ref_pre(x, w, enc[layer][f"b_enc_{layer}"])
        thr = enc[layer][f"threshold_{layer}"]
        tol = ref_pre_tol(x, w, enc[layer][f"b_enc_{layer}"])
        check_encode(clt.encode(x), ref_jumprelu(pre, thr), pre, tol, thr=thr)
        w_dec = dec[layer][f"W_dec_{layer}"]
        torch.testing.assert_close(clt.decoder_directions(), w_dec[:, 0, :])
        feats = torch.tensor([1, 4])
        got = clt.feature_extras(feats)["decoder_norms_by_layer"]
        want_norms = [
            [float(torch.linalg.vector_norm(w_dec[f, j])) for j in range(N_LAYERS - layer)]
            for f in feats.tolist()
        ]
        for g_row, w_row in zip(got, want_norms, strict=True):
            assert g_row == pytest.approx(w_row, rel=1e-5)


def test_circuit_tracer_relu_with_config_yaml(tmp_path):
    enc, dec = circuit_tracer_tensors(threshold=False)
    yaml_text = (
        'model_name: "tiny"\nfeature_input_hook: "hook_resid_mid"\n'
        'feature_output_hook: "hook_mlp_out"\n'
    )
    root = write_circuit_tracer(tmp_path, enc, dec, yaml_text)
    clt = load_clt(root, 1)
    assert clt.activation_fn == "relu"
    assert clt.hook_in == "blocks.1.hook_resid_mid" and clt.hook_out == "blocks.1.hook_mlp_out"
    assert clt.identity()["model_name"] == "tiny"
    x = inputs()
    pre = ref_pre(x, enc[1]["W_enc_1"], enc[1]["b_enc_1"])
    tol = ref_pre_tol(x, enc[1]["W_enc_1"], enc[1]["b_enc_1"])
    check_encode(clt.encode(x), pre.clamp_min(0), pre, tol)


# ---- Hugging Face repo ids --------------------------------------------------------------------
def fake_hub(monkeypatch, tmp_path: Path, repos: dict[str, Path]) -> list[list[str]]:
    """Stand-in for ``snapshot_download`` copying only the allowed files of a local repo."""
    calls: list[list[str]] = []

    def snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append(list(allow_patterns or []))
        src = repos[repo_id]
        dst = tmp_path / "hub_cache" / repo_id.replace("/", "--")
        for f in src.rglob("*"):
            rel = f.relative_to(src).as_posix()
            if f.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns or ["*"]):
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dst / rel)
        dst.mkdir(parents=True, exist_ok=True)
        return str(dst)

    monkeypatch.setattr(clt_hub, "snapshot_download", snapshot_download)
    return calls


def test_hub_repo_id_reference_layout(monkeypatch, tmp_path, jumprelu_dir):
    root, t, _ = jumprelu_dir
    repo = tmp_path / "remote"
    shutil.copytree(root, repo / "layer_sub")
    calls = fake_hub(monkeypatch, tmp_path, {"org/clt-test": repo})
    clt = load_clt("org/clt-test/layer_sub", 1)
    assert clt.identity()["repo"] == "org/clt-test/layer_sub"
    assert torch.equal(clt.W_enc, t["encoder_module.encoders.1.weight"])
    assert all(p.startswith("layer_sub/") for c in calls for p in c)
    x = inputs()
    torch.testing.assert_close(clt.encode(x), load_clt(root, 1).encode(x))


def test_hub_repo_id_circuit_tracer_fetches_one_layer(monkeypatch, tmp_path):
    enc, dec = circuit_tracer_tensors()
    repo = write_circuit_tracer(tmp_path / "remote", enc, dec)
    fake_hub(monkeypatch, tmp_path, {"org/ct": repo})
    clt = load_clt("org/ct", 2)
    assert clt.num_layers == N_LAYERS  # inferred from W_dec_2 alone
    cached = {p.name for p in (tmp_path / "hub_cache" / "org--ct").iterdir()}
    assert cached == {"W_enc_2.safetensors", "W_dec_2.safetensors"}
    torch.testing.assert_close(clt.decoder_directions(), dec[2]["W_dec_2"][:, 0, :])


def test_hub_failure_is_a_dictionary_error(monkeypatch):
    def boom(repo_id, **kw):
        raise OSError("offline")

    monkeypatch.setattr(clt_hub, "snapshot_download", boom)
    with pytest.raises(DictionaryError, match="could not be fetched.*offline"):
        load_clt("org/not-here", 0)


# ---- bad inputs -------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(DictionaryError, match="does not exist"):
        load_clt(tmp_path / "nope", 0)
    with pytest.raises(DictionaryError, match="does not exist"):
        load_clt("./relative/nope", 0)


def test_missing_cfg_json(tmp_path):
    save_file(reference_tensors(), str(tmp_path / "w.safetensors"))
    with pytest.raises(DictionaryError, match="no cfg.json"):
        load_clt(tmp_path, 0)


def test_cfg_missing_size(tmp_path):
    cfg = base_cfg()
    del cfg["d_model"]
    write_reference(tmp_path, reference_tensors(), cfg, norm_stats())
    with pytest.raises(DictionaryError, match="lacks 'd_model'"):
        load_clt(tmp_path, 0)


@pytest.mark.parametrize("layer", [-1, N_LAYERS, 17])
def test_layer_out_of_range(jumprelu_dir, tmp_path, layer):
    root, _, _ = jumprelu_dir
    with pytest.raises(DictionaryError, match=f"layer {layer} is out of range.*{N_LAYERS} layers"):
        load_clt(root, layer)
    enc, dec = circuit_tracer_tensors()
    ct = write_circuit_tracer(tmp_path / "ct", enc, dec)
    with pytest.raises(DictionaryError, match=f"layer {layer} is out of range"):
        load_clt(ct, layer)


def test_wrong_shapes(tmp_path):
    t = reference_tensors()
    t["encoder_module.encoders.1.weight"] = torch.randn(N_FEAT, D_MODEL + 1)
    write_reference(tmp_path / "a", t, base_cfg(), norm_stats())
    with pytest.raises(
        DictionaryError,
        match=r"'encoder_module.encoders.1.weight'.*\[24, 33\], expected \[24, 32\]",
    ):
        load_clt(tmp_path / "a", 1)

    t = reference_tensors()
    t["decoder_module.decoders.0->2.weight"] = torch.randn(D_MODEL, N_FEAT - 1)
    write_reference(tmp_path / "b", t, base_cfg(), norm_stats())
    with pytest.raises(DictionaryError, match=r"decoders.0->2.weight.*expected \[32, 24\]"):
        load_clt(tmp_path / "b", 0)
    load_clt(tmp_path / "b", 1)  # layer 1 does not need that tensor

    t = reference_tensors()
    t["theta_manager.log_threshold"] = torch.zeros(N_LAYERS, N_FEAT + 2)
    write_reference(tmp_path / "c", t, base_cfg(), norm_stats())
    with pytest.raises(DictionaryError, match="log_threshold.*expected"):
        load_clt(tmp_path / "c", 0)

    enc, dec = circuit_tracer_tensors()
    enc[1]["W_enc_1"] = torch.randn(N_FEAT + 1, D_MODEL)
    dec[2]["W_dec_2"] = torch.randn(N_FEAT, 2, D_MODEL)
    ct = write_circuit_tracer(tmp_path / "ct", enc, dec)
    with pytest.raises(DictionaryError, match=r"'W_enc_1'.*expected \[24, 32\]"):
        load_clt(ct, 1)
    (ct / "config.yaml").write_text("n_layers: 3\n")
    with pytest.raises(DictionaryError, match=r"'W_dec_2'.*expected \[24, 1, 32\]"):
        load_clt(ct, 2)


def test_missing_tensors(tmp_path):
    t = reference_tensors()
    del t["decoder_module.decoders.1->2.weight"]
    write_reference(tmp_path, t, base_cfg(), norm_stats())
    with pytest.raises(DictionaryError, match=r"lacks 1 tensor.*decoders.1->2.weight"):
        load_clt(tmp_path, 1)
    load_clt(tmp_path, 2)  # other layers still load

    enc, dec = circuit_tracer_tensors()
    del enc[0]["b_enc_0"]
    ct = write_circuit_tracer(tmp_path / "ct", enc, dec)
    with pytest.raises(DictionaryError, match="b_enc_0"):
        load_clt(ct, 0)
    (ct / "W_dec_1.safetensors").unlink()
    with pytest.raises(DictionaryError, match="W_dec_1.safetensors is missing"):
        load_clt(ct, 1)


def test_jumprelu_without_any_threshold(tmp_path):
    cfg = base_cfg(norm="none")
    del cfg["jumprelu_threshold"]
    write_reference(tmp_path, reference_tensors(with_theta=False), cfg)
    with pytest.raises(DictionaryError, match="without thresholds"):
        load_clt(tmp_path, 0)


def test_unknown_activation_and_normalization(tmp_path):
    write_reference(tmp_path / "a", reference_tensors(), base_cfg("gelu"), norm_stats())
    with pytest.raises(DictionaryError, match="unknown activation_fn 'gelu'"):
        load_clt(tmp_path / "a", 0)
    write_reference(tmp_path / "b", reference_tensors(), base_cfg(norm="zscore"), norm_stats())
    with pytest.raises(DictionaryError, match="unknown normalization_method 'zscore'"):
        load_clt(tmp_path / "b", 0)
    write_reference(tmp_path / "c", reference_tensors(), base_cfg("topk", "none"))
    with pytest.raises(DictionaryError, match="needs 'topk_k'"):
        load_clt(tmp_path / "c", 0)


def test_norm_stats_missing_or_incomplete(tmp_path):
    write_reference(tmp_path / "a", reference_tensors(), base_cfg())
    with pytest.raises(DictionaryError, match="no norm_stats.json"):
        load_clt(tmp_path / "a", 0)

    stats = norm_stats()
    del stats["2"]
    write_reference(tmp_path / "b", reference_tensors(), base_cfg(), stats)
    load_clt(tmp_path / "b", 1)
    with pytest.raises(DictionaryError, match="norm_stats.json has no entry for layer 2"):
        load_clt(tmp_path / "b", 2)

    stats = norm_stats()
    stats["0"]["inputs"]["std"] = [1.0] * (D_MODEL - 1)
    write_reference(tmp_path / "c", reference_tensors(), base_cfg(), stats)
    with pytest.raises(DictionaryError, match=r"inputs.std has \[31\] values, expected \[32\]"):
        load_clt(tmp_path / "c", 0)


def test_truncated_and_corrupt_safetensors(tmp_path):
    root = write_reference(tmp_path / "a", reference_tensors(), base_cfg(), norm_stats())
    path = root / "clt_weights.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DictionaryError, match="truncated or corrupt"):
        load_clt(root, 0)
    path.write_bytes(b"\x00\x01not a safetensors file at all")
    with pytest.raises(DictionaryError, match="truncated or corrupt"):
        load_clt(root, 0)

    enc, dec = circuit_tracer_tensors()
    ct = write_circuit_tracer(tmp_path / "ct", enc, dec)
    raw = (ct / "W_dec_1.safetensors").read_bytes()
    (ct / "W_dec_1.safetensors").write_bytes(raw[:-100])
    with pytest.raises(DictionaryError, match="truncated or corrupt"):
        load_clt(ct, 1)


class _Payload:
    """Unpickling this would create ``marker`` (it must never happen)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_object_in_pt_is_refused(tmp_path):
    marker = tmp_path / "payload_ran"
    tensors = reference_tensors()
    obj = dict(tensors)
    obj["extra"] = _Payload(marker)
    root = tmp_path / "clt"
    root.mkdir()
    (root / "cfg.json").write_text(json.dumps(base_cfg()))
    (root / "norm_stats.json").write_text(json.dumps(norm_stats()))
    torch.save(obj, root / "clt.pt")
    with pytest.raises(DictionaryError, match=r"refused to load 'clt.pt'.*weights_only=True"):
        load_clt(root, 0)
    assert not marker.exists()

    torch.save([1, 2, 3], root / "clt.pt")  # loadable, but not a state dict
    with pytest.raises(DictionaryError, match="state dict of named tensors"):
        load_clt(root, 0)


def test_bad_template(tmp_path):
    cfg = base_cfg(tl_input_template="blocks.3.ln2.hook_normalized")
    write_reference(tmp_path, reference_tensors(), cfg, norm_stats())
    with pytest.raises(DictionaryError, match="no '\\{\\}' placeholder"):
        load_clt(tmp_path, 0)


# ---- end to end with the engine ----------------------------------------------------------------
def test_engine_end_to_end(tmp_path):
    model = make_model(n_layers=N_LAYERS, d_model=D_MODEL)
    tensors, stats = reference_tensors(seed=3), norm_stats(seed=4)
    root = write_reference(tmp_path, tensors, base_cfg(), stats)
    clt = load_clt(root, 1)
    tokens = random_tokens(12, 10, seed=7)
    adapter = ModelAdapter(model, bos_token_id=0)
    res = run_sweep(adapter, clt, tokens, RunConfig(features=[0, 1, 2], device="cpu"))

    _, cache = model.run_with_cache(tokens, names_filter=clt.hook_in)
    acts = cache[clt.hook_in]
    assert res.info.dictionary["role"] == "clt" and res.info.dictionary["layer"] == 1
    n_checked = 0
    for f in (0, 1, 2):
        fd = res.features[f]
        want_norms = [
            float(torch.linalg.vector_norm(tensors[f"decoder_module.decoders.1->{j}.weight"][:, f]))
            for j in range(1, N_LAYERS)
        ]
        assert fd.extras["decoder_layers"] == [1, 2]
        assert fd.extras["decoder_norms_by_layer"] == pytest.approx(want_norms, rel=1e-5)
        assert fd.decoder_norm == pytest.approx(want_norms[0], rel=1e-5)
        mean, std = stats_tensors(stats, 1)
        w = tensors["encoder_module.encoders.1.weight"][f : f + 1]
        b = tensors["encoder_module.encoders.1.bias_param"][f : f + 1]
        for ex in fd.top_examples:
            x = acts[ex.seq, ex.pos][None]
            want = float(clt.encode(x, torch.tensor([f]))[0, 0])
            tol = 2 * float(ref_pre_tol(x, w, b, mean, std))  # two float32 encodes
            assert ex.value == pytest.approx(want, abs=tol)
            n_checked += 1
    assert n_checked > 0


# ---- hardening: hook templates, declared sizes, non-finite weights ----------------------------
@pytest.mark.parametrize(
    "template",
    ["blocks.{}.hook_resid_pre; import os", "{0.__class__}", "{}{}{}", "blocks.{0}.hook_x"],
)
def test_hook_templates_are_checked_before_filling(tmp_path, template):
    write_reference(
        tmp_path, reference_tensors(), base_cfg(tl_input_template=template), norm_stats()
    )
    with pytest.raises(DictionaryError, match="is not a hook name template"):
        load_clt(tmp_path, 0)
    enc, dec = circuit_tracer_tensors()
    ct = write_circuit_tracer(
        tmp_path / "ct", enc, dec, config_yaml=f"feature_output_hook: {json.dumps(template)}\n"
    )
    with pytest.raises(DictionaryError, match="feature_output_hook=.*not a hook name template"):
        load_clt(ct, 0)


def test_filled_template_must_be_a_hook_name(tmp_path):
    cfg = base_cfg(tl_output_template="blocks.{}.mlp_out")  # no hook_ point
    write_reference(tmp_path, reference_tensors(), cfg, norm_stats())
    with pytest.raises(DictionaryError, match="'blocks.1.mlp_out', not a TransformerLens hook"):
        load_clt(tmp_path, 1)


@pytest.mark.parametrize(
    ("num_layers", "words"),
    [(10**9, "declares 1,000,000,000 layers"), (500, "num_layers = 500 but .* 3 layer")],
)
def test_declared_layer_count_is_checked_before_allocating(tmp_path, num_layers, words):
    cfg = base_cfg(num_layers=num_layers)
    write_reference(tmp_path, reference_tensors(), cfg, norm_stats())
    with pytest.raises(DictionaryError, match=words):
        load_clt(tmp_path, 0)
    enc, dec = circuit_tracer_tensors()
    ct = write_circuit_tracer(tmp_path / "ct", enc, dec, config_yaml=f"n_layers: {num_layers}\n")
    with pytest.raises(DictionaryError, match="declares|expected"):
        load_clt(ct, 0)


def _sparse_safetensors(path: Path, tensors: dict[str, list[int]]) -> None:
    """A safetensors file whose header declares ``tensors`` (float32) and whose data is a
    hole: as large as declared, but no disk is used."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)


def test_circuit_tracer_terabyte_tensor_is_refused(tmp_path):
    n_feat, d_model = 1 << 18, 1 << 20  # W_enc_0 declares 1 TiB
    _sparse_safetensors(
        tmp_path / "W_enc_0.safetensors",
        {"W_enc_0": [n_feat, d_model], "b_enc_0": [n_feat], "b_dec_0": [d_model]},
    )
    _sparse_safetensors(tmp_path / "W_dec_0.safetensors", {"W_dec_0": [n_feat, 1, d_model]})
    # refused when mapping the file (strict overcommit) or, at the latest, before reading
    with pytest.raises(DictionaryError, match=r"W_enc_0.*1,024.0 GiB"):
        load_clt(tmp_path, 0)


def test_declared_tensor_sizes_are_checked_against_memory(tmp_path, monkeypatch):
    n_feat, d_model = 1 << 14, 1 << 15  # W_enc_0 declares 2 GiB
    _sparse_safetensors(
        tmp_path / "W_enc_0.safetensors",
        {"W_enc_0": [n_feat, d_model], "b_enc_0": [n_feat], "b_dec_0": [d_model]},
    )
    _sparse_safetensors(tmp_path / "W_dec_0.safetensors", {"W_dec_0": [n_feat, 1, d_model]})
    monkeypatch.setattr("core.dictionaries.clt.files.memory_budget", lambda: 1 << 30)
    with pytest.raises(
        DictionaryError,
        match=r"tensor 'W_enc_0' \[16384, 32768\] in 'W_enc_0.safetensors' would take 2.0 GiB",
    ):
        load_clt(tmp_path, 0)


def test_non_finite_weights_are_refused(tmp_path):
    t = reference_tensors()
    t["encoder_module.encoders.0.weight"][3, :5] = float("nan")
    write_reference(tmp_path / "a", t, base_cfg(), norm_stats())
    with pytest.raises(DictionaryError, match="'W_enc' \\[24, 32\\] holds 5 NaN and 0 infinite"):
        load_clt(tmp_path / "a", 0)
    load_clt(tmp_path / "a", 1)  # another layer's encoder is fine
    t = reference_tensors()
    t["decoder_module.decoders.0->2.weight"][1, 2] = float("inf")
    write_reference(tmp_path / "b", t, base_cfg(), norm_stats())
    with pytest.raises(DictionaryError, match="'decoder_module.decoders.0->2.weight'.* 1 infinite"):
        load_clt(tmp_path / "b", 0)
    enc, dec = circuit_tracer_tensors()
    dec[1]["W_dec_1"][0, 1, 0] = float("nan")
    ct = write_circuit_tracer(tmp_path / "ct", enc, dec)
    with pytest.raises(DictionaryError, match=r"'W_dec_1\[:, 1\]'.* 1 NaN"):
        load_clt(ct, 1)


def test_deeply_nested_config_is_a_clear_error(tmp_path):
    write_reference(tmp_path, reference_tensors(), None, norm_stats())
    (tmp_path / "cfg.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(DictionaryError, match="nested too deeply"):
        load_clt(tmp_path, 0)

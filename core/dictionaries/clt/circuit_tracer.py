"""The circuit-tracer layout: one pair of safetensors files per layer.

Per layer ``i`` a ``W_enc_{i}.safetensors`` holding ``W_enc_{i}``
(``[d_transcoder, d_model]``, the transposed orientation is accepted too), ``b_enc_{i}``,
``b_dec_{i}`` and optionally ``threshold_{i}`` (JumpReLU), and a ``W_dec_{i}.safetensors``
holding ``W_dec_{i}`` ``[d_transcoder, n_layers - i, d_model]``. A small ``cfg.json`` or
``config.yaml`` is honoured when present; otherwise sizes come from the tensors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import yaml

from core.dictionaries.clt.files import (
    DEFAULT_INPUT_TEMPLATE,
    DEFAULT_OUTPUT_TEMPLATE,
    activation_name,
    cfg_int,
    check_fits,
    check_layer,
    fill_hook,
    layer_tensors,
    norm_stats,
    normalization_name,
    open_weights,
    read_config_text,
    read_json,
    require,
    topk_k,
)
from core.dictionaries.protocol import DictionaryError, check_finite

_CT_ENC = re.compile(r"^W_enc_(\d+)\.safetensors$")


def holds_circuit_tracer(root: Path) -> bool:
    """Whether ``root`` holds a ``W_enc_{i}.safetensors`` (the circuit-tracer layout)."""
    return any(_CT_ENC.match(p.name) for p in root.iterdir())


def _small_config(root: Path) -> dict[str, Any]:
    """``cfg.json`` or ``config.yaml`` of a circuit-tracer directory ({} when absent)."""
    if (root / "cfg.json").is_file():
        cfg = read_json(root / "cfg.json")
    elif (root / "config.yaml").is_file() or (root / "config.yml").is_file():
        path = root / "config.yaml" if (root / "config.yaml").is_file() else root / "config.yml"
        text = read_config_text(path)
        try:
            cfg = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError) as exc:
            raise DictionaryError(f"{path.name} is not valid YAML: {str(exc)[:300]}") from exc
    else:
        return {}
    if not isinstance(cfg, dict):
        raise DictionaryError("the CLT config file must hold a mapping of settings")
    return cfg


def load_circuit_tracer(root: Path, layer: int) -> dict[str, Any]:
    cfg = _small_config(root)
    where = "CLT config"
    n_layers_cfg = cfg_int(cfg, ("num_layers", "n_layers"), where)
    if n_layers_cfg is not None:
        check_layer(layer, n_layers_cfg)
    enc_path, dec_path = root / f"W_enc_{layer}.safetensors", root / f"W_dec_{layer}.safetensors"
    if layer < 0 or not enc_path.is_file():
        have = sorted(int(m.group(1)) for p in root.iterdir() if (m := _CT_ENC.match(p.name)))
        raise DictionaryError(
            f"layer {layer} is out of range: {str(root)!r} has W_enc_{{i}}.safetensors for "
            f"layers {have[:3]}...{have[-3:]} ({len(have)} files)"
            if len(have) > 6
            else f"layer {layer} is out of range: {str(root)!r} has W_enc_{{i}}.safetensors "
            f"for layers {have}"
        )
    if not dec_path.is_file():
        raise DictionaryError(
            f"{dec_path.name} is missing from {str(root)!r}: the layer's decoders are needed"
        )
    names = (f"W_enc_{layer}", f"b_enc_{layer}", f"b_dec_{layer}", f"threshold_{layer}")
    w_name, be_name, bd_name, th_name = names
    with open_weights(enc_path) as r:
        require(r, [w_name, be_name])
        be_shape = r.shape(be_name)
        if len(be_shape) != 1:
            raise DictionaryError(
                f"tensor {be_name!r} has shape {list(be_shape)}, expected [d_transcoder]"
            )
        n_feat = be_shape[0]
        d_model = cfg_int(cfg, ("d_model",), where)
        if d_model is None and bd_name in r:
            d_model = r.shape(bd_name)[0]
        if d_model is None:
            with open_weights(dec_path) as rd:
                if f"W_dec_{layer}" in rd:
                    d_model = rd.shape(f"W_dec_{layer}")[-1]
        if d_model is None:
            raise DictionaryError(f"cannot tell d_model: add 'd_model' to {where}")
        shape = r.shape(w_name)
        if shape == (n_feat, d_model):
            W_enc = r.get(w_name)
        elif shape == (d_model, n_feat):
            W_enc = r.get(w_name).T.contiguous()
        else:
            raise DictionaryError(
                f"tensor {w_name!r} has shape {list(shape)}, expected {[n_feat, d_model]} "
                f"(d_transcoder, d_model) or its transpose"
            )
        b_enc = r.get(be_name)
        b_dec = r.checked(bd_name, (d_model,)) if bd_name in r else None
        threshold = None
        if th_name in r:
            th_shape = r.shape(th_name)
            if th_shape not in ((n_feat,), (1, n_feat)):
                raise DictionaryError(
                    f"tensor {th_name!r} has shape {list(th_shape)}, expected [{n_feat}]"
                )
            threshold = r.get(th_name).reshape(n_feat)
    act_raw = cfg.get("activation_fn", cfg.get("activation_function"))
    act = (
        activation_name(act_raw, where)
        if act_raw
        else ("jumprelu" if threshold is not None else "relu")
    )
    if act == "jumprelu" and threshold is None:
        if cfg.get("jumprelu_threshold") is None:
            raise DictionaryError(
                f"JumpReLU CLT without thresholds: {enc_path.name} has no {th_name!r} and the "
                "config has no 'jumprelu_threshold'"
            )
        threshold = torch.full((n_feat,), float(cfg["jumprelu_threshold"]))
    k = topk_k(cfg, act, where)
    norm = normalization_name(cfg.get("normalization_method") or "none", where)
    mean = std = None
    if norm == "mean_std":
        mean, std = norm_stats(root, layer, d_model)

    d_name = f"W_dec_{layer}"
    with open_weights(dec_path) as r:
        require(r, [d_name])
        shape = r.shape(d_name)
        n_out = shape[1] if len(shape) == 3 else -1
        n_layers = n_layers_cfg if n_layers_cfg is not None else layer + n_out
        expected = (n_feat, n_layers - layer, d_model)
        if n_layers_cfg is None and n_out > 0:
            check_layer(layer, n_layers)
        if shape != expected:
            raise DictionaryError(
                f"tensor {d_name!r} has shape {list(shape)}, expected {list(expected)} "
                "(d_transcoder, n_layers - layer, d_model)"
            )
        check_fits(n_feat * (n_layers - layer), "the decoder norm table", repr(dec_path.name))
        norms = torch.empty(n_feat, n_layers - layer)
        W_dec = None
        for j in range(n_layers - layer):
            w = r.get(d_name, (slice(None), j, slice(None)))
            norms[:, j] = w.float().norm(dim=1)
            if not bool(torch.isfinite(norms[:, j]).all()):
                check_finite({f"{d_name}[:, {j}]": w}, repr(dec_path.name))
            if j == 0:
                W_dec = w.contiguous()
            del w
    assert W_dec is not None
    return {
        **layer_tensors(W_enc, b_enc, W_dec, b_dec, threshold),
        "layer": layer,
        "num_layers": n_layers,
        "decoder_norms": norms,
        "activation_fn": act,
        "k": k,
        "normalization": norm,
        "norm_mean": mean,
        "norm_std": std,
        "hook_in": fill_hook(
            cfg.get("tl_input_template", cfg.get("feature_input_hook")),
            layer,
            DEFAULT_INPUT_TEMPLATE,
            "feature_input_hook",
        ),
        "hook_out": fill_hook(
            cfg.get("tl_output_template", cfg.get("feature_output_hook")),
            layer,
            DEFAULT_OUTPUT_TEMPLATE,
            "feature_output_hook",
        ),
        "source": {
            "format": "circuit_tracer",
            "weights_file": enc_path.name,
            "model_name": cfg.get("model_name"),
        },
    }

"""The reference layout: a CLT written by the reference dashboard tool's CLT training code.

A directory with

- ``cfg.json``: ``num_features`` (per layer), ``num_layers``, ``d_model``,
  ``activation_fn`` (``jumprelu``, ``relu``, ``topk``, ``batchtopk``),
  ``normalization_method`` (``none``, ``mean_std``, ``sqrt_d_model``; legacy ``auto``
  and ``estimated_mean_std`` mean ``mean_std``), ``tl_input_template``, optional
  ``tl_output_template``, ``jumprelu_threshold``, ``topk_k``/``batchtopk_k``,
  ``model_name``, ``context_size``, ``prepend_bos``;
- one weights file, ``.safetensors`` (preferred) or ``.pt`` (read with
  ``torch.load(weights_only=True)`` only), holding
  ``encoder_module.encoders.{i}.weight`` ``[num_features, d_model]``,
  ``encoder_module.encoders.{i}.bias_param`` ``[num_features]``,
  ``decoder_module.decoders.{src}->{tgt}.weight`` ``[d_model, num_features]``,
  ``decoder_module.decoders.{src}->{tgt}.bias_param`` ``[d_model]`` and, for JumpReLU,
  ``theta_manager.log_threshold`` ``[num_layers, num_features]``;
- ``norm_stats.json`` when inputs were normalised with ``mean_std``:
  ``{"<layer>": {"inputs": {"mean": [d_model], "std": [d_model]}}}``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from core.dictionaries.clt.files import (
    DEFAULT_INPUT_TEMPLATE,
    DEFAULT_OUTPUT_TEMPLATE,
    Reader,
    activation_name,
    cfg_int,
    check_fits,
    check_layer,
    fill_hook,
    layer_tensors,
    norm_stats,
    normalization_name,
    open_weights,
    read_json,
    require,
    topk_k,
)
from core.dictionaries.protocol import DictionaryError, check_finite

_ENC_W = "encoder_module.encoders.{}.weight"
_ENC_W_RE = re.compile(r"^encoder_module\.encoders\.\d+\.weight$")
_DEC_W = "decoder_module.decoders.{}->{}.weight"
_LOG_THETA = "theta_manager.log_threshold"


def _weights_path(root: Path, weights_file: str | None) -> Path:
    if weights_file is not None:
        path = root / weights_file
        if not path.is_file():
            raise DictionaryError(
                f"weights_file {weights_file!r} is not in {str(root)!r}: files there are "
                f"{sorted(p.name for p in root.iterdir())[:10]}"
            )
        return path
    for pattern in ("*.safetensors", "*.pt", "*.pth"):
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
    raise DictionaryError(
        f"no weights in {str(root)!r}: expected a .safetensors (or .pt) CLT checkpoint next "
        "to cfg.json"
    )


def _bias_name(reader: Reader, weight_name: str) -> str:
    base = weight_name.removesuffix(".weight")
    return f"{base}.bias" if f"{base}.bias" in reader else f"{base}.bias_param"


def load_reference(root: Path, layer: int, weights_file: str | None) -> dict[str, Any]:
    cfg_path = root / "cfg.json"
    if not cfg_path.is_file():
        raise DictionaryError(
            f"no cfg.json in {str(root)!r}: a reference-layout CLT directory needs cfg.json "
            "(num_features, num_layers, d_model, activation_fn, normalization_method, "
            "tl_input_template) next to its weights; a circuit-tracer CLT needs "
            "W_enc_{i}.safetensors / W_dec_{i}.safetensors files"
        )
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise DictionaryError("cfg.json must hold a JSON object")
    sizes = {}
    for key in ("num_features", "num_layers", "d_model"):
        val = cfg_int(cfg, (key,), "cfg.json")
        if val is None:
            raise DictionaryError(f"cfg.json lacks {key!r}: add it (an integer)")
        sizes[key] = val
    n_feat, n_layers, d_model = sizes["num_features"], sizes["num_layers"], sizes["d_model"]
    check_layer(layer, n_layers)
    path = _weights_path(root, weights_file)
    act_raw = cfg.get("activation_fn")
    norm = normalization_name(cfg.get("normalization_method") or "none", "cfg.json")
    mean = std = None
    if norm == "mean_std":
        mean, std = norm_stats(root, layer, d_model)

    with open_weights(path) as r:
        act = (
            activation_name(act_raw, "cfg.json")
            if act_raw
            else ("jumprelu" if _LOG_THETA in r else "relu")
        )
        k = topk_k(cfg, act, "cfg.json")
        n_enc = sum(1 for name in r if _ENC_W_RE.match(name))
        if n_layers > n_enc:
            raise DictionaryError(
                f"cfg.json declares num_layers = {n_layers:,} but {path.name!r} holds encoders "
                f"for {n_enc} layer(s): fix num_layers in cfg.json (or point weights_file at "
                "the full CLT checkpoint)"
            )
        enc_w = _ENC_W.format(layer)
        dec_w = [_DEC_W.format(layer, t) for t in range(layer, n_layers)]
        require(r, [enc_w, *dec_w])
        enc_b = _bias_name(r, enc_w)
        require(r, [enc_b])
        W_enc = r.checked(enc_w, (n_feat, d_model))
        b_enc = r.checked(enc_b, (n_feat,))
        check_fits(n_feat * (n_layers - layer), "the decoder norm table", repr(path.name))
        norms = torch.empty(n_feat, n_layers - layer)
        W_dec = None
        for j, name in enumerate(dec_w):
            w = r.checked(name, (d_model, n_feat))
            norms[:, j] = w.float().norm(dim=0)
            if not bool(torch.isfinite(norms[:, j]).all()):
                check_finite({name: w}, repr(path.name))
            if j == 0:
                W_dec = w.T.contiguous()
            del w
        dec_b_name = _bias_name(r, dec_w[0])
        b_dec = r.checked(dec_b_name, (d_model,)) if dec_b_name in r else None
        threshold = None
        if act == "jumprelu":
            if _LOG_THETA in r:
                shape = r.shape(_LOG_THETA)
                if shape != (n_layers, n_feat):
                    raise DictionaryError(
                        f"tensor {_LOG_THETA!r} in {path.name!r} has shape {list(shape)}, "
                        f"expected {[n_layers, n_feat]} (num_layers, num_features)"
                    )
                threshold = r.get(_LOG_THETA, layer).float().exp()
            elif cfg.get("jumprelu_threshold") is not None:
                threshold = torch.full((n_feat,), float(cfg["jumprelu_threshold"]))
            else:
                raise DictionaryError(
                    f"JumpReLU CLT without thresholds: {path.name!r} has no {_LOG_THETA!r} and "
                    "cfg.json has no 'jumprelu_threshold'; add one of them"
                )
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
            cfg.get("tl_input_template"), layer, DEFAULT_INPUT_TEMPLATE, "tl_input_template"
        ),
        "hook_out": fill_hook(
            cfg.get("tl_output_template"), layer, DEFAULT_OUTPUT_TEMPLATE, "tl_output_template"
        ),
        "source": {
            "format": "reference",
            "weights_file": path.name,
            "model_name": cfg.get("model_name"),
            "context_size": cfg.get("context_size"),
            "prepend_bos": cfg.get("prepend_bos"),
        },
    }

"""Adapter for cross-layer transcoders (CLTs): one object per (CLT, chosen layer).

A CLT has one encoder per layer ``L`` that reads that layer's MLP input and, for every
feature, one decoder per downstream layer ``L, L+1, ..., n_layers-1`` that writes into
that layer's MLP output. A dashboard shows the features of one layer, so
:class:`CLTDictionary` holds layer ``L``'s encoder, its ``L -> L`` decoder (what the
engine uses for logit tables and neuron alignment) and a table of the norms of all its
``L -> t`` decoders (shown as a per-feature extra: how strongly each feature writes to
every later layer). The other decoders are read once, reduced to norms and dropped, so
memory stays at about two ``[n_features, d_model]`` matrices even for large CLTs.

Two on-disk layouts are read, detected automatically:

*Reference layout* (the reference dashboard tool's CLT training code): a directory with

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

*circuit-tracer layout*: per layer ``i`` a ``W_enc_{i}.safetensors`` holding ``W_enc_{i}``
(``[d_transcoder, d_model]``, the transposed orientation is accepted too), ``b_enc_{i}``,
``b_dec_{i}`` and optionally ``threshold_{i}`` (JumpReLU), and a ``W_dec_{i}.safetensors``
holding ``W_dec_{i}`` ``[d_transcoder, n_layers - i, d_model]``. A small ``cfg.json`` or
``config.yaml`` is honoured when present; otherwise sizes come from the tensors.

Activation conventions (documented decisions):

- ``relu``: ``relu(pre)``.
- ``jumprelu``: ``relu(pre) * (pre > threshold)`` with the layer's threshold
  (``exp(log_threshold[L])``, else the scalar ``cfg.jumprelu_threshold``; circuit-tracer
  stores ``threshold_{L}`` directly). The reference computes ``pre * (pre > threshold)``;
  both agree whenever ``threshold >= 0`` (always true for ``exp(...)``), and the extra
  ReLU guarantees activations are never negative.
- ``topk``: per token keep the ``k`` largest pre-activations of this layer, then ReLU.
  ``k < 1`` is read as a fraction of the features (as the reference tool does).
- ``batchtopk``: at inference, per-token top-``k`` with the same ``k`` (batch-level
  selection would make a feature's activation depend on the other tokens of the
  batch). Note that the reference trains TopK/BatchTopK CLTs with the ranking taken
  over *all layers' features concatenated*; a one-layer view cannot reproduce that
  exactly, so per-layer top-k is an approximation for those two activations.

Input normalisation: ``mean_std`` encodes ``(x - mean_L) / (std_L + 1e-6)`` with the
layer's input statistics; ``sqrt_d_model`` encodes ``x * sqrt(d_model)``. The
normalisation is done in float32 and cast back to ``x``'s dtype. Decoder directions are
returned as stored: with ``mean_std`` they live in the *normalised* output space.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from jaxtyping import Float, Int
from torch import Tensor

from core.dictionaries.clt_files import (
    ACTIVATIONS,
    NORMALIZATIONS,
    Reader,
    activation_name,
    cfg_int,
    check_fits,
    check_layer,
    expect_shape,
    fill_hook,
    norm_stats,
    normalization_name,
    open_weights,
    read_config_text,
    read_json,
    require,
    topk_k,
)
from core.dictionaries.protocol import Dictionary, DictionaryError, check_finite
from core.dictionaries.registry import DictionarySpecFields, register, register_loader
from core.source_guard import SourceError

DEFAULT_INPUT_TEMPLATE = "blocks.{}.ln2.hook_normalized"
DEFAULT_OUTPUT_TEMPLATE = "blocks.{}.hook_mlp_out"
NORM_EPS = 1e-6

_ENC_W = "encoder_module.encoders.{}.weight"
_ENC_W_RE = re.compile(r"^encoder_module\.encoders\.\d+\.weight$")
_ENC_B = "encoder_module.encoders.{}.bias_param"
_DEC_W = "decoder_module.decoders.{}->{}.weight"
_DEC_B = "decoder_module.decoders.{}->{}.bias_param"
_LOG_THETA = "theta_manager.log_threshold"
_CT_ENC = re.compile(r"^W_enc_(\d+)\.safetensors$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)*$")


@register("clt")
class CLTDictionary(Dictionary):
    """One layer of a cross-layer transcoder, seen through the :class:`Dictionary` protocol.

    Build it with :func:`load_clt`; the constructor takes already loaded tensors (in the
    orientation the engine uses) and checks that they fit together.

    Args:
        layer: the layer ``L`` whose features are shown.
        num_layers: layers the CLT spans.
        W_enc: layer ``L``'s encoder, ``[n_features, d_model]``.
        b_enc: its bias, ``[n_features]``.
        W_dec: the ``L -> L`` decoder, ``[n_features, d_model]``.
        decoder_norms: norm of each feature's ``L -> t`` decoder for ``t = L..num_layers-1``,
            ``[n_features, num_layers - L]``.
        activation_fn: one of :data:`ACTIVATIONS`.
        hook_in: hook whose activations are encoded.
        hook_out: hook the ``L -> L`` decoder writes to.
        b_dec: the ``L -> L`` decoder bias ``[d_model]`` (kept for completeness; features
            do not depend on it).
        threshold: JumpReLU thresholds ``[n_features]`` (required for ``jumprelu``).
        k: kept features per token for ``topk``/``batchtopk`` (``< 1``: a fraction).
        normalization: one of :data:`NORMALIZATIONS`.
        norm_mean: input mean ``[d_model]`` for ``mean_std``.
        norm_std: input std ``[d_model]`` for ``mean_std``.
        source: JSON-able description of where it came from (path, repo, format, ...).
    """

    kind = "clt"

    def __init__(
        self,
        *,
        layer: int,
        num_layers: int,
        W_enc: Float[Tensor, "f d"],
        b_enc: Float[Tensor, " f"],
        W_dec: Float[Tensor, "f d"],
        decoder_norms: Float[Tensor, "f t"],
        activation_fn: str,
        hook_in: str,
        hook_out: str,
        b_dec: Float[Tensor, " d"] | None = None,
        threshold: Float[Tensor, " f"] | None = None,
        k: float | None = None,
        normalization: str = "none",
        norm_mean: Float[Tensor, " d"] | None = None,
        norm_std: Float[Tensor, " d"] | None = None,
        source: dict[str, Any] | None = None,
    ):
        if activation_fn not in ACTIVATIONS:
            raise DictionaryError(
                f"unknown CLT activation function {activation_fn!r}: use one of {list(ACTIVATIONS)}"
            )
        if normalization not in NORMALIZATIONS:
            raise DictionaryError(
                f"unknown CLT normalization {normalization!r}: use one of {list(NORMALIZATIONS)}"
            )
        if not 0 <= layer < num_layers:
            raise DictionaryError(f"layer {layer} is out of range 0-{num_layers - 1}")
        n_feat, d_model = W_enc.shape
        expect_shape("W_enc", W_enc, (n_feat, d_model))
        expect_shape("b_enc", b_enc, (n_feat,))
        expect_shape("W_dec", W_dec, (n_feat, d_model))
        expect_shape("decoder_norms", decoder_norms, (n_feat, num_layers - layer))
        if b_dec is not None:
            expect_shape("b_dec", b_dec, (d_model,))
        if activation_fn == "jumprelu":
            if threshold is None:
                raise DictionaryError("a JumpReLU CLT needs per-feature thresholds")
            expect_shape("threshold", threshold, (n_feat,))
        if activation_fn in ("topk", "batchtopk") and (k is None or k <= 0):
            raise DictionaryError(
                f"a {activation_fn} CLT needs a positive k (cfg 'topk_k' or 'batchtopk_k')"
            )
        if normalization == "mean_std":
            if norm_mean is None or norm_std is None:
                raise DictionaryError("mean_std normalization needs the input mean and std")
            expect_shape("norm mean", norm_mean, (d_model,))
            expect_shape("norm std", norm_std, (d_model,))

        self.layer = int(layer)
        self.num_layers = int(num_layers)
        self.W_enc = W_enc
        self.b_enc = b_enc
        self.W_dec = W_dec
        self.b_dec = b_dec
        self.threshold = threshold if activation_fn == "jumprelu" else None
        self.decoder_norms = decoder_norms.float()
        self.activation_fn = activation_fn
        self.k = k
        self.normalization = normalization
        self.norm_mean = None if norm_mean is None else norm_mean.float()
        self.norm_std = None if norm_std is None else norm_std.float()
        self._hook_in = hook_in
        self._hook_out = hook_out
        self.source = dict(source or {})

    # --- protocol ----------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def hook_in(self) -> str:
        return self._hook_in

    @property
    def hook_out(self) -> str:
        return self._hook_out

    @property
    def encode_is_separable(self) -> bool:
        return self.activation_fn in ("relu", "jumprelu")

    @property
    def k_abs(self) -> int | None:
        """Absolute number of features kept per token (TopK/BatchTopK), else ``None``."""
        if self.k is None or self.activation_fn not in ("topk", "batchtopk"):
            return None
        k = max(1, round(self.k * self.n_features)) if self.k < 1 else int(self.k)
        return min(k, self.n_features)

    def normalize_input(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        """Apply the CLT's input normalisation (float32 inside, ``x``'s dtype out)."""
        if self.normalization == "none":
            return x
        if self.normalization == "sqrt_d_model":
            return (x.float() * math.sqrt(self.d_in)).to(x.dtype)
        assert self.norm_mean is not None and self.norm_std is not None
        mean = self.norm_mean.to(x.device)
        std = self.norm_std.to(x.device)
        return ((x.float() - mean) / (std + NORM_EPS)).to(x.dtype)

    @torch.no_grad()
    def encode(
        self,
        x: Float[Tensor, "n d_in"],
        features: Int[Tensor, " f"] | None = None,
    ) -> Float[Tensor, "n f"]:
        x_in = self.normalize_input(x)
        if not self.encode_is_separable or features is None:
            w, b = self.W_enc, self.b_enc
        else:
            w, b = self.W_enc[features], self.b_enc[features]
        pre = x_in @ w.to(x.dtype).T + b.to(x.dtype)
        if self.activation_fn == "relu":
            return pre.relu()
        if self.activation_fn == "jumprelu":
            assert self.threshold is not None
            thr = self.threshold if features is None else self.threshold[features]
            return pre.relu() * (pre > thr.to(pre.dtype)).to(pre.dtype)
        k = self.k_abs
        assert k is not None
        vals, idx = pre.topk(k, dim=-1)
        acts = torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
        return acts if features is None else acts[..., features]

    @torch.no_grad()
    def decoder_directions(
        self, features: Int[Tensor, " f"] | None = None
    ) -> Float[Tensor, "f d_out"]:
        return self.W_dec if features is None else self.W_dec[features]

    def feature_extras(self, features: Int[Tensor, " f"]) -> dict[str, Any]:
        """Per-feature downstream decoder norms.

        Returns:
            ``decoder_layers``: for each feature the target layers ``[L, ..., n_layers-1]``;
            ``decoder_norms_by_layer``: for each feature the L2 norm of its ``L -> t``
            decoder vector, aligned with ``decoder_layers``.
        """
        idx = features.detach().to(self.decoder_norms.device, torch.long)
        norms = self.decoder_norms[idx].tolist()
        layers = list(range(self.layer, self.num_layers))
        return {
            "decoder_layers": [list(layers) for _ in norms],
            "decoder_norms_by_layer": norms,
        }

    def state_tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {
            "W_enc": self.W_enc,
            "b_enc": self.b_enc,
            "W_dec": self.W_dec,
            "decoder_norms": self.decoder_norms,
            # activation, k and normalisation change the features too: hash them
            "meta": torch.tensor(
                [
                    float(ACTIVATIONS.index(self.activation_fn)),
                    float(self.k or 0.0),
                    float(NORMALIZATIONS.index(self.normalization)),
                    float(self.layer),
                    float(self.num_layers),
                ],
                dtype=torch.float64,
            ),
        }
        if self.b_dec is not None:
            out["b_dec"] = self.b_dec
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.norm_mean is not None and self.norm_std is not None:
            out["norm_mean"] = self.norm_mean
            out["norm_std"] = self.norm_std
        return out

    def identity(self) -> dict[str, Any]:
        return {
            "adapter": self.kind,
            "kind": self.kind,
            "layer": self.layer,
            "num_layers": self.num_layers,
            "activation_fn": self.activation_fn,
            "k": self.k,
            "normalization": self.normalization,
            "hook_in": self.hook_in,
            "hook_out": self.hook_out,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "n_features": self.n_features,
            **self.source,
        }

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Dictionary:
        def move(t: Tensor | None, cast: bool = True) -> Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if cast else None)

        self.W_enc = move(self.W_enc)
        self.b_enc = move(self.b_enc)
        self.W_dec = move(self.W_dec)
        self.b_dec = move(self.b_dec)
        self.threshold = move(self.threshold)
        # statistics stay float32 (normalisation is done in float32)
        self.norm_mean = move(self.norm_mean, cast=False)
        self.norm_std = move(self.norm_std, cast=False)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device


# ---- loading ---------------------------------------------------------------------------
def load_clt(
    path_or_repo: str | Path,
    layer: int,
    weights_file: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> CLTDictionary:
    """Load layer ``layer`` of a cross-layer transcoder.

    Args:
        path_or_repo: a local directory (reference or circuit-tracer layout, see the
            module docstring) or a Hugging Face repo id ``org/name`` (optionally followed
            by ``/sub/folder``) that is not an existing local path. Hub downloads fetch
            only config files and what the chosen layer needs (for the reference layout:
            the named ``weights_file``, else every ``.safetensors``/``.pt``) into the
            local Hugging Face cache.
        layer: the layer whose features are shown.
        weights_file: file name of the weights (reference layout; ignored for the
            circuit-tracer layout); default: the first ``.safetensors`` in sorted order,
            else the first ``.pt``/``.pth``. Hooks default to
            ``blocks.{L}.ln2.hook_normalized`` (in) and ``blocks.{L}.hook_mlp_out`` (out)
            when the config names no template; a missing ``activation_fn`` means JumpReLU
            when thresholds are stored, else ReLU.
        device: where to put the tensors.
        dtype: cast every weight to this dtype; ``None`` keeps the encoder weight's dtype.

    Raises:
        DictionaryError: the path, config, weights or norm statistics are missing or
            malformed; the message names the problem and the fix.
    """
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise DictionaryError(f"layer must be an int, got {layer!r}")
    root, repo = _resolve_root(path_or_repo, layer, weights_file)
    if not root.is_dir():
        raise DictionaryError(
            f"CLT path {str(root)!r} is not a directory: pass the directory holding cfg.json "
            "and the weights (or W_enc_*/W_dec_* files)"
        )
    source: dict[str, Any] = {"path": str(root)}
    if repo is not None:
        source["repo"] = repo
    if any(_CT_ENC.match(p.name) for p in root.iterdir()):
        parts = _load_circuit_tracer(root, layer)
    else:
        parts = _load_reference(root, layer, weights_file)
    source.update(parts.pop("source"))
    names = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
    check_finite(
        {n: parts[n] for n in names if parts[n] is not None},
        f"CLT layer {layer} ({source.get('weights_file')!r})",
    )
    clt = CLTDictionary(source=source, **parts)
    if dtype is None:
        dtype = clt.W_enc.dtype
    clt.to(device, dtype)
    return clt


@register_loader("clt")
def load_spec(spec: DictionarySpecFields, device: str) -> Dictionary:
    """The layer ``spec.layer`` of the CLT at ``spec.path`` (directory or hub repo id)."""
    if spec.layer is None:
        raise SourceError("a cross-layer transcoder needs the layer whose features to show")
    try:
        return load_clt(spec.path or "", spec.layer, weights_file=spec.weights_file, device=device)
    except DictionaryError as exc:
        raise SourceError(str(exc)) from exc


def _resolve_root(
    path_or_repo: str | Path, layer: int, weights_file: str | None
) -> tuple[Path, str | None]:
    """Local directory for ``path_or_repo`` (downloading a hub repo when needed)."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        return path, None
    spec = str(path_or_repo)
    if isinstance(path_or_repo, Path) or not _REPO_ID.match(spec) or spec.startswith("."):
        raise DictionaryError(
            f"CLT path {spec!r} does not exist: check the path, or give a Hugging Face repo id "
            "like 'org/name'"
        )
    return _fetch_from_hub(spec, layer, weights_file), spec


def _fetch_from_hub(spec: str, layer: int, weights_file: str | None) -> Path:
    """Download what layer ``layer`` needs from the hub repo ``org/name[/subfolder]``."""
    parts = spec.split("/")
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    prefix = f"{sub}/" if sub else ""

    def fetch(patterns: list[str]) -> Path:
        try:
            root = snapshot_download(repo_id, allow_patterns=[prefix + p for p in patterns])
        except Exception as exc:  # network, auth, missing repo, offline mode
            raise DictionaryError(
                f"{spec!r} is not a local directory and could not be fetched from the Hugging "
                f"Face Hub as repo {repo_id!r}: {exc}. Check the path or repo id (and network / "
                "HF_HUB_OFFLINE), or download the CLT and pass its directory"
            ) from exc
        return Path(root) / sub if sub else Path(root)

    # configs plus this layer's circuit-tracer files: enough to tell the layouts apart
    small = ["*.json", "*.yaml", "*.yml"]
    root = fetch([*small, f"W_enc_{layer}.safetensors", f"W_dec_{layer}.safetensors"])
    if (root / f"W_enc_{layer}.safetensors").exists() or not (root / "cfg.json").exists():
        return root
    weights = [weights_file] if weights_file else ["*.safetensors", "*.pt", "*.pth"]
    return fetch([*small, *weights])


# ---- reference layout -------------------------------------------------------------------
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


def _load_reference(root: Path, layer: int, weights_file: str | None) -> dict[str, Any]:
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
        **_layer_tensors(W_enc, b_enc, W_dec, b_dec, threshold),
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


def _layer_tensors(
    W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor | None, threshold: Tensor | None
) -> dict[str, Tensor | None]:
    """One layer's tensors, all in the encoder's dtype (both layouts end here)."""
    dtype = W_enc.dtype
    return {
        "W_enc": W_enc,
        "b_enc": b_enc.to(dtype),
        "W_dec": W_dec.to(dtype),
        "b_dec": None if b_dec is None else b_dec.to(dtype),
        "threshold": None if threshold is None else threshold.to(dtype),
    }


# ---- circuit-tracer layout ------------------------------------------------------------------
def _small_config(root: Path) -> dict[str, Any]:
    """``cfg.json`` or ``config.yaml`` of a circuit-tracer directory ({} when absent)."""
    if (root / "cfg.json").is_file():
        cfg = read_json(root / "cfg.json")
    elif (root / "config.yaml").is_file() or (root / "config.yml").is_file():
        import yaml

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


def _load_circuit_tracer(root: Path, layer: int) -> dict[str, Any]:
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
        **_layer_tensors(W_enc, b_enc, W_dec, b_dec, threshold),
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


__all__ = ["ACTIVATIONS", "NORMALIZATIONS", "CLTDictionary", "load_clt"]

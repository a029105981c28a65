"""The CLT adapter: one object per (cross-layer transcoder, chosen layer).

A CLT has one encoder per layer ``L`` that reads that layer's MLP input and, for every
feature, one decoder per downstream layer ``L, L+1, ..., n_layers-1`` that writes into
that layer's MLP output. A dashboard shows the features of one layer, so
:class:`CLTDictionary` holds layer ``L``'s encoder, its ``L -> L`` decoder (what the
engine uses for logit tables and neuron alignment) and a table of the norms of all its
``L -> t`` decoders (shown as a per-feature extra: how strongly each feature writes to
every later layer). The other decoders are read once, reduced to norms and dropped, so
memory stays at about two ``[n_features, d_model]`` matrices even for large CLTs.

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
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from core.dictionaries.clt.files import ACTIVATIONS, NORMALIZATIONS, expect_shape
from core.dictionaries.protocol import Dictionary, DictionaryError, DictionaryRole
from core.dictionaries.registry import register

NORM_EPS = 1e-6


@register("clt")
class CLTDictionary(Dictionary):
    """One layer of a cross-layer transcoder, seen through the :class:`Dictionary` protocol.

    Build it with :func:`~core.dictionaries.clt.load_clt`; the constructor takes already loaded tensors (in the
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

    family = "clt"

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
    def role(self) -> DictionaryRole:
        return "clt"

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
            "adapter": self.family,
            "role": self.role,
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

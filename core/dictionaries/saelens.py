"""Adapter for SAELens dictionaries: SAEs, transcoders and skip transcoders.

The adapter encodes a *subset* of features without computing the others whenever the
architecture allows it (standard/ReLU, JumpReLU and gated encoders act feature by
feature). TopK-style encoders need every pre-activation to know which features win,
so they encode everything and slice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from sae_lens import (
    SAE,
    GatedSAE,
    JumpReLUSAE,
    JumpReLUTranscoder,
    SkipTranscoder,
    StandardSAE,
    Transcoder,
)
from torch import Tensor

from core.dictionaries.protocol import (
    Dictionary,
    DictionaryError,
    DictionaryRole,
    check_finite,
    check_hook_name,
)
from core.dictionaries.registry import DictionarySpecFields, register, register_loader
from core.errors import short_message
from core.releases import check_release
from core.source_guard import SourceError

DEMO_SAE_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo_sae"
"""The demo SAE shipped with the project (spec kind ``"demo"``)."""

# Encoder families, decided by class (never by name).
_ELEMENTWISE = (StandardSAE, Transcoder)  # activation_fn(x W + b), feature by feature
_JUMPRELU = (JumpReLUSAE, JumpReLUTranscoder)  # checked before _ELEMENTWISE (subclass)
_GATED = (GatedSAE,)


@register("saelens")
class SAELensDictionary(Dictionary):
    """Wraps a loaded ``sae_lens.SAE`` (any inference architecture).

    Args:
        sae: the loaded SAE, transcoder or skip transcoder.
        source: JSON-able description of where it came from (release/id or path).
    """

    family = "saelens"

    def __init__(self, sae: SAE, source: dict[str, Any] | None = None):
        if not isinstance(sae, SAE):
            raise DictionaryError(
                f"expected a sae_lens.SAE, got {type(sae).__name__}; load it with "
                "SAE.from_pretrained(...) or SAE.load_from_disk(path)"
            )
        self.sae = sae.eval()
        self.source = dict(source or {})
        meta = sae.cfg.metadata
        self._hook_in = meta.hook_name
        if not self._hook_in:
            raise DictionaryError(
                "the SAE's cfg.metadata.hook_name is empty: set it to the TransformerLens hook "
                "the SAE was trained on (e.g. 'blocks.6.hook_resid_pre')"
            )
        hook_out = meta.get("hook_name_out", None)
        self._is_transcoder = isinstance(sae, Transcoder)
        if self._is_transcoder and not hook_out:
            raise DictionaryError(
                "this transcoder's cfg.metadata has no hook_name_out: set it to the hook its "
                "decoder writes to (e.g. 'blocks.6.hook_mlp_out')"
            )
        self._hook_out = hook_out or self._hook_in
        check_hook_name(self._hook_in, "the SAE's cfg.metadata.hook_name")
        check_hook_name(self._hook_out, "the SAE's cfg.metadata.hook_name_out")
        check_finite(dict(sae.state_dict()), "the SAE's weights")
        if getattr(sae, "hook_z_reshaping_mode", False):
            # hook_z SAEs (reshape_activations="hook_z") flatten [..., heads, d_head] inside
            # encode; the engine hands every dictionary flat [tokens, heads * d_head] rows
            # already, which SAELens would flatten once more into one long vector
            sae.turn_off_forward_pass_hook_z_reshaping()
        if isinstance(sae, _JUMPRELU):
            self._activation = "jumprelu"
        elif isinstance(sae, _GATED):
            self._activation = "gated"
        elif isinstance(sae, _ELEMENTWISE):
            self._activation = "elementwise"
        else:
            self._activation = "full"  # TopK, BatchTopK, matching pursuit, ...

    # --- protocol ----------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_out(self) -> int:
        return int(self.sae.W_dec.shape[1])

    @property
    def hook_in(self) -> str:
        return self._hook_in

    @property
    def hook_out(self) -> str:
        return self._hook_out

    @property
    def role(self) -> DictionaryRole:
        if isinstance(self.sae, SkipTranscoder):
            return "skip_transcoder"
        return "transcoder" if self._is_transcoder else "sae"

    @property
    def encode_is_separable(self) -> bool:
        return self._activation != "full"

    @property
    def architecture(self) -> str:
        return str(self.sae.cfg.architecture())

    @torch.no_grad()
    def encode(
        self,
        x: Float[Tensor, "n d_in"],
        features: Int[Tensor, " f"] | None = None,
    ) -> Float[Tensor, "n f"]:
        sae = self.sae
        if self._activation == "full" or features is None:
            acts = sae.encode(x)
            return acts if features is None else acts[:, features]
        sae_in = sae.process_sae_in(x)
        w = sae.W_enc[:, features]
        if self._activation == "gated":
            gate = (sae_in @ w + sae.b_gate[features]) > 0
            mag_pre = sae_in @ (w * sae.r_mag[features].exp()) + sae.b_mag[features]
            return gate.to(sae_in.dtype) * sae.activation_fn(mag_pre)
        pre = sae_in @ w + sae.b_enc[features]
        acts = sae.activation_fn(pre)
        if self._activation == "jumprelu":
            acts = acts * (pre > sae.threshold[features]).to(acts.dtype)
        return acts

    @torch.no_grad()
    def decoder_directions(
        self, features: Int[Tensor, " f"] | None = None
    ) -> Float[Tensor, "f d_out"]:
        w = self.sae.W_dec if features is None else self.sae.W_dec[features]
        if getattr(self.sae.cfg, "rescale_acts_by_decoder_norm", False):
            w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return w

    @torch.no_grad()
    def encoder_affine(self, features: Int[Tensor, " f"]) -> tuple[Tensor, Tensor, Tensor] | None:
        sae = self.sae
        if self._activation == "gated" or sae.cfg.normalize_activations != "none":
            return None  # no single linear pre-activation per feature
        w = sae.W_enc[:, features]
        b = sae.b_enc[features]
        if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
            scale = sae.W_dec[features].norm(dim=-1)
            w, b = w * scale, b * scale
        shift = sae.b_dec * float(sae.cfg.apply_b_dec_to_input)
        return w, b, shift

    def state_tensors(self) -> dict[str, Tensor]:
        return dict(self.sae.state_dict())

    def identity(self) -> dict[str, Any]:
        meta = self.sae.cfg.metadata
        return {
            "adapter": self.family,
            "role": self.role,
            "architecture": self.architecture,
            "hook_in": self.hook_in,
            "hook_out": self.hook_out,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "n_features": self.n_features,
            "model_name": meta.get("model_name", None),
            **self.source,
        }

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Dictionary:
        if dtype is None:
            self.sae.to(device)
        else:
            self.sae.to(device=device, dtype=dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.sae.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.sae.W_enc.device


@register_loader("demo", "saelens_local")
def load_directory(spec: DictionarySpecFields, device: str) -> Dictionary:
    """The demo SAE, or a SAELens directory (``cfg.json`` + ``sae_weights.safetensors``)."""
    path = DEMO_SAE_DIR if spec.kind == "demo" else Path(spec.path or "").expanduser()
    if spec.kind == "saelens_local" and not spec.path:
        raise SourceError("a local SAELens dictionary needs the path of its directory")
    if not path.is_dir():
        raise SourceError(f"dictionary directory {path} does not exist")
    if not (path / "cfg.json").exists():
        raise SourceError(
            f"{path} has no cfg.json: a SAELens directory holds cfg.json and "
            "sae_weights.safetensors (written by sae.save_model)"
        )
    try:
        sae = SAE.load_from_disk(str(path), device=device, dtype="float32")
    except Exception as exc:  # safetensors/json/shape errors all mean a bad directory
        raise SourceError(
            f"could not load the SAELens dictionary in {path}: "
            f"{short_message(exc).splitlines()[0].rstrip('. ')}. The files look "
            "damaged or do not belong together: copy or download the directory again (it "
            "holds the cfg.json and sae_weights.safetensors written by sae.save_model)"
        ) from exc
    source = {"kind": spec.kind, "path": str(path)}
    if spec.kind == "demo":
        source["name"] = "demo-topk-sae"
    return _wrap(sae, source)


@register_loader("saelens")
def load_release(spec: DictionarySpecFields, device: str) -> Dictionary:
    """A SAELens release and id, checked offline and then downloaded by SAELens."""
    if not spec.release or not spec.sae_id:
        raise SourceError(
            "a SAELens dictionary needs a release and an sae_id (see the release list)"
        )
    check_release(spec.release, spec.sae_id, None)  # offline, before any download
    try:
        sae = SAE.from_pretrained(spec.release, spec.sae_id, device=device)
    except Exception as exc:
        raise SourceError(
            f"could not download {spec.release}/{spec.sae_id}: {short_message(exc)}. Without "
            "internet, download it elsewhere and load the directory as a local SAELens dictionary"
        ) from exc
    return _wrap(sae, {"kind": "saelens", "release": spec.release, "sae_id": spec.sae_id})


def _wrap(sae: SAE, source: dict[str, Any]) -> Dictionary:
    try:
        return SAELensDictionary(sae, source=source)
    except DictionaryError as exc:
        raise SourceError(str(exc)) from exc

"""Any set of directions as a dictionary: probes, steering vectors, difference-of-means vectors.

Feature ``i`` is the vector ``v_i`` read at one hook. Its activation on a token is the raw dot
product ``x · v_i`` of the hook activation with the vector *as given* (not normalised: scale the
vectors first for projections in units of the activation), and its decoder direction is
``v_i`` itself. Activations are signed (:attr:`Dictionary.signed`), so the engine counts
non-zeros as active and keeps the most negative examples too.

File form (spec ``directions:/path/vecs.safetensors``): one safetensors file holding a tensor
``directions`` of shape ``[n, d]`` (or a single tensor of any name; ``[d]`` is one direction)
and the hook in its metadata under ``hook_name``::

    from safetensors.torch import save_file
    save_file({"directions": vecs}, "vecs.safetensors",
              metadata={"hook_name": "blocks.6.hook_resid_pre"})

From a notebook, :meth:`DirectionsDictionary.from_tensor` wraps a tensor directly, and
:func:`directions_file_for` writes one to a file named by its content (what
``open_workspace(..., directions=vecs, hook=...)`` opens, so the workspace has a spec).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from core.dictionaries.protocol import Dictionary, DictionaryError, check_finite, check_hook_name
from core.dictionaries.registry import DictionarySpecFields, register, register_loader
from core.source_guard import SourceError
from core.storage import atomic_write

#: the tensor name read from a directions file (any single tensor is read too)
TENSOR_NAME = "directions"
#: the metadata key naming the hook
HOOK_KEY = "hook_name"
_HOW = (
    "write it with safetensors.torch.save_file({'directions': vecs}, path, "
    "metadata={'hook_name': 'blocks.6.hook_resid_pre'})"
)


@register("directions")
class DirectionsDictionary(Dictionary):
    """Given vectors ``[n, d]`` at ``hook``: activation = ``x · v``, decoder = ``v``.

    Args:
        vectors: ``[n, d]`` (or ``[d]`` for one direction), any floating dtype.
        hook: the TransformerLens hook the vectors live at (``blocks.6.hook_resid_pre``).
        source: JSON-able description of where they came from.
    """

    family = "directions"

    def __init__(self, vectors: Tensor, hook: str, source: dict[str, Any] | None = None):
        if not isinstance(vectors, Tensor):
            raise DictionaryError(
                f"directions must be a torch tensor [n, d], got {type(vectors).__name__}"
            )
        if vectors.ndim == 1:
            vectors = vectors[None]
        if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
            raise DictionaryError(
                f"directions must be a 2-D tensor [n_directions, d_model] with at least one "
                f"direction, got shape {list(vectors.shape)}: stack the vectors into one tensor"
            )
        if not vectors.is_floating_point():
            raise DictionaryError(
                f"directions must be floating point, got {vectors.dtype}: convert with .float()"
            )
        self._hook = check_hook_name(hook, "the directions' hook")
        check_finite({TENSOR_NAME: vectors}, "the directions")
        self.W = vectors.detach().clone().float()
        self.source = dict(source or {})

    @classmethod
    def from_tensor(cls, vectors: Tensor, hook: str) -> DirectionsDictionary:
        """Directions from a notebook: ``vectors [n, d]`` read at ``hook``."""
        return cls(vectors, hook, source={"kind": "notebook"})

    # --- protocol ----------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return int(self.W.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.W.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.W.shape[1])

    @property
    def hook_in(self) -> str:
        return self._hook

    @property
    def signed(self) -> bool:
        return True

    @torch.no_grad()
    def encode(
        self, x: Float[Tensor, "n d_in"], features: Int[Tensor, " f"] | None = None
    ) -> Float[Tensor, "n f"]:
        w = self.W if features is None else self.W[features]
        return x @ w.to(x.dtype).T

    @torch.no_grad()
    def decoder_directions(
        self, features: Int[Tensor, " f"] | None = None
    ) -> Float[Tensor, "f d_out"]:
        return self.W if features is None else self.W[features]

    def encoder_affine(self, features: Int[Tensor, " f"]) -> tuple[Tensor, Tensor, Tensor]:
        w = self.W[features].T
        return w, torch.zeros(w.shape[1], device=w.device), torch.zeros_like(w[:, 0])

    def state_tensors(self) -> dict[str, Tensor]:
        return {TENSOR_NAME: self.W}

    def identity(self) -> dict[str, Any]:
        return {
            "adapter": self.family,
            "role": self.role,
            "architecture": "projection",
            "hook_in": self.hook_in,
            "hook_out": self.hook_out,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "n_features": self.n_features,
            **self.source,
        }

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Dictionary:
        self.W = self.W.to(device=device)  # kept float32; encode casts to the input's dtype
        return self


def directions_file_for(vectors: Tensor, hook: str, directory: str | Path) -> Path:
    """A directions file in ``directory`` holding ``vectors`` at ``hook``, named by their
    content (the same vectors give the same file; written once, atomically)."""
    d = DirectionsDictionary(vectors, hook)
    name = f"{d.fingerprint()[:16]}-{hook.replace('.', '_')}"  # a checked hook name
    path = Path(directory).expanduser() / f"{name}.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, save({TENSOR_NAME: d.W.contiguous()}, metadata={HOOK_KEY: hook}))
    return path


def load_directions_file(path: str | Path, device: str = "cpu") -> DirectionsDictionary:
    """The directions in one safetensors file (see the module notes for its form)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SourceError(f"directions file {path} does not exist; {_HOW}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            names = list(f.keys())
            if TENSOR_NAME in names:
                name = TENSOR_NAME
            elif len(names) == 1:
                name = names[0]
            else:
                raise SourceError(
                    f"directions file {path} holds {len(names)} tensors ({', '.join(names[:6])}) "
                    f"and none is named {TENSOR_NAME!r}: name the [n, d] tensor {TENSOR_NAME!r} "
                    "or keep only it in the file"
                )
            vectors = f.get_tensor(name)
    except (SafetensorError, OSError) as exc:
        raise SourceError(
            f"could not read {path} as a safetensors file ({str(exc)[:120]}); {_HOW}"
        ) from exc
    hook = meta.get(HOOK_KEY)
    if not hook:
        raise SourceError(
            f"directions file {path} names no hook: its metadata has no {HOOK_KEY!r}; {_HOW}"
        )
    try:
        d = DirectionsDictionary(vectors, hook, source={"kind": "directions", "path": str(path)})
    except DictionaryError as exc:
        raise SourceError(f"directions file {path}: {exc}") from exc
    return d.to(device)


@register_loader("directions")
def load_spec(spec: DictionarySpecFields, device: str) -> Dictionary:
    """A ``directions`` spec: the safetensors file at ``spec.path``."""
    if not spec.path:
        raise SourceError("a directions dictionary needs the path of its safetensors file")
    return load_directions_file(spec.path, device)

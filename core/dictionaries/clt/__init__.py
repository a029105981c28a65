"""Cross-layer transcoders (CLTs): the ``clt`` dictionary family, one layer at a time.

Rooms:

* :mod:`~core.dictionaries.clt.adapter`: :class:`CLTDictionary` (the protocol over one layer;
  activation and normalisation conventions);
* :mod:`~core.dictionaries.clt.reference`: the reference training library's layout
  (``cfg.json`` + one checkpoint);
* :mod:`~core.dictionaries.clt.circuit_tracer`: the circuit-tracer layout
  (``W_enc_{i}``/``W_dec_{i}`` safetensors per layer);
* :mod:`~core.dictionaries.clt.hub`: a local directory or a Hugging Face repo fetched for one layer;
* :mod:`~core.dictionaries.clt.files`: untrusted-file readers, size checks, config fields.

This module loads a layer (:func:`load_clt`: the layout is detected automatically) and registers
the family: the adapter as ``"clt"`` (in :mod:`.adapter`) and the loader for ``"clt"`` specs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.dictionaries.clt.adapter import CLTDictionary
from core.dictionaries.clt.circuit_tracer import holds_circuit_tracer, load_circuit_tracer
from core.dictionaries.clt.files import ACTIVATIONS, NORMALIZATIONS
from core.dictionaries.clt.hub import resolve_root
from core.dictionaries.clt.reference import load_reference
from core.dictionaries.protocol import Dictionary, DictionaryError, check_finite
from core.dictionaries.registry import DictionarySpecFields, register_loader
from core.source_guard import SourceError


def load_clt(
    path_or_repo: str | Path,
    layer: int,
    weights_file: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> CLTDictionary:
    """Load layer ``layer`` of a cross-layer transcoder.

    Args:
        path_or_repo: a local directory (reference or circuit-tracer layout, see
            :mod:`.reference` and :mod:`.circuit_tracer`) or a Hugging Face repo id
            ``org/name`` (optionally followed by ``/sub/folder``) that is not an existing
            local path. Hub downloads fetch
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
    root, repo = resolve_root(path_or_repo, layer, weights_file)
    if not root.is_dir():
        raise DictionaryError(
            f"CLT path {str(root)!r} is not a directory: pass the directory holding cfg.json "
            "and the weights (or W_enc_*/W_dec_* files)"
        )
    source: dict[str, Any] = {"path": str(root)}
    if repo is not None:
        source["repo"] = repo
    if holds_circuit_tracer(root):
        parts = load_circuit_tracer(root, layer)
    else:
        parts = load_reference(root, layer, weights_file)
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


__all__ = ["ACTIVATIONS", "NORMALIZATIONS", "CLTDictionary", "load_clt"]

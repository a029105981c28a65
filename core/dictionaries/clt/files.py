"""Reading a cross-layer transcoder's files: named tensors, configs, hook templates.

Everything here treats the files as untrusted: sizes declared in a config or a
safetensors header are checked against the file and this machine's memory before
anything is allocated, hook templates are filled only after a strict pattern check,
and ``.pt`` files are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from core.dictionaries.protocol import DictionaryError, check_hook_name

#: hooks a CLT reads and writes when its config names no template
DEFAULT_INPUT_TEMPLATE = "blocks.{}.ln2.hook_normalized"
DEFAULT_OUTPUT_TEMPLATE = "blocks.{}.hook_mlp_out"
ACTIVATIONS = ("jumprelu", "relu", "topk", "batchtopk")
NORMALIZATIONS = ("none", "mean_std", "sqrt_d_model")
_NORM_ALIASES = {"auto": "mean_std", "estimated_mean_std": "mean_std"}
_ACT_ALIASES = {"jump_relu": "jumprelu", "batch_topk": "batchtopk", "top_k": "topk"}
#: a hook template: dotted names with at most one ``{}`` (or ``{layer}``) for the layer
_TEMPLATE = re.compile(r"^[A-Za-z0-9_.]{0,200}(?:\{\}|\{layer\})?[A-Za-z0-9_.]{0,200}$")
#: no transformer this project can load has more layers; a config saying so is wrong
MAX_LAYERS = 1024
#: config files (cfg.json, norm_stats.json, config.yaml) larger than this are refused
MAX_CONFIG_BYTES = 256 << 20


def memory_budget() -> int:
    """Bytes one tensor read may take: half of this machine's physical memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 16 GiB
        total = 16 << 30
    return max(total // 2, 1 << 30)


def check_fits(n_elements: int, what: str, where: str) -> None:
    """Refuse an allocation of ``n_elements`` float32 values that cannot fit in memory."""
    need = n_elements * 4
    budget = memory_budget()
    if need > budget:
        raise DictionaryError(
            f"{what} in {where} would take {need / 2**30:,.1f} GiB, more than this machine can "
            f"hold ({budget / 2**30:,.1f} GiB for one tensor): the declared sizes are wrong or "
            "the CLT is too large for this machine; check the config against the weights"
        )


def _indexed_size(shape: tuple[int, ...], index: Any) -> int:
    """Elements of ``tensor[index]`` for an int or a tuple of ints and full slices."""
    parts = index if isinstance(index, tuple) else (index,)
    n = 1
    for i, dim in enumerate(shape):
        part = parts[i] if i < len(parts) else slice(None)
        if isinstance(part, slice):
            n *= dim
    return n


class Reader:
    """Named-tensor access over an open safetensors file or a loaded state dict."""

    def __init__(self, path: Path, handle: Any | None, tensors: dict[str, Tensor] | None):
        self.path = path
        self._h = handle
        self._t = tensors
        self._keys = set(handle.keys()) if handle is not None else set(tensors or {})

    def __contains__(self, name: str) -> bool:
        return name in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._keys))

    def keys(self) -> list[str]:
        return sorted(self._keys)

    def shape(self, name: str) -> tuple[int, ...]:
        if self._h is not None:
            return tuple(self._h.get_slice(name).get_shape())
        assert self._t is not None
        return tuple(self._t[name].shape)

    def get(self, name: str, index: Any = None) -> Tensor:
        """The tensor (or ``tensor[index]``, read without loading the rest for safetensors).

        The size its header declares is checked against memory before anything is read.
        """
        shape = self.shape(name)
        n = math.prod(shape) if index is None else _indexed_size(shape, index)
        check_fits(n, f"tensor {name!r} {list(shape)}", repr(self.path.name))
        try:
            if self._h is not None:
                t = self._h.get_tensor(name) if index is None else self._h.get_slice(name)[index]
            else:
                assert self._t is not None
                t = self._t[name] if index is None else self._t[name][index]
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise DictionaryError(
                f"could not read tensor {name!r} from {self.path.name!r}: {exc}. The file "
                "looks truncated or corrupt: download or export it again"
            ) from exc
        return t.clone() if self._h is None else t

    def checked(self, name: str, expected: tuple[int, ...]) -> Tensor:
        """Read ``name`` and fail with a clear message unless its shape is ``expected``."""
        got = self.shape(name)
        if got != expected:
            raise DictionaryError(
                f"tensor {name!r} in {self.path.name!r} has shape {list(got)}, expected "
                f"{list(expected)}: the weights do not match the config (num_features, d_model, "
                "num_layers); check that cfg.json belongs to these weights"
            )
        return self.get(name)


@contextmanager
def open_weights(path: Path) -> Iterator[Reader]:
    """Open a ``.safetensors`` lazily, or a ``.pt`` with ``torch.load(weights_only=True)``."""
    if path.suffix == ".safetensors":

        def corrupt(exc: Exception) -> DictionaryError:
            return DictionaryError(
                f"{path.name!r} is not a readable safetensors file ({exc}): it is truncated or "
                "corrupt; download or export it again"
            )

        try:
            opened = safe_open(str(path), framework="pt", device="cpu")
            handle = opened.__enter__()
        except SafetensorError as exc:
            raise corrupt(exc) from exc
        except (RuntimeError, OSError) as exc:  # e.g. a file too large to map
            size = path.stat().st_size / 2**30
            raise DictionaryError(
                f"{path.name!r} ({size:,.1f} GiB) cannot be opened: {str(exc)[:200]}. Its header "
                "declares more data than this machine can map: check that it is the CLT's "
                "weights file"
            ) from exc
        try:
            yield Reader(path, handle, None)
        except SafetensorError as exc:
            raise corrupt(exc) from exc
        finally:
            opened.__exit__(None, None, None)
        return
    yield Reader(path, None, load_pt(path))


def load_pt(path: Path) -> dict[str, Tensor]:
    """A plain tensor state dict from a ``.pt``; anything else pickled is refused unrun."""
    obj: Any = None
    errors: list[str] = []
    for mmap in (True, False):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception as exc:  # weights_only refuses any non-tensor global
            errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    else:
        raise DictionaryError(
            f"refused to load {path.name!r}: it is not a plain tensor checkpoint readable with "
            f"torch.load(weights_only=True) (arbitrary pickled objects are never executed): "
            f"{errors[-1]}. Re-export the weights as safetensors"
        )
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise DictionaryError(
            f"{path.name!r} does not hold a state dict of named tensors "
            f"(got {type(obj).__name__}): save model.state_dict() or re-export as safetensors"
        )
    return obj


# ---- config helpers ----------------------------------------------------------------------
def expect_shape(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise DictionaryError(f"{name} has shape {list(t.shape)}, expected {list(shape)}")


def read_config_text(path: Path) -> str:
    """A small config file's text (regular file, at most :data:`MAX_CONFIG_BYTES`)."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise DictionaryError(f"{path.name} in {str(path.parent)!r} is not a regular file")
        if size > MAX_CONFIG_BYTES:
            raise DictionaryError(
                f"{path.name} in {str(path.parent)!r} is {size / 2**20:,.0f} MiB; a CLT config "
                f"file is far smaller (at most {MAX_CONFIG_BYTES >> 20} MiB): use the file "
                "written with the CLT"
            )
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DictionaryError(
            f"cannot read {path.name} in {str(path.parent)!r} as UTF-8 text: {exc}"
        ) from exc


def read_json(path: Path) -> Any:
    text = read_config_text(path)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DictionaryError(
            f"{path.name} in {str(path.parent)!r} is not valid JSON: {exc}"
        ) from exc
    except RecursionError as exc:
        raise DictionaryError(
            f"{path.name} in {str(path.parent)!r} is not valid JSON for a CLT: it is nested "
            "too deeply; use the file written with the CLT"
        ) from exc


def cfg_int(cfg: dict[str, Any], keys: tuple[str, ...], where: str) -> int | None:
    for key in keys:
        if key in cfg and cfg[key] is not None:
            val = cfg[key]
            if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
                raise DictionaryError(f"{where}: {key!r} must be a positive integer, got {val!r}")
            return val
    return None


def activation_name(name: Any, where: str) -> str:
    act = _ACT_ALIASES.get(str(name).lower(), str(name).lower())
    if act not in ACTIVATIONS:
        raise DictionaryError(
            f"{where}: unknown activation_fn {name!r}: supported are {list(ACTIVATIONS)}"
        )
    return act


def normalization_name(name: Any, where: str) -> str:
    norm = _NORM_ALIASES.get(str(name), str(name))
    if norm not in NORMALIZATIONS:
        raise DictionaryError(
            f"{where}: unknown normalization_method {name!r}: supported are "
            f"{list(NORMALIZATIONS)} (legacy 'auto' and 'estimated_mean_std' mean 'mean_std')"
        )
    return norm


def fill_hook(template: Any, layer: int, default: str, key: str) -> str:
    """Fill a hook template: ``blocks.{}.x``, ``blocks.{layer}.x`` or a bare ``x``.

    The template is checked against a strict pattern first (dotted names, one
    placeholder) and filled by plain replacement, never ``str.format``; the result must
    be a hook name (:func:`~core.dictionaries.protocol.check_hook_name`).
    """
    if template is None:
        template = default
    if not isinstance(template, str) or not _TEMPLATE.match(template):
        raise DictionaryError(
            f"hook template {key}={str(template)[:80]!r} is not a hook name template: use "
            f"dotted names with one '{{}}' for the layer, like {default!r}"
        )
    where = f"hook template {key} filled for layer {layer}"
    if "{}" in template:
        return check_hook_name(template.replace("{}", str(layer)), where)
    if "{layer}" in template:
        return check_hook_name(template.replace("{layer}", str(layer)), where)
    if not template.startswith("blocks."):
        return check_hook_name(f"blocks.{layer}.{template}", where)
    raise DictionaryError(
        f"hook template {key}={template!r} has no '{{}}' placeholder for the layer: write it "
        f"like {default!r}"
    )


def topk_k(cfg: dict[str, Any], act: str, where: str) -> float | None:
    if act not in ("topk", "batchtopk"):
        return None
    keys = ("topk_k", "batchtopk_k") if act == "topk" else ("batchtopk_k", "topk_k")
    for key in keys:
        val = cfg.get(key)
        if val is not None:
            if isinstance(val, bool) or not isinstance(val, int | float) or val <= 0:
                raise DictionaryError(f"{where}: {key!r} must be a positive number, got {val!r}")
            return float(val)
    raise DictionaryError(f"{where}: activation_fn {act!r} needs {keys[0]!r} (features per token)")


def norm_stats(root: Path, layer: int, d_model: int) -> tuple[Tensor, Tensor]:
    path = root / "norm_stats.json"
    if not path.is_file():
        raise DictionaryError(
            f"normalization_method is mean_std but {str(root)!r} has no norm_stats.json: copy the "
            "training run's norm_stats.json next to cfg.json (or set normalization_method to "
            "'none' if the inputs were not normalised)"
        )
    stats = read_json(path)
    entry = stats.get(str(layer)) if isinstance(stats, dict) else None
    if entry is None:
        have = sorted(stats, key=lambda s: (len(s), s)) if isinstance(stats, dict) else []
        raise DictionaryError(
            f"norm_stats.json has no entry for layer {layer} (has {have[:8]}): use the "
            "norm_stats.json written for this CLT's training run"
        )
    try:
        mean = torch.tensor(entry["inputs"]["mean"], dtype=torch.float32)
        std = torch.tensor(entry["inputs"]["std"], dtype=torch.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise DictionaryError(
            f"norm_stats.json layer {layer} needs {{'inputs': {{'mean': [...], 'std': [...]}}}} "
            f"with {d_model} numbers each ({exc!r})"
        ) from exc
    for name, t in (("mean", mean), ("std", std)):
        if t.shape != (d_model,):
            raise DictionaryError(
                f"norm_stats.json layer {layer} inputs.{name} has {list(t.shape)} values, "
                f"expected [{d_model}] (d_model)"
            )
        if not torch.isfinite(t).all():
            raise DictionaryError(f"norm_stats.json layer {layer} inputs.{name} is not finite")
    return mean, std


def check_layer(layer: int, num_layers: int) -> None:
    if num_layers > MAX_LAYERS:
        raise DictionaryError(
            f"the CLT config declares {num_layers:,} layers; no supported model has more than "
            f"{MAX_LAYERS:,}: fix num_layers in the config"
        )
    if not 0 <= layer < num_layers:
        raise DictionaryError(
            f"layer {layer} is out of range: this CLT has {num_layers} layers "
            f"(valid 0-{num_layers - 1})"
        )


def require(reader: Reader, names: list[str]) -> None:
    missing = [n for n in names if n not in reader]
    if missing:
        present = reader.keys()
        raise DictionaryError(
            f"{reader.path.name!r} lacks {len(missing)} tensor(s) the layer needs, e.g. "
            f"{missing[:4]} (file has {len(present)} tensors, e.g. {present[:4]}): point "
            "weights_file at the full CLT checkpoint"
        )


def layer_tensors(
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

"""What files and links may ask of the model loaders.

A dictionary's metadata, a runner config or a deep link can carry keyword arguments
for the model loader, a device name and a model directory. None of them may widen what
the loader trusts:

* :func:`model_kwargs` keeps only the device-independent processing options a
  dictionary or spec may set (:data:`MODEL_KWARGS`); everything else, ``trust_remote_code``
  first of all, is dropped (dictionary metadata, reported in a warning) or refused
  (a spec, which the user can fix).
* :func:`refuse_remote_code` refuses a local model directory whose ``config.json`` or
  ``tokenizer_config.json`` maps a class to a Python file (``auto_map``).
* :func:`validate_device` accepts only devices this machine has (:mod:`core.settings`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from core.errors import FeaturescopeError
from core.settings import DeviceError, available_devices, resolve_device

log = logging.getLogger(__name__)


class SourceError(FeaturescopeError, ValueError):
    """A model, dictionary or dataset could not be loaded; the message says how to fix it."""


# ==== model loader keyword arguments ============================================================
def _bool(v: Any) -> bool:
    return isinstance(v, bool)


#: the ``HookedTransformer.from_pretrained`` options a dictionary or spec may set, with
#: the values each accepts (how the weights are processed; nothing about devices,
#: downloads or code)
MODEL_KWARGS: dict[str, Any] = {
    "fold_ln": _bool,
    "center_writing_weights": _bool,
    "center_unembed": _bool,
    "fold_value_biases": _bool,
    "refactor_factored_attn_matrices": _bool,
    "default_prepend_bos": _bool,
    "default_padding_side": lambda v: v in ("left", "right"),
    "dtype": lambda v: v in ("float32", "bfloat16", "float16"),
}


def model_kwargs(kwargs: Any, origin: str, strict: bool) -> dict[str, Any]:
    """The allowlisted part of loader keyword arguments read from ``origin``.

    Args:
        kwargs: the mapping found (anything else counts as empty, or is refused).
        origin: where it was read, for the message (e.g. ``"the dictionary's metadata"``).
        strict: refuse (:class:`SourceError`) instead of dropping with a warning; for
            what the user wrote themselves.
    """
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        bad = {"<not a mapping>": kwargs}
        kwargs = {}
    else:
        bad = {}
    kept: dict[str, Any] = {}
    for key, value in kwargs.items():
        check = MODEL_KWARGS.get(key) if isinstance(key, str) else None
        if check is not None and check(value):
            kept[key] = value
        else:
            bad[str(key)] = value
    if bad:
        shown = ", ".join(f"{k}={v!r}"[:80] for k, v in sorted(bad.items()))
        allowed = ", ".join(MODEL_KWARGS)
        msg = (
            f"model loader options from {origin} not accepted: {shown}. Only these processing "
            f"options are passed on (booleans, dtype a float type name): {allowed}; "
            "trust_remote_code, devices and download options are never taken from files or links"
        )
        if strict:
            raise SourceError(f"{msg}: remove them")
        log.warning("%s; they were dropped", msg)
    return kept


# ==== remote code in model directories ==========================================================
_CODE_CONFIGS = ("config.json", "tokenizer_config.json")


def refuse_remote_code(path: Path) -> None:
    """Refuse a local model directory whose configs map classes to Python files."""
    for name in _CODE_CONFIGS:
        file = path / name
        if not file.is_file():
            continue
        try:
            cfg = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # unreadable: the loader reports it (and runs nothing)
        auto_map = cfg.get("auto_map") if isinstance(cfg, dict) else None
        if auto_map:
            targets = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
            shown = sorted({str(t)[:60] for t in targets})[:3]
            raise SourceError(
                f"the model in {path} asks to run its own Python code ({name} has an auto_map "
                f"to {shown}); featurescope never runs code shipped with a model. Convert it "
                "to a standard Transformers architecture first (load it yourself with "
                "trust_remote_code=True, save_pretrained it as a supported class, and remove "
                "auto_map), or use a TransformerLens model name"
            )


# ==== devices ====================================================================================
def validate_device(text: Any) -> str:
    """The device ``text`` names, checked against this machine before anything loads.

    :func:`core.settings.resolve_device` (``"auto"`` resolves to ``"cuda"`` when CUDA is present,
    else ``"cpu"``), with its refusal raised as a :class:`SourceError`.

    Raises:
        SourceError: anything else (``meta``, ``cuda:7`` on a one-GPU machine, a typo),
            with the list of available devices.
    """
    try:
        return resolve_device(text)
    except DeviceError as exc:
        raise SourceError(str(exc)) from exc


__all__ = [
    "MODEL_KWARGS",
    "SourceError",
    "available_devices",
    "model_kwargs",
    "refuse_remote_code",
    "validate_device",
]

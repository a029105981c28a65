"""Source specs, and the one parser from the strings people type to specs.

A spec is a small dataclass naming a source without loading it (:mod:`core.sources`
loads it). Three kinds: :class:`ModelSpec`, :class:`DictionarySpec`, :class:`DatasetSpec`.
Each has ``to_dict``/``from_dict`` (the form kept in the app's state, its links, the
hosted allowlist, precompute manifests) and a string form read by :func:`parse_model`,
:func:`parse_dictionary` and :func:`parse_dataset`: the command line (``compute`` and
``precompute``), the app's readable links (``?model=...&dictionary=...&dataset=...``),
the hosted allowlist and the notebook API all call these, so one string means one
source everywhere. :func:`spec_text` writes the string back.

The rules, in order (the first that applies wins):

* ``demo`` is the shipped demo source.
* An explicit prefix says what the rest is: ``hub:`` (a hub name), ``local:`` (a path),
  and for dictionaries ``saelens:RELEASE/ID``, ``clt:PATH_OR_REPO`` and
  ``directions:FILE.safetensors`` (given vectors at one hook).
* An existing path is local.
* A string that looks like a path (starts with ``/``, ``./``, ``../`` or ``~``, or ends
  with a data-file suffix such as ``.jsonl``) but does not exist is an error naming it
  (a typo in a path is never sent to a hub).
* Anything else is a hub name: a TransformerLens model name, a SAELens ``RELEASE/ID``,
  a Hugging Face dataset path. So ``NeelNanda/pile-10k`` is the hub dataset unless a
  directory of that name exists here; write ``hub:NeelNanda/pile-10k`` to be explicit.

This module imports neither torch nor any model code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.source_guard import SourceError

#: the demo model (a GGUF file converted once to TransformerLens)
DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"
#: file suffixes of local datasets (a string ending in one is a path, never a hub name)
DATA_SUFFIXES = (".txt", ".md", ".text", ".jsonl", ".json", ".parquet", ".arrow", ".csv")
_PATH_STARTS = ("/", "./", "../", "~", ".\\", "..\\")


class _Spec:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise SourceError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ModelSpec(_Spec):
    """Which language model.

    Attributes:
        kind: ``"demo"`` (embedded SmolLM2), ``"hub"`` (a TransformerLens name such as
            ``gpt2-small``, downloaded by TransformerLens), ``"local"`` (a Hugging Face
            model directory with config, weights and tokenizer).
        name: the TransformerLens name for ``hub``.
        path: the directory for ``local``.
        dtype: float32, bfloat16 or float16.
        device: ``cpu``, ``cuda``... (``auto`` picks CUDA when present); checked by
            :func:`~core.source_guard.validate_device` before anything loads.
        from_pretrained_kwargs: processing options for ``HookedTransformer.from_pretrained``
            (e.g. ``{"center_writing_weights": false}``), only those in
            :data:`~core.source_guard.MODEL_KWARGS`; a dictionary's own
            ``model_from_pretrained_kwargs`` are merged in by
            :func:`~core.sources.load_model`.
    """

    kind: Literal["demo", "hub", "local"] = "demo"
    name: str | None = None
    path: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    from_pretrained_kwargs: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        if self.kind == "demo":
            return DEMO_MODEL_NAME
        return str(self.name if self.kind == "hub" else self.path)


@dataclass
class DictionarySpec(_Spec):
    """Which sparse dictionary.

    Attributes:
        kind: ``"demo"`` (the SAE shipped in ``assets/demo_sae``), ``"saelens"`` (a
            SAELens release and id, downloaded by SAELens), ``"saelens_local"`` (a SAELens
            directory: ``cfg.json`` + ``sae_weights.safetensors``), ``"clt"`` (a
            cross-layer transcoder directory or Hugging Face repo id, with ``layer``),
            ``"directions"`` (a safetensors file of vectors and their hook: activation =
            projection, see :mod:`core.dictionaries.directions`).
        release, sae_id: for ``saelens``.
        path: directory (or repo id for ``clt``).
        layer: the CLT layer whose features are shown.
        weights_file: CLT weights file name inside ``path`` (default: the first found).
    """

    kind: Literal["demo", "saelens", "saelens_local", "clt", "directions"] = "demo"
    release: str | None = None
    sae_id: str | None = None
    path: str | None = None
    layer: int | None = None
    weights_file: str | None = None

    def label(self) -> str:
        if self.kind == "demo":
            return "demo TopK SAE (4096 features)"
        if self.kind == "saelens":
            return f"{self.release} / {self.sae_id}"
        if self.kind == "clt":
            return f"CLT {self.path} layer {self.layer}"
        if self.kind == "directions":
            return f"directions {self.path}"
        return str(self.path)


@dataclass
class DatasetSpec(_Spec):
    """Which text.

    Attributes:
        kind: ``"demo"`` (the standard-library documentation corpus), ``"hub"`` (a
            Hugging Face dataset path, streamed), ``"local"`` (a .txt, .jsonl/.json,
            .parquet file, or a directory written by ``Dataset.save_to_disk``).
        path: dataset path or file.
        split: split for hub datasets.
        name: dataset configuration name for hub datasets.
        text_column: column holding text; detected when ``None``. A column
            ``input_ids`` or ``tokens`` holding ids is used as already tokenised.
        n_tokens: token budget (rows are added until it is reached).
        context_length: tokens per row, BOS included.
        prefix, suffix: text put before and after every document (a chat template's
            turn markers, an instruction), tokenised on its own (without special tokens)
            so its tokens are the same in every document. Part of the token set's identity:
            left out of :meth:`to_dict` while empty, so earlier keys and links stay valid.
    """

    kind: Literal["demo", "hub", "local"] = "demo"
    path: str | None = None
    split: str = "train"
    name: str | None = None
    text_column: str | None = None
    n_tokens: int = 65_536
    context_length: int = 128
    prefix: str = ""
    suffix: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("prefix", "suffix"):
            if not data[name]:
                del data[name]
        return data

    def label(self) -> str:
        return "Python stdlib docs (demo)" if self.kind == "demo" else str(self.path)


SPEC_CLASSES: dict[str, type[_Spec]] = {
    "model": ModelSpec,
    "dictionary": DictionarySpec,
    "dataset": DatasetSpec,
}


# ==== the parser ===============================================================================
def _clean(text: object, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise SourceError(f"the {what} is empty: name one (e.g. 'demo')")
    if any(ord(c) < 32 for c in text):
        raise SourceError(f"the {what} {text!r} contains control characters: type it again")
    return text.strip()


def _prefix(text: str, *names: str) -> tuple[str | None, str]:
    """``(prefix, rest)`` for ``prefix:rest`` with a known prefix, else ``(None, text)``."""
    head, sep, rest = text.partition(":")
    if sep and head in names:
        return head, rest
    return None, text


def looks_like_path(text: str) -> bool:
    """True for a string that names a file or directory rather than a hub entry."""
    return text.startswith(_PATH_STARTS) or text.lower().endswith(DATA_SUFFIXES)


def _local(text: str, what: str, must_exist: bool) -> bool:
    """Whether ``text`` is a local path (see the module rules); raises for a path-looking
    string that does not exist."""
    if Path(text).expanduser().exists():
        return True
    if must_exist or looks_like_path(text):
        raise SourceError(
            f"{what} {text!r}: no such file or directory here; check the path "
            "(or prefix hub: for a name on the hub)"
        )
    return False


def parse_model(text: str, dtype: str = "float32", device: str = "auto") -> ModelSpec:
    """A model string: ``demo``, a TransformerLens name (``gpt2-small``), a Hugging Face
    model directory, or with an explicit ``hub:``/``local:`` prefix."""
    text = _clean(text, "model")
    if text == "demo":
        return ModelSpec(kind="demo", dtype=dtype, device=device)
    prefix, rest = _prefix(text, "hub", "local")
    if prefix == "hub":
        return ModelSpec(kind="hub", name=_clean(rest, "model name"), dtype=dtype, device=device)
    if _local(rest, "model", must_exist=prefix == "local"):
        return ModelSpec(kind="local", path=rest, dtype=dtype, device=device)
    return ModelSpec(kind="hub", name=rest, dtype=dtype, device=device)


def parse_dictionary(
    text: str, clt_layer: int | None = None, clt_weights: str | None = None
) -> DictionarySpec:
    """A dictionary string: ``demo``, a SAELens ``RELEASE/ID``, a SAELens directory,
    ``clt:PATH_OR_REPO`` (with ``clt_layer``), ``directions:FILE.safetensors``, or with a
    ``saelens:``/``local:`` prefix."""
    text = _clean(text, "dictionary")
    if text == "demo":
        return DictionarySpec(kind="demo")
    prefix, rest = _prefix(text, "saelens", "local", "clt", "directions")
    if prefix == "directions":
        rest = _clean(rest, "directions file")
        _local(rest, "directions file", must_exist=True)
        return DictionarySpec(kind="directions", path=rest)
    if prefix == "clt" or clt_layer is not None or clt_weights:
        if clt_layer is None:
            raise SourceError("a cross-layer transcoder needs its layer (--clt-layer N)")
        return DictionarySpec(
            kind="clt",
            path=_clean(rest, "CLT path"),
            layer=clt_layer,
            weights_file=clt_weights or None,
        )
    if prefix != "saelens" and _local(rest, "dictionary", must_exist=prefix == "local"):
        return DictionarySpec(kind="saelens_local", path=rest)
    release, sep, sae_id = rest.partition("/")
    if not sep or not release or not sae_id:
        raise SourceError(
            f"dictionary {text!r}: use demo, a SAELens RELEASE/ID (e.g. "
            "gpt2-small-res-jb/blocks.8.hook_resid_pre) or a local SAELens directory"
        )
    return DictionarySpec(kind="saelens", release=release, sae_id=sae_id)


def parse_dataset(
    text: str, n_tokens: int = 65_536, context_length: int = 128, **fields: Any
) -> DatasetSpec:
    """A dataset string: ``demo``, a Hugging Face dataset path (``NeelNanda/pile-10k``), a
    local file or ``save_to_disk`` directory, or with an explicit ``hub:``/``local:``
    prefix. ``fields``: other :class:`DatasetSpec` fields (split, name, text_column)."""
    text = _clean(text, "dataset")
    common = dict(n_tokens=n_tokens, context_length=context_length, **fields)
    if text == "demo":
        return DatasetSpec(kind="demo", **common)
    prefix, rest = _prefix(text, "hub", "local")
    if prefix == "hub":
        return DatasetSpec(kind="hub", path=_clean(rest, "dataset path"), **common)
    if _local(rest, "dataset", must_exist=prefix == "local"):
        return DatasetSpec(kind="local", path=rest, **common)
    return DatasetSpec(kind="hub", path=rest, **common)


def spec_text(spec: ModelSpec | DictionarySpec | DatasetSpec) -> str:
    """The string the parser reads back to ``spec``'s source (other fields such as dtype,
    token budget or CLT layer travel separately). Prefixes are written out, so the string
    means the same source on any machine."""
    if spec.kind == "demo":
        return "demo"
    if isinstance(spec, ModelSpec):
        return f"hub:{spec.name}" if spec.kind == "hub" else f"local:{spec.path}"
    if isinstance(spec, DictionarySpec):
        if spec.kind == "saelens":
            return f"saelens:{spec.release}/{spec.sae_id}"
        if spec.kind == "directions":
            return f"directions:{spec.path}"
        return f"clt:{spec.path}" if spec.kind == "clt" else f"local:{spec.path}"
    return f"hub:{spec.path}" if spec.kind == "hub" else f"local:{spec.path}"

"""Sources: turn what a user names (hub id, local path, the demo) into live objects.

Three kinds of source, each described by a spec of :mod:`core.specs` (which also parses
the strings people type) and loaded by one function here:

* :class:`ModelSpec` -> :func:`load_model` -> :class:`~core.models.ModelAdapter`
* :class:`DictionarySpec` -> :func:`load_dictionary` -> :class:`~core.dictionaries.Dictionary`
* :class:`DatasetSpec` -> :func:`load_tokens` -> token tensor + identity

Pages never open files or call hubs themselves; they go through here. Every failure
is a :class:`SourceError` whose message names the problem and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import transformer_lens.loading_from_pretrained as tl_loading
from safetensors.torch import load_file
from torch import Tensor
from transformer_lens import HookedTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.dataset_files import (
    json_records,
    jsonl_records,
    open_regular,
    text_file_pieces,
    text_pieces,
    token_row,
)
from core.demo_corpus import build_demo_corpus
from core.dictionaries.loaders import loader_for
from core.dictionaries.protocol import Dictionary, DictionaryError
from core.errors import short_message
from core.gguf_llama import load_demo_model
from core.models import ModelAdapter
from core.releases import check_model_name, check_release, releases_for
from core.settings import DTYPE_NAMES, data_dir, torch_dtype
from core.source_guard import SourceError, model_kwargs, refuse_remote_code, validate_device
from core.specs import DEMO_MODEL_NAME, DatasetSpec, DictionarySpec, ModelSpec
from core.storage import save_tensors

CACHE_ROOT = data_dir()  # converted demo model, corpus, token sets
log = logging.getLogger(__name__)


# ==== models ===================================================================================
def _device(device: str) -> str:
    return validate_device(device)


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPE_NAMES:
        raise SourceError(f"unknown dtype {name!r}: use float32, bfloat16 or float16")
    return torch_dtype(name)


_LOADED: weakref.WeakValueDictionary[str, ModelAdapter] = weakref.WeakValueDictionary()
_LOADING: dict[str, threading.Lock] = {}
_LOADING_GUARD = threading.Lock()


def load_model(spec: ModelSpec, dictionary_kwargs: dict[str, Any] | None = None) -> ModelAdapter:
    """Load the model a spec names, or return the copy this process already holds.

    One copy per (spec, processing kwargs) lives while anything uses it: workspaces that
    pair the same model with different dictionaries or datasets share it (and its lock),
    so a shared accelerator holds each model once.

    Args:
        spec: what to load.
        dictionary_kwargs: ``model_from_pretrained_kwargs`` from the dictionary's
            metadata (how the model was processed when the dictionary was trained);
            they override the defaults, and ``spec.from_pretrained_kwargs`` override them.
            Only the processing options of :data:`~core.source_guard.MODEL_KWARGS` are
            used: others in the dictionary are dropped with a warning, others in the spec
            refused. The spec's dtype wins over the dictionary's.
    """
    kwargs = {
        **model_kwargs(dictionary_kwargs, "the dictionary's metadata", strict=False),
        **model_kwargs(spec.from_pretrained_kwargs, "the model's from_pretrained_kwargs", True),
    }
    kwargs.pop("dtype", None)  # spec.dtype decides
    resolved = {**spec.to_dict(), "device": _device(spec.device)}
    key = json.dumps({"spec": resolved, "kwargs": kwargs}, sort_keys=True, default=str)
    with _LOADING_GUARD:
        lock = _LOADING.setdefault(key, threading.Lock())
    with lock:  # two sessions asking at once load it once
        model = _LOADED.get(key)
        if model is None:
            model = _load_model(spec, kwargs)
            _LOADED[key] = model
        return model


def _load_model(spec: ModelSpec, kwargs: dict[str, Any]) -> ModelAdapter:
    dtype = _dtype(spec.dtype)
    device = _device(spec.device)
    if spec.kind == "demo":
        model = load_demo_model(CACHE_ROOT, device=device, dtype=dtype)
        return ModelAdapter(model, {"kind": "demo", "name": DEMO_MODEL_NAME})
    if spec.kind == "hub":
        if not spec.name:
            raise SourceError("a hub model needs a TransformerLens name, e.g. 'gpt2-small'")
        check_model_name(spec.name)  # a few close names instead of hundreds
        try:
            model = HookedTransformer.from_pretrained(
                spec.name, device=device, dtype=spec.dtype, **kwargs
            )
        except (OSError, ValueError) as exc:
            raise SourceError(
                f"could not load model {spec.name!r} from the hub: {str(exc)[:300]}. Check the name "
                "(TransformerLens names such as 'gpt2-small', 'pythia-70m') and the network; "
                "without internet use a local model directory instead"
            ) from exc
        return ModelAdapter(model, {"kind": "hub", "name": spec.name, "kwargs": kwargs})
    if spec.kind == "local":
        return _load_local_model(spec, dtype, device, kwargs)
    raise SourceError(f"unknown model kind {spec.kind!r}: use demo, hub or local")


def _load_local_model(
    spec: ModelSpec, dtype: torch.dtype, device: str, kwargs: dict[str, Any]
) -> ModelAdapter:
    """A Hugging Face model directory, converted with TransformerLens's own converters."""
    if not spec.path:
        raise SourceError("a local model needs the path of a Hugging Face model directory")
    # absolute: TransformerLens treats some relative names (e.g. "Qwen/...") as hub
    # models that need remote code
    path = Path(spec.path).expanduser().absolute()
    if not path.is_dir():
        raise SourceError(f"model directory {path} does not exist")
    if not (path / "config.json").exists():
        raise SourceError(
            f"{path} has no config.json: point at a Hugging Face model directory "
            "(config.json, weights, tokenizer files), e.g. one written by save_pretrained"
        )
    refuse_remote_code(path)

    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, dtype=dtype, trust_remote_code=False
        )
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # missing files, bad JSON, truncated weights, refused pickles
        if "weights only load failed" in str(exc).lower():
            msg = (
                "its weights file is a pickle that holds more than tensors, so it was refused "
                "unrun (torch.load(weights_only=True)): re-save the model with safetensors"
            )
        else:
            msg = (
                f"{short_message(exc).splitlines()[0].rstrip('. ')}. Check that config.json, the "
                "weights and the tokenizer files are complete (copy or download the model "
                "again, or re-save it with save_pretrained)"
            )
        raise SourceError(f"could not read the model in {path}: {msg}") from exc
    fold_ln = kwargs.pop("fold_ln", True)
    process = {
        "center_writing_weights": kwargs.pop("center_writing_weights", True),
        "center_unembed": kwargs.pop("center_unembed", True),
        "fold_value_biases": kwargs.pop("fold_value_biases", True),
        "refactor_factored_attn_matrices": kwargs.pop("refactor_factored_attn_matrices", False),
    }
    padding_side = kwargs.pop("default_padding_side", None)
    try:
        cfg = tl_loading.get_pretrained_model_config(
            str(path),
            fold_ln=fold_ln,
            device=device,
            dtype=dtype,
            default_prepend_bos=kwargs.pop("default_prepend_bos", None),
        )
        state = tl_loading.get_pretrained_state_dict(str(path), cfg, hf_model, dtype=dtype)
    except (KeyError, ValueError, AttributeError, NotImplementedError) as exc:
        raise SourceError(
            f"TransformerLens cannot convert the model in {path} "
            f"({getattr(hf_model.config, 'architectures', ['?'])[0]}): {str(exc)[:300]}"
        ) from exc
    model = HookedTransformer(
        cfg, tokenizer, move_to_device=False, default_padding_side=padding_side
    )
    model.load_and_process_state_dict(state, fold_ln=fold_ln, **process)
    model.to(device)
    return ModelAdapter(model, {"kind": "local", "name": path.name, "path": str(path)})


# ==== dictionaries =============================================================================
def load_dictionary(spec: DictionarySpec, device: str = "cpu") -> Dictionary:
    """Load a dictionary with the loader its family registered for ``spec.kind``
    (:mod:`core.dictionaries.loaders`); shape and hook mismatches are checked against the
    model later."""
    device = _device(device)
    try:
        loader = loader_for(spec.kind)
    except DictionaryError as exc:
        raise SourceError(str(exc)) from None
    return loader(spec, device)


def model_kwargs_for(dictionary: Dictionary) -> dict[str, Any]:
    """``model_from_pretrained_kwargs`` the dictionary was trained with (SAELens metadata),
    reduced to the processing options of :data:`~core.source_guard.MODEL_KWARGS` (the
    rest, e.g. ``trust_remote_code`` or ``n_devices``, is dropped with a warning)."""
    sae = getattr(dictionary, "sae", None)
    if sae is None:
        return {}
    kwargs = sae.cfg.metadata.get("model_from_pretrained_kwargs", None)
    return model_kwargs(kwargs, "the dictionary's metadata", strict=False)


def saelens_releases(model: str | None = None) -> dict[str, dict[str, Any]]:
    """Pretrained SAELens releases (read offline from the directory inside sae-lens).

    Returns ``{release: {"model": ..., "repo_id": ..., "ids": [...]}}``, optionally
    only those for ``model`` (any of its names: ``gpt2-small``, ``gpt2``; see
    :mod:`core.releases`), sorted by release name.
    """
    return {name: rel.to_dict() for name, rel in releases_for(model).items()}


# ==== datasets ==================================================================================
def _validate_dataset(spec: DatasetSpec) -> None:
    if not isinstance(spec.n_tokens, int) or spec.n_tokens < 1:
        raise SourceError(f"the token budget must be a positive integer, got {spec.n_tokens!r}")
    if spec.n_tokens > 200_000_000:
        raise SourceError(
            f"a token budget of {spec.n_tokens:,} is too large; use at most 200,000,000"
        )
    if not isinstance(spec.context_length, int) or not 2 <= spec.context_length <= 1 << 16:
        raise SourceError(
            f"context_length must be between 2 and 65536, got {spec.context_length!r}"
        )
    for name in ("prefix", "suffix"):
        value = getattr(spec, name)
        if not isinstance(value, str) or len(value) > 10_000:
            raise SourceError(
                f"the dataset {name} must be text of at most 10,000 characters, "
                f"got {type(value).__name__} {str(value)[:40]!r}"
            )


def _rows_from_stream(
    ids: Iterable[list[int]],
    spec: DatasetSpec,
    bos: int | None,
    sep: int | None,
    allow_empty: bool = False,
) -> Tensor | None:
    """Concatenate documents (separated by ``sep``) and cut rows, BOS first, SAELens-style."""
    width = spec.context_length - (1 if bos is not None else 0)
    n_rows = max(1, spec.n_tokens // spec.context_length)
    rows: list[list[int]] = []
    buf: list[int] = []
    for doc in ids:
        buf.extend(doc)
        if sep is not None:
            buf.append(sep)
        while len(buf) >= width and len(rows) < n_rows:
            rows.append(([bos] if bos is not None else []) + buf[:width])
            buf = buf[width:]
        if len(rows) >= n_rows:
            break
    if not rows:
        if allow_empty:
            return None
        raise SourceError(
            f"the dataset holds fewer than {spec.context_length} tokens: use a shorter context length "
            "or more text"
        )
    return torch.tensor(rows, dtype=torch.long)


def _texts(records: Iterable[dict[str, Any]], column: str | None) -> Iterator[tuple[int, str, Any]]:
    """``(row number, column, value)`` of each record's text (or token id) column."""
    for row, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise SourceError(f"row {row} is {type(rec).__name__}, not a record of named columns")
        if column is None:
            for cand in ("input_ids", "tokens", "text", "content", "document", "sentence"):
                if cand in rec:
                    column = cand
                    break
            else:
                strings = [k for k, v in rec.items() if isinstance(v, str)]
                if not strings:
                    raise SourceError(
                        f"cannot find a text column among {sorted(rec)}: set text_column"
                    )
                column = strings[0]
        if column not in rec:
            raise SourceError(
                f"column {column!r} is missing in row {row}; columns are {sorted(rec)[:20]}"
            )
        yield row, column, rec[column]


def _records(spec: DatasetSpec) -> Iterator[dict[str, Any]]:
    if spec.kind == "demo":
        yield from build_demo_corpus(CACHE_ROOT)
        return
    if not spec.path:
        raise SourceError("a dataset needs a path (a hub dataset path or a local file)")
    if spec.kind == "hub":
        import datasets

        try:
            ds = datasets.load_dataset(spec.path, spec.name, split=spec.split, streaming=True)
        except Exception as exc:
            raise SourceError(
                f"could not open dataset {spec.path!r} (split {spec.split!r}): {short_message(exc)}. "
                "Without internet use a local file"
            ) from exc
        yield from ds
        return
    path = Path(spec.path).expanduser()
    if not path.exists() and not path.is_symlink():
        raise SourceError(f"dataset file {path} does not exist")
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise SourceError(
                f"{path} is not a dataset directory written by Dataset.save_to_disk: {short_message(exc)}"
            ) from exc
        if isinstance(ds, datasets.DatasetDict):
            if spec.split not in ds:
                raise SourceError(f"{path} has splits {list(ds)}, not {spec.split!r}")
            ds = ds[spec.split]
        yield from ds
        return
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:  # read by load_tokens piece by piece (text_file_pieces)
        raise AssertionError("text files are read by text_file_pieces")
    if suffix == ".jsonl":
        yield from jsonl_records(path)
    elif suffix == ".json":
        yield from json_records(path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        with open_regular(path) as fh:
            try:
                table = pq.ParquetFile(fh)
                for batch in table.iter_batches(batch_size=1024):
                    yield from batch.to_pylist()
            except SourceError:
                raise
            except Exception as exc:
                raise SourceError(
                    f"{path} is not a readable Parquet file: {short_message(exc)}"
                ) from exc
    else:
        raise SourceError(
            f"unsupported dataset file type {suffix!r}: use .txt, .jsonl, .json or .parquet"
        )


TEXT_SUFFIXES = (".txt", ".md", ".text")


def _segments(spec: DatasetSpec) -> Iterator[tuple[int, str, Any, bool]]:
    """``(row, column, value, ends_doc)`` for every piece of text or row of token ids."""
    path = Path(spec.path or "").expanduser()
    if spec.kind == "local" and path.suffix.lower() in TEXT_SUFFIXES and not path.is_dir():
        if not path.exists() and not path.is_symlink():
            raise SourceError(f"dataset file {path} does not exist")
        for n, (piece, ends) in enumerate(text_file_pieces(path)):
            yield n, "text", piece, ends
        return
    for row, column, value in _texts(_records(spec), spec.text_column):
        yield row, column, value, True


def load_tokens(spec: DatasetSpec, model: ModelAdapter) -> tuple[Tensor, dict[str, Any]]:
    """Token rows ``[n, context_length]`` for a dataset, tokenised once and cached.

    Text is tokenised without special tokens, documents are joined with the BOS
    token as separator and cut into rows of ``context_length`` with BOS first (the
    SAELens convention); ``spec.prefix`` and ``spec.suffix`` are put around every
    document, before the separator. Pre-tokenised data (``input_ids``/``tokens`` columns) is
    used as is (rows longer than the context are cut, shorter ones dropped).
    The result is cached under ``cache/tokens`` keyed by the spec and the tokenizer.
    """
    _validate_dataset(spec)
    tok = model.tokenizer
    bos = model.bos_token_id
    tok_id = hashlib.sha256(
        json.dumps([model.name, model.d_vocab, bos, getattr(tok, "name_or_path", None)]).encode()
    ).hexdigest()[:16]
    cache_file = CACHE_ROOT / "tokens" / f"{spec.key()}-{tok_id}.safetensors"
    identity = {**spec.to_dict(), "tokenizer": tok_id}
    if spec.kind != "hub" and cache_file.exists():
        try:
            tokens = load_file(str(cache_file))["tokens"]
            return tokens, identity
        except Exception:
            with contextlib.suppress(OSError):
                cache_file.unlink(missing_ok=True)

    ready: list[list[int]] = []
    sep = [] if bos is None else [bos]
    if (spec.prefix or spec.suffix) and tok is None:
        raise SourceError("a dataset prefix or suffix needs the model's tokenizer: this has none")
    pre, suf = (
        tok(text, add_special_tokens=False)["input_ids"] if text else []
        for text in (spec.prefix, spec.suffix)
    )

    def ids() -> Iterator[list[int]]:
        """Token ids piece by piece, ``sep`` after each document; consumed only until the
        budget is full, so a file is read no further than that."""
        starts_doc = True
        for row, column, value, ends_doc in _segments(spec):
            if column in ("input_ids", "tokens") and (pre or suf):
                raise SourceError(
                    f"this dataset is already tokenised (column {column!r}): a prefix or suffix "
                    "applies to text; add it to the token ids before, or drop it"
                )
            if column in ("input_ids", "tokens"):
                ids_ = token_row(value, column, row, model.d_vocab)
                if len(ids_) >= spec.context_length:  # already a row: keep it as it is
                    ready.append(ids_[: spec.context_length])
                    if len(ready) * spec.context_length >= spec.n_tokens:
                        return
                    continue
                yield ids_ + sep
                continue
            if tok is None:
                raise SourceError("this model has no tokenizer: use a pre-tokenised dataset")
            if starts_doc and pre:
                yield pre
            starts_doc = ends_doc
            for piece in text_pieces(str(value)):
                # a lone surrogate (possible in JSON text) has no UTF-8 form: "?" stands in,
                # as a .txt file's undecodable bytes do
                text = piece.encode("utf-8", "replace").decode("utf-8")
                yield tok(text, add_special_tokens=False)["input_ids"]
            if ends_doc:
                yield suf + sep

    streamed = _rows_from_stream(ids(), spec, bos, None, allow_empty=True)
    parts = [
        t
        for t in (torch.tensor(ready, dtype=torch.long) if ready else None, streamed)
        if t is not None
    ]
    if not parts:
        raise SourceError(
            f"the dataset holds fewer than {spec.context_length} tokens: use a shorter context length "
            "or more text"
        )
    tokens = torch.cat(parts)[: max(1, spec.n_tokens // spec.context_length)]
    if tokens.max() >= model.d_vocab or tokens.min() < 0:
        raise SourceError(
            f"token ids go up to {int(tokens.max())} but the model's vocabulary has {model.d_vocab} "
            "entries: the dataset was tokenised for another model"
        )
    if spec.kind != "hub":
        save_tensors(
            {"tokens": tokens},
            cache_file,
            "the dataset will be tokenised again next time",
            "FEATURESCOPE_DATA_DIR",
        )
    return tokens, identity


def load_sources(
    model_spec: ModelSpec, dictionary_spec: DictionarySpec, dataset_spec: DatasetSpec
) -> tuple[ModelAdapter, Dictionary, Tensor, dict[str, Any]]:
    """Load all three: the dictionary first, so the model is processed the way it was
    trained with; then the tokens with the model's tokenizer.

    Returns ``(model, dictionary, tokens, dataset identity)``.
    """
    if dictionary_spec.kind == "saelens" and dictionary_spec.release:
        # a release made for another model is refused before anything is downloaded
        named = DEMO_MODEL_NAME if model_spec.kind == "demo" else model_spec.name
        if model_spec.kind in ("demo", "hub") and named:
            check_release(dictionary_spec.release, dictionary_spec.sae_id, named)
    dictionary = load_dictionary(dictionary_spec, device=model_spec.device)
    model = load_model(model_spec, dictionary_kwargs=model_kwargs_for(dictionary))
    tokens, identity = load_tokens(dataset_spec, model)
    return model, dictionary, tokens, identity

"""The offline demo corpus: English prose from CPython's own documentation.

Every Python installation carries two bodies of documentation that need no download:

* ``pydoc_data.topics.topics``: the language reference topics that ``help("assert")`` shows
  (about 0.5 MB; a pure data module, the only one this module imports);
* the docstrings of the standard library: modules, public classes, functions and methods. They
  are read by *parsing* the ``.py`` sources under ``sysconfig.get_paths()["stdlib"]`` with
  :mod:`ast`; no stdlib module is imported (importing ``antigravity`` opens a browser, ``this``
  prints, ``tkinter`` needs a display ...).

Processing, all deterministic for a given Python installation:

1. Sources are visited in sorted relative-path order; test packages (``test/``, ``tests/``,
   ``idle_test/``), ``site-packages``/``dist-packages`` and build directories are skipped.
2. Each docstring (``ast.get_docstring``, cleaned) and each topic is split into paragraphs at blank
   lines; trailing whitespace is stripped from every line.
3. Paragraphs shorter than :data:`MIN_PARAGRAPH_CHARS` characters or with fewer than
   :data:`MIN_PARAGRAPH_WORDS` alphabetic words are dropped; the rest are deduplicated globally on
   their whitespace-normalised text (inherited and copied docstrings repeat a lot), the first
   occurrence wins (topics first, sorted by topic name, then modules sorted by name).
4. One document per topic and per module: its surviving paragraphs joined by blank lines.

The result is stored with :meth:`datasets.Dataset.save_to_disk` in ``cache_dir/demo_corpus/``
(written to a temporary directory and renamed into place) together with ``corpus_info.json``
(documents, characters, sha256 of the text, Python version, build parameters). Later calls load it
from there unless the Python version or the build parameters changed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import tokenize
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets

#: sub-directory of ``cache_dir`` holding the saved dataset
DEMO_CORPUS_SUBDIR = "demo_corpus"
#: the JSON summary stored inside the dataset directory
CORPUS_INFO_FILE = "corpus_info.json"
#: bump when the extraction changes; an older cache is then rebuilt
CORPUS_FORMAT_VERSION = 1
#: paragraphs shorter than this (characters, after stripping) are dropped
MIN_PARAGRAPH_CHARS = 40
#: paragraphs with fewer alphabetic words than this are dropped (tables, bare signatures)
MIN_PARAGRAPH_WORDS = 5

#: directory names never descended into
SKIP_DIRS = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "lib-dynload",
        "_bundled",
    }
)

_WORD = re.compile(r"[A-Za-z]{2,}")
_SPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------


def split_paragraphs(text: str) -> list[str]:
    """Split text into paragraphs at blank lines, stripping trailing whitespace of each line.

    Indentation inside a paragraph (code examples, grammar rules) is kept; each paragraph as a
    whole is dedented only by what ``ast.get_docstring`` / the topic text already removed.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        line = line.rstrip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


def keep_paragraph(paragraph: str) -> bool:
    """True for a paragraph long and wordy enough to count as prose."""
    stripped = paragraph.strip()
    return (
        len(stripped) >= MIN_PARAGRAPH_CHARS and len(_WORD.findall(stripped)) >= MIN_PARAGRAPH_WORDS
    )


def _dedup_key(paragraph: str) -> str:
    return _SPACE.sub(" ", paragraph.strip())


def iter_stdlib_sources(stdlib_dir: Path) -> Iterator[tuple[str, Path]]:
    """Yield ``(module_name, path)`` for every ``.py`` file of the stdlib, sorted by path.

    Test packages, third-party directories, build directories (``config-*``) and the
    platform-specific ``_sysconfigdata_*`` modules are skipped.
    """
    found: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(stdlib_dir):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("config-"))
        for name in files:
            if not name.endswith(".py") or name.startswith("_sysconfigdata"):
                continue
            path = Path(root) / name
            rel = path.relative_to(stdlib_dir).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.append((".".join(parts), path))
    found.sort(key=lambda item: item[1].relative_to(stdlib_dir).as_posix())
    yield from found


def iter_docstrings(tree: ast.Module) -> Iterator[str]:
    """Yield the docstrings of a parsed module in source order.

    The module docstring, then every public (name not starting with ``_``) top-level class and
    function, and the public methods and nested classes of public classes. Functions nested in
    functions are private by nature and skipped.
    """
    module_doc = ast.get_docstring(tree, clean=True)
    if module_doc:
        yield module_doc

    def visit(body: Iterable[ast.stmt]) -> Iterator[str]:
        for node in body:
            if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc
            if isinstance(node, ast.ClassDef):
                yield from visit(node.body)

    yield from visit(tree.body)


def _parse(path: Path) -> ast.Module | None:
    """Parse a source file honouring its encoding cookie; None when it does not parse."""
    try:
        with tokenize.open(path) as fh:
            source = fh.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules
            return ast.parse(source, filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return None


def collect_raw_documents(stdlib_dir: Path | None = None) -> list[tuple[str, list[str]]]:
    """Gather ``(source, paragraphs)`` for every topic and module, before filtering and dedup.

    Sources are named ``topic:<name>`` and ``module:<dotted.name>``; topics come first (sorted by
    name), then modules (sorted by path).
    """
    from pydoc_data.topics import topics  # pure data module: safe to import

    stdlib_dir = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    raw: list[tuple[str, list[str]]] = [
        (f"topic:{name}", split_paragraphs(topics[name])) for name in sorted(topics)
    ]
    for module, path in iter_stdlib_sources(stdlib_dir):
        tree = _parse(path)
        if tree is None:
            continue
        paragraphs = [p for doc in iter_docstrings(tree) for p in split_paragraphs(doc)]
        if paragraphs:
            raw.append((f"module:{module}", paragraphs))
    return raw


def build_documents(raw: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Filter short paragraphs, deduplicate globally (first wins) and join them into documents.

    Returns:
        ``[{"source": ..., "text": ...}, ...]`` in the order of ``raw``; sources whose paragraphs
        all went away are left out.
    """
    seen: set[str] = set()
    documents: list[dict[str, str]] = []
    for source, paragraphs in raw:
        kept: list[str] = []
        for paragraph in paragraphs:
            if not keep_paragraph(paragraph):
                continue
            key = _dedup_key(paragraph)
            if key in seen:
                continue
            seen.add(key)
            kept.append(paragraph)
        if kept:
            documents.append({"source": source, "text": "\n\n".join(kept)})
    return documents


def corpus_sha256(texts: Iterable[str]) -> str:
    """sha256 over the documents' UTF-8 text, each followed by a NUL byte (order matters)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------


def _build_params() -> dict[str, Any]:
    """What the cached corpus depends on; a mismatch triggers a rebuild."""
    return {
        "corpus_format_version": CORPUS_FORMAT_VERSION,
        "python_version": ".".join(map(str, sys.version_info[:3])),
        "min_paragraph_chars": MIN_PARAGRAPH_CHARS,
        "min_paragraph_words": MIN_PARAGRAPH_WORDS,
    }


def read_corpus_info(cache_dir: Path) -> dict[str, Any] | None:
    """The stored ``corpus_info.json`` of ``cache_dir/demo_corpus``, or None when absent/broken."""
    path = Path(cache_dir) / DEMO_CORPUS_SUBDIR / CORPUS_INFO_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_corpus(target: Path, documents: list[dict[str, str]]) -> dict[str, Any]:
    texts = [doc["text"] for doc in documents]
    dataset = datasets.Dataset.from_dict(
        {"source": [doc["source"] for doc in documents], "text": texts}
    )
    dataset.save_to_disk(str(target))
    info = {
        **_build_params(),
        "n_documents": len(texts),
        "n_characters": sum(len(t) for t in texts),
        "n_topic_documents": sum(doc["source"].startswith("topic:") for doc in documents),
        "n_module_documents": sum(doc["source"].startswith("module:") for doc in documents),
        "text_sha256": corpus_sha256(texts),
        "sha256_definition": "sha256 of each document's UTF-8 text followed by a NUL byte",
    }
    (target / CORPUS_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def build_demo_corpus(cache_dir: Path, rebuild: bool = False) -> datasets.Dataset:
    """Return the demo corpus, building and caching it under ``cache_dir/demo_corpus/`` once.

    Args:
        cache_dir: the app's cache root (for example ``cache/``).
        rebuild: rebuild even when a valid cache exists (the cache is replaced atomically).

    Returns:
        A :class:`datasets.Dataset` with columns ``text`` (one document per stdlib module or
        language-reference topic) and ``source`` (``"topic:<name>"`` / ``"module:<name>"``),
        always loaded from the cache directory (memory-mapped).
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / DEMO_CORPUS_SUBDIR
    info = read_corpus_info(cache_dir)
    valid = info is not None and all(info.get(k) == v for k, v in _build_params().items())
    if rebuild or not valid:
        documents = build_documents(collect_raw_documents())
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_CORPUS_SUBDIR}-", dir=cache_dir))
        tmp.chmod(0o755)
        try:
            _write_corpus(tmp, documents)
            if target.exists():
                stale = target.with_name(f".{DEMO_CORPUS_SUBDIR}-stale-{os.getpid()}")
                os.replace(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))

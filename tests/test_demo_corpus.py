"""Tests of the offline demo corpus built from CPython's own documentation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest

from core import demo_corpus
from core.demo_corpus import (
    CORPUS_INFO_FILE,
    DEMO_CORPUS_SUBDIR,
    build_demo_corpus,
    corpus_sha256,
    keep_paragraph,
    read_corpus_info,
    split_paragraphs,
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus_cache")


@pytest.fixture(scope="module")
def corpus(cache_dir: Path) -> datasets.Dataset:
    return build_demo_corpus(cache_dir)


def test_split_paragraphs_and_filter() -> None:
    text = "First line\nsecond line   \n\n\n  indented code\n\nshort\n"
    assert split_paragraphs(text) == ["First line\nsecond line", "  indented code", "short"]
    assert not keep_paragraph("Too short to keep.")
    assert not keep_paragraph("x" * 80)  # long but not prose
    assert keep_paragraph("Return the number of items in a container, counting duplicates.")


def test_size_and_content(corpus: datasets.Dataset, cache_dir: Path) -> None:
    info = read_corpus_info(cache_dir)
    assert info is not None
    texts = list(corpus["text"])
    sources = list(corpus["source"])
    assert info["n_documents"] == len(texts) > 300
    assert info["n_characters"] == sum(map(len, texts)) > 1_000_000
    assert info["text_sha256"] == corpus_sha256(texts)
    assert info["n_topic_documents"] > 50 and info["n_module_documents"] > 300
    assert "text" in corpus.column_names
    by_source = dict(zip(sources, texts, strict=True))
    assert "assert" in by_source["topic:assert"]
    assert "JSON" in by_source["module:json"]
    # test packages and third-party code are excluded
    for source in sources:
        parts = source.split(":", 1)[1].split(".")
        assert not {"test", "tests", "idle_test", "site-packages"}.intersection(parts), source
    # deterministic order: topics (sorted) before modules
    topics = [s for s in sources if s.startswith("topic:")]
    assert sources[: len(topics)] == sorted(topics)


def test_no_duplicate_or_short_paragraphs(corpus: datasets.Dataset) -> None:
    seen: set[str] = set()
    n_paragraphs = 0
    for text in corpus["text"]:
        for paragraph in split_paragraphs(text):
            key = " ".join(paragraph.split())
            assert key not in seen, paragraph[:80]
            assert keep_paragraph(paragraph), paragraph
            seen.add(key)
            n_paragraphs += 1
    assert n_paragraphs > 5000


def test_deterministic_rebuild(corpus: datasets.Dataset, cache_dir: Path, tmp_path: Path) -> None:
    first = read_corpus_info(cache_dir)
    second_ds = build_demo_corpus(tmp_path)
    second = read_corpus_info(tmp_path)
    assert first is not None and second is not None
    assert first["text_sha256"] == second["text_sha256"]
    assert list(second_ds["text"]) == list(corpus["text"])
    assert list(second_ds["source"]) == list(corpus["source"])


def test_loads_from_cache(
    corpus: datasets.Dataset, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was rebuilt instead of loaded from the cache")

    monkeypatch.setattr(demo_corpus, "collect_raw_documents", fail)
    again = build_demo_corpus(cache_dir)
    assert list(again["text"]) == list(corpus["text"])
    # memory-mapped from the cache directory, nothing left over from the atomic write
    target = cache_dir / DEMO_CORPUS_SUBDIR
    assert all(Path(f["filename"]).parent == target for f in again.cache_files)
    assert sorted(p.name for p in cache_dir.iterdir()) == [DEMO_CORPUS_SUBDIR]


def test_outdated_cache_is_rebuilt(
    corpus: datasets.Dataset, cache_dir: Path, tmp_path: Path
) -> None:
    shutil.copytree(cache_dir / DEMO_CORPUS_SUBDIR, tmp_path / DEMO_CORPUS_SUBDIR)
    info_path = tmp_path / DEMO_CORPUS_SUBDIR / CORPUS_INFO_FILE
    info = json.loads(info_path.read_text())
    info["python_version"] = "2.7.18"
    info_path.write_text(json.dumps(info))
    build_demo_corpus(tmp_path)
    rebuilt = read_corpus_info(tmp_path)
    assert rebuilt is not None and rebuilt["python_version"] != "2.7.18"
    assert rebuilt["text_sha256"] == info["text_sha256"]

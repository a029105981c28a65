"""A precompute output written before features were stored as rows still reads.

``tests/fixtures/precompute-v2`` was written by the code before rows (commit 25b044a:
format version 2, features as packed FeatureData, schema 3) from the tiny setup of
``tests/export/tiny_setup.py`` (``precompute --features 0:3 --outputs memo``);
``expected.json`` holds what that code read back from it (``FeatureData.to_dict``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.engine.rows import LEGACY_SCHEMA
from core.memo import Memo
from core.precompute.reader import PrecomputedStore

LEGACY = Path(__file__).resolve().parent / "fixtures" / "precompute-v2"


def test_a_format_2_output_reads_the_same_and_is_left_as_it_was(tmp_path):
    out = tmp_path / "out"
    shutil.copytree(LEGACY, out)
    values = sorted(p for p in (out / "memo").rglob("*.val"))
    before = {p: p.read_bytes() for p in values}
    assert before
    store = PrecomputedStore(out)
    assert store.version == 2
    want = json.loads((out / "expected.json").read_text(encoding="utf-8"))
    assert sorted(map(int, want)) == sorted(store.done)
    for i, data in want.items():
        got = store.feature(int(i))
        assert got.to_dict() == data, i
        assert got.top_examples and got.intervals  # real content, not empty defaults
    store.close()
    # every entry is still there, unchanged (none dropped as undecodable)
    assert {p: p.read_bytes() for p in sorted((out / "memo").rglob("*.val"))} == before
    memo = Memo(out / "memo")
    assert len(memo) == len(want) + 1  # the features and the chunk's summary
    memo.close()
    assert LEGACY_SCHEMA == 3

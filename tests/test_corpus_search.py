"""Search of the stored token set, features at one stored token, whole rows and the rows of
their document (core/corpus_search.py), against naive references."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from core.gate import WorkspaceError
from core.memo import Memo
from core.workspace import Workspace
from tests.app.fixtures import make_workspace
from tests.tiny import BOS_ID, HOOK
from tests.tolerance import encode_tolerance


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    w = make_workspace()
    w.memo = Memo(tmp_path_factory.mktemp("memo"))
    return w


def naive(ws, pattern: str, flags: int = 0) -> list[tuple[int, int, str]]:
    """(row, token where the match starts, match) from each row decoded token by token."""
    out = []
    special = {BOS_ID}
    for seq, row in enumerate(ws.tokens.tolist()):
        pieces = ["\n" if t in special else ws.model.token_strings([t])[0] for t in row]
        text = "".join(pieces)
        for m in re.finditer(pattern, text, flags):
            if m.start() == m.end():
                continue
            edge, pos = 0, None
            for j, piece in enumerate(pieces):
                if edge <= m.start() < edge + len(piece):
                    pos = j
                edge += len(piece)
            out.append((seq, pos, m.group()))
    return out


def got(hits) -> list[tuple[int, int, str]]:
    return [(o.seq, o.pos, o.match) for o in hits.occurrences]


def test_string_and_regex_occurrences_match_a_naive_reference(ws):
    hits = ws.corpus_search("cat")
    assert hits.total > 0 and hits.complete and not hits.capped
    assert got(hits) == naive(ws, "cat")
    # a match spanning two tokens maps to the token where it starts
    row = ws.tokens[3].tolist()
    a, b = ws.model.token_strings(row[5:7])
    span = a[-2:] + b[:2]
    hits = ws.corpus_search(span)
    assert got(hits) == naive(ws, re.escape(span))
    assert (3, 5, span) in got(hits)
    rx = r"(cat|dog)s?at"
    assert got(ws.corpus_search(rx, regex=True)) == naive(ws, rx)
    assert got(ws.corpus_search("CAT", case_sensitive=False)) == naive(ws, "cat")
    occ = ws.corpus_search("cat", context_chars=7).occurrences[0]
    texts, _ = ws.decoded_rows()
    assert occ.before + occ.match + occ.after in texts[occ.seq]
    assert len(occ.before) <= 7 and len(occ.after) <= 7


def test_occurrences_are_capped_and_counted(ws):
    every = ws.corpus_search("a")
    few = ws.corpus_search("a", max_occurrences=5)
    assert len(few.occurrences) == 5 and few.total == every.total > 5 and few.capped


@pytest.mark.parametrize(
    ("query", "regex", "words"),
    [
        ("(cat", True, "invalid regular expression"),
        ("(a+)+b", True, "exponential"),
        ("x" * 201, False, "limit is 200"),
        ("", False, "empty"),
    ],
)
def test_bad_searches_say_what_is_wrong(ws, query, regex, words):
    with pytest.raises(WorkspaceError, match=words):
        ws.corpus_search(query, regex=regex)


def test_features_at_an_occurrence_equal_a_direct_encode(ws):
    occ = ws.corpus_search("cat").occurrences[0]
    top = ws.features_at(occ.seq, occ.pos, k=10)
    assert top, "some feature fires at the occurrence"
    row = ws.tokens[occ.seq : occ.seq + 1]
    _, cache = ws.model.model.run_with_cache(row, names_filter=HOOK)
    x = cache[HOOK][0]
    sae = ws.dictionary.sae
    with torch.no_grad():
        want = sae.encode(x)[occ.pos].numpy()
    tol = encode_tolerance(sae, x)
    for r in top:
        assert abs(r["act"] - want[r["feature"]]) <= tol[r["feature"]]
    # the k strongest: nothing left out is clearly stronger than the weakest shown
    shown = {r["feature"] for r in top}
    weakest = min(r["act"] for r in top)
    others = [f for f in range(len(want)) if f not in shown]
    assert all(want[f] <= weakest + tol[f] for f in others) or len(top) < 10
    with pytest.raises(WorkspaceError, match="not in the token set"):
        ws.features_at(10_000, 0)


def test_whole_sequence_matches_the_sweep_and_is_memoised(ws, monkeypatch):
    fd = ws.feature(3)
    ex = fd.top_examples[0]
    seq = ws.sequence_activations(3, ex.seq)
    assert len(seq["acts"]) == ws.tokens.shape[1] == len(seq["tokens"])
    assert seq["token_ids"] == ws.tokens[ex.seq].tolist()
    part = np.array(seq["acts"][ex.start : ex.start + len(ex.acts)])
    _, cache = ws.model.model.run_with_cache(ws.tokens[ex.seq : ex.seq + 1], names_filter=HOOK)
    tol = encode_tolerance(ws.dictionary.sae, cache[HOOK][0])[3]
    assert np.abs(part - np.array(ex.acts)).max() <= 2 * tol
    assert seq["acts"][0] == 0.0  # BOS

    def boom(*a, **k):
        raise AssertionError("computed again")

    monkeypatch.setattr(ws, "activations_on_ids", boom)
    assert ws.sequence_activations(3, ex.seq) == seq
    ws.__dict__["_sequences"].clear()  # from the memo now
    assert ws.sequence_activations(3, ex.seq) == seq


def test_document_rows_of_a_text_dataset(ws):
    # stream: doc A (7 tokens) SEP doc B (12 tokens) SEP doc C (...), rows of 1 BOS + 5
    a, b, c = [1] * 7, list(range(2, 14)), [20] * 12
    stream = a + [BOS_ID] + b + [BOS_ID] + c + [BOS_ID]
    rows = [[BOS_ID, *stream[k : k + 5]] for k in range(0, len(stream) - 4, 5)]
    text_ws = Workspace(
        ws.model, ws.dictionary, torch.tensor(rows), {"kind": "local"}, None, ws.config
    )
    # row 2 holds b[2:7]: doc B began in row 1 (after its SEP) and goes on in row 3
    doc = text_ws.document_rows(2)
    assert doc["before"] == [1] and doc["after"] == [3]
    strings = ws.model.token_strings
    assert doc["before_text"] == "".join(strings(b[:2]))  # row 1 after its separator
    assert doc["after_text"] == "".join(strings(b[7:12]))
    # row 0 starts the stream: nothing before; row 1 ends doc A and begins doc B
    assert text_ws.document_rows(0)["before"] == []
    # not a text dataset: no documents
    assert ws.document_rows(2) is None

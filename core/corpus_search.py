"""The stored token set as text: find a string or a regular expression in it, see the
features most active at an occurrence, and a feature's activation on a whole stored row
(with, for text datasets, the rows of the same document around it).

Each row is decoded once, as its token strings joined (BOS shown as a line break), with
the character offset where every token starts, so a match maps to the token holding its
first character. :class:`CorpusMixin` holds the methods; :class:`~core.workspace.Workspace`
inherits them (they use its model, dictionary, tokens, compute gate and memo).
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from core.gate import WorkspaceError, check_text

if TYPE_CHECKING:
    from core.config import RunConfig
    from core.memo import Memo
    from core.models import ModelAdapter

#: longest search pattern accepted (characters)
MAX_PATTERN_CHARS = 200
#: occurrences listed at most (the count says when there were more)
MAX_OCCURRENCES = 10_000
#: seconds a search may take before it stops and says how many rows it covered
SEARCH_SECONDS = 10.0
#: a group holding a repeat that is itself repeated, such as ``(a+)+`` or ``(\w*)*``: the
#: shape of catastrophic backtracking, refused before it runs
_NESTED_REPEAT = re.compile(r"\((?:[^()\\]|\\.)*(?:[+*]|\{\d*,\d*\})\)(?:[+*]|\{\d*,\d*\})")
#: what a BOS (document separator) position reads as in the decoded text
BOS_TEXT = "\n"
#: rows shown at most on each side of a row, as its surrounding document
DOCUMENT_ROWS = 4


@dataclass
class Occurrence:
    """One match in the token set: row ``seq``, the token ``pos`` holding its first
    character, its characters ``[start, end)`` in the decoded row, and text around it."""

    seq: int
    pos: int
    start: int
    end: int
    before: str
    match: str
    after: str


@dataclass
class CorpusHits:
    """Occurrences in row order (at most :data:`MAX_OCCURRENCES`); ``total`` counts every
    match found, ``complete`` is False when the search stopped at the time limit."""

    occurrences: list[Occurrence]
    total: int
    rows_searched: int
    n_rows: int
    complete: bool

    @property
    def capped(self) -> bool:
        return self.total > len(self.occurrences)


def compile_pattern(query: str, regex: bool, case_sensitive: bool = True) -> re.Pattern[str]:
    """``query`` compiled (escaped when not ``regex``), or :class:`WorkspaceError` naming
    the problem: empty, too long, invalid, or shaped for catastrophic backtracking."""
    if not isinstance(query, str) or not query:
        raise WorkspaceError("the search text is empty: type a string or a regular expression")
    check_text(query)
    if len(query) > MAX_PATTERN_CHARS:
        raise WorkspaceError(
            f"the search text has {len(query):,} characters; the limit is "
            f"{MAX_PATTERN_CHARS}: shorten it"
        )
    flags = 0 if case_sensitive else re.IGNORECASE
    if not regex:
        return re.compile(re.escape(query), flags)
    if _NESTED_REPEAT.search(query):
        raise WorkspaceError(
            f"the regular expression {query!r} repeats a group that itself repeats (such as "
            "(a+)+), which can take exponential time: remove the outer or inner repeat"
        )
    try:
        return re.compile(query, flags)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise WorkspaceError(
            f"invalid regular expression {query!r}: {exc.msg}{where}. Fix it, or turn "
            "'regular expression' off to search for the text as written"
        ) from exc


class CorpusMixin:
    """Corpus methods of :class:`~core.workspace.Workspace` (see there for the attributes)."""

    model: ModelAdapter
    tokens: torch.Tensor
    config: RunConfig
    dataset: dict[str, Any]
    memo: Memo | None
    n_features: int
    check_index: Any
    activations_on_ids: Any
    _prepared: Any
    _source_key: Any

    # --- the token set as text -----------------------------------------------------------
    def _rows(self) -> torch.Tensor:
        """The token rows the features were computed on (the config's cut)."""
        return self._prepared(self.config)

    def _special(self) -> set[int]:
        return {t for t in (self.model.bos_token_id, self.model.pad_token_id) if t is not None}

    def decoded_rows(self) -> tuple[list[str], list[list[int]]]:
        """Every row's text and the character offset where each of its tokens starts (one
        more entry: the text's length). Decoded once per workspace."""
        cached = getattr(self, "_decoded", None)
        if cached is not None:
            return cached
        vocab = self.model.vocab_strings()
        special = self._special()
        texts: list[str] = []
        starts: list[list[int]] = []
        for row in self._rows().tolist():
            pieces = [BOS_TEXT if t in special else vocab[t] for t in row]
            offsets = [0]
            for piece in pieces:
                offsets.append(offsets[-1] + len(piece))
            texts.append("".join(pieces))
            starts.append(offsets)
        self._decoded = (texts, starts)
        return self._decoded

    def corpus_search(
        self,
        query: str,
        regex: bool = False,
        case_sensitive: bool = True,
        context_chars: int = 40,
        max_occurrences: int = MAX_OCCURRENCES,
    ) -> CorpusHits:
        """Occurrences of ``query`` (a string, or a Python regular expression when
        ``regex``) in the decoded rows, with ``context_chars`` of text on each side. Matches
        do not cross rows; empty matches are skipped. Stops after :data:`SEARCH_SECONDS`."""
        pattern = compile_pattern(query, regex, case_sensitive)
        texts, starts = self.decoded_rows()
        found: list[Occurrence] = []
        total = 0
        t0 = time.monotonic()
        searched = 0
        for seq, text in enumerate(texts):
            if time.monotonic() - t0 > SEARCH_SECONDS:
                break
            searched += 1
            for m in pattern.finditer(text):
                a, b = m.span()
                if a == b:
                    continue
                total += 1
                if len(found) < max_occurrences:
                    pos = bisect.bisect_right(starts[seq], a) - 1
                    found.append(
                        Occurrence(
                            seq=seq,
                            pos=pos,
                            start=a,
                            end=b,
                            before=text[max(0, a - context_chars) : a],
                            match=text[a:b],
                            after=text[b : b + context_chars],
                        )
                    )
        return CorpusHits(found, total, searched, len(texts), searched == len(texts))

    # --- features at one stored token ---------------------------------------------------
    def _check_row(self, seq: object, pos: object | None = None) -> tuple[int, int | None]:
        rows = self._rows()
        n, length = int(rows.shape[0]), int(rows.shape[1])
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < n:
            raise WorkspaceError(f"row {seq!r} is not in the token set: use 0 to {n - 1}")
        if pos is not None and (
            isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos < length
        ):
            raise WorkspaceError(f"position {pos!r} is not in a row: use 0 to {length - 1}")
        return seq, pos

    def _row_acts(self, seq: int, features: list[int] | None) -> torch.Tensor:
        """Activations ``[positions, features]`` on stored row ``seq`` (BOS and pad 0)."""
        row = self._rows()[seq]
        acts = self.activations_on_ids(row, features)
        for t in self._special():
            acts[row == t] = 0.0
        return acts

    def features_at(self, seq: int, pos: int, k: int = 20) -> list[dict[str, Any]]:
        """The ``k`` features most active at position ``pos`` of stored row ``seq``, over the
        whole dictionary (``{"feature", "act"}``, strongest first, active ones only)."""
        seq, pos = self._check_row(seq, pos)
        acts = self._row_acts(seq, None)[pos]
        v, i = acts.topk(min(int(k), acts.numel()))
        return [{"feature": int(a), "act": float(b)} for b, a in zip(v, i, strict=True) if b > 0]

    # --- a feature on a whole stored row ---------------------------------------------------
    def sequence_activations(self, i: int, seq: int) -> dict[str, Any]:
        """Feature ``i`` on every token of stored row ``seq``: ``{"seq", "token_ids",
        "tokens", "acts"}``; memoised (memo, or this process when there is none)."""
        i = self.check_index(i)
        seq, _ = self._check_row(seq)
        cfg = dataclasses.replace(self.config, features=[i])
        key = f"{self._source_key(cfg)}:sequence:{seq}:{i}"
        held: dict[str, Any] = self.__dict__.setdefault("_sequences", {})
        got = held.get(key)
        if got is None and self.memo is not None:
            got = self.memo.get_json(key)
        if got is None:
            ids = self._rows()[seq].tolist()
            got = {
                "seq": seq,
                "token_ids": ids,
                "tokens": self.model.token_strings(ids),
                "acts": self._row_acts(seq, [i])[:, 0].tolist(),
            }
            if self.memo is not None:
                self.memo.put_json(key, got)
        if len(held) > 256:
            held.clear()
        held[key] = got
        return got

    def document_rows(self, seq: int, max_rows: int = DOCUMENT_ROWS) -> dict[str, Any] | None:
        """For a text dataset, the rows of row ``seq``'s document around it: rows are cut
        from one stream of documents separated by BOS, so a row continues its predecessor
        unless that one ends with a separator or ``seq`` begins its own document.

        Returns ``{"before": [rows], "after": [rows], "before_text", "after_text"}`` (up to
        ``max_rows`` rows each side, text cut at the document's separators), or ``None``
        when rows are not pieces of documents (pre-tokenised data, no BOS token)."""
        seq, _ = self._check_row(seq)
        bos = self.model.bos_token_id
        kind = self.dataset.get("kind")
        if bos is None or kind not in ("demo", "local", "hub"):
            return None
        if self.dataset.get("text_column") in ("input_ids", "tokens"):
            return None
        rows = self._rows()
        texts, starts = self.decoded_rows()

        def body(r: int) -> list[int]:  # the stream's ids in row r (after its leading BOS)
            return rows[r, 1:].tolist() if int(rows[r, 0]) == bos else []

        def joined(a: int, b: int) -> bool:  # rows a and a+1 = b meet inside a document
            left, right = body(a), body(b)
            return bool(left) and bool(right) and left[-1] != bos and right[0] != bos

        before: list[int] = []
        while len(before) < max_rows and (r := (before[0] if before else seq)) > 0:
            if not joined(r - 1, r):
                break
            before.insert(0, r - 1)
            if bos in body(r - 1):
                break
        after: list[int] = []
        while len(after) < max_rows and (r := (after[-1] if after else seq)) + 1 < len(rows):
            if not joined(r, r + 1):
                break
            after.append(r + 1)
            if bos in body(r + 1):
                break

        def text_of(r: int, first: bool, last: bool) -> str:
            """Row r's text after its leading BOS; from its last separator on when it holds
            the document's start (``first``), up to its first one when it holds the end."""
            ids = body(r)
            a, b = 1, len(ids) + 1  # row positions
            seps = [j + 1 for j, t in enumerate(ids) if t == bos]
            if first and seps:
                a = seps[-1] + 1
            if last and seps:
                b = seps[0]
            return texts[r][starts[r][a] : starts[r][b]]

        return {
            "before": before,
            "after": after,
            "before_text": "".join(text_of(r, r == before[0], False) for r in before),
            "after_text": "".join(text_of(r, False, r == after[-1]) for r in after),
        }

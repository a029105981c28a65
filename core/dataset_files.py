"""Reading local dataset files without trusting them.

A dataset path may name anything: a FIFO (reading it blocks forever), a link to
``/dev/zero`` (endless), a multi-gigabyte file without a line break, a binary file
renamed ``.txt``, UTF-16 text, JSON nested 200,000 levels deep. So:

* only regular files are opened (checked on the open descriptor, opened without
  blocking, so a FIFO cannot hang the check);
* text is read in chunks of :data:`CHUNK_CHARS` and handed on in pieces of at most
  :data:`MAX_PIECE_CHARS` characters, lazily: the caller stops reading once its token
  budget is full, and the tokenizer never sees more than one piece at a time;
* a byte-order mark selects UTF-8/16/32; text that is mostly NUL characters is refused
  as binary (UTF-16/32 without a mark looks like that too);
* a JSON array is read item by item, a JSONL file line by line, each capped at
  :data:`MAX_RECORD_CHARS`; every decoding failure becomes a :class:`SourceError`.

Pieces are cut at whitespace where possible, so a document longer than a piece is
tokenised as it would be whole except, rarely, at a cut.
"""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Iterator
from numbers import Integral
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from core.source_guard import SourceError

CHUNK_CHARS = 1 << 20
MAX_PIECE_CHARS = 1 << 18
MAX_RECORD_CHARS = 32 << 20
DOC_SEPARATOR = "\n\n\n"
_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for reading if (after following links) it is a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise SourceError(f"cannot open dataset file {path}: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise SourceError(
                f"dataset path {path} is {kind}, not a regular file: give a .txt, .jsonl, "
                ".json or .parquet file (or a directory written by Dataset.save_to_disk)"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_text(path: Path, errors: str) -> TextIO:
    """A regular file as text: encoding from its byte-order mark (UTF-8 without one);
    refused when the start is mostly NUL characters (binary, or UTF-16/32 without a mark)."""
    raw = open_regular(path)
    try:
        head = raw.read(4)
        encoding = next((enc for bom, enc in _BOMS if head.startswith(bom)), "utf-8")
        raw.seek(0)
        return io.TextIOWrapper(raw, encoding=encoding, errors=errors)  # type: ignore[arg-type]
    except BaseException:
        raw.close()
        raise


def _check_not_binary(text: str, path: Path, offset: int) -> None:
    nul = text.count("\x00")
    if text and nul * 4 > len(text):
        raise SourceError(
            f"{path} looks like a binary file, not text: {nul / len(text):.0%} of the "
            f"characters from character {offset:,} on are NUL. Give a UTF-8 text file "
            "(UTF-16 or UTF-32 text without a byte-order mark: save it as UTF-8)"
        )


def _chunks(fh: TextIO, path: Path) -> Iterator[str]:
    offset = 0
    while True:
        try:
            chunk = fh.read(CHUNK_CHARS)
        except UnicodeDecodeError as exc:
            raise SourceError(
                f"{path} is not {fh.encoding} text: an invalid byte after character "
                f"{offset:,} ({exc.reason}). Save it as UTF-8"
            ) from exc
        if not chunk:
            return
        _check_not_binary(chunk, path, offset)
        offset += len(chunk)
        yield chunk


def _cut(text: str, limit: int) -> int:
    """Where to end a piece of ``text`` of at most ``limit`` characters: before the last
    whitespace in its second half, else at ``limit``."""
    for sep in ("\n", " ", "\t"):
        i = text.rfind(sep, limit // 2, limit)
        if i > 0:
            return i
    return limit


def text_pieces(text: str, limit: int = MAX_PIECE_CHARS) -> Iterator[str]:
    """``text`` in consecutive pieces of at most ``limit`` characters (joined: ``text``)."""
    while len(text) > limit:
        cut = _cut(text, limit)
        yield text[:cut]
        text = text[cut:]
    yield text


def text_file_pieces(path: Path) -> Iterator[tuple[str, bool]]:
    """Documents of a text file (separated by two blank lines) as ``(piece, ends_doc)``,
    read lazily; blank documents are skipped."""
    with open_text(path, errors="replace") as fh:
        buf = ""
        open_doc = False  # pieces of the current document were already handed out
        for chunk in _chunks(fh, path):
            buf += chunk
            while True:
                i = buf.find(DOC_SEPARATOR)
                if i >= 0:
                    doc, buf = buf[:i], buf[i + len(DOC_SEPARATOR) :]
                    if open_doc or doc.strip():
                        *head, last = text_pieces(doc)
                        yield from ((p, False) for p in head)
                        yield last, True
                    open_doc = False
                    continue
                if len(buf) > MAX_PIECE_CHARS + len(DOC_SEPARATOR):
                    cut = _cut(buf, MAX_PIECE_CHARS)
                    yield buf[:cut], False
                    buf = buf[cut:]
                    open_doc = True
                    continue
                break
        if open_doc or buf.strip():
            *head, last = text_pieces(buf)
            yield from ((p, False) for p in head)
            yield last, True


def _record(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {"text": str(value)}


def _json_error(path: Path, where: str, exc: Exception) -> SourceError:
    if isinstance(exc, RecursionError):
        return SourceError(
            f"{path} {where} is nested too deeply to be a dataset record: give one object "
            "(or string) per record"
        )
    return SourceError(f"{path} {where} is not valid JSON: {str(exc)[:200]}")


def jsonl_records(path: Path) -> Iterator[dict[str, Any]]:
    """One record per line, each line at most :data:`MAX_RECORD_CHARS` characters."""
    with open_text(path, errors="strict") as fh:
        n = 0
        while True:
            n += 1
            try:
                line = fh.readline(MAX_RECORD_CHARS + 1)
            except UnicodeDecodeError as exc:
                raise SourceError(
                    f"{path} line {n} is not {fh.encoding} text ({exc.reason}): save it as UTF-8"
                ) from exc
            if not line:
                return
            if len(line) > MAX_RECORD_CHARS:
                raise SourceError(
                    f"{path} line {n} is longer than {MAX_RECORD_CHARS:,} characters: "
                    "split the record into smaller ones (one JSON object per line)"
                )
            if n == 1:
                _check_not_binary(line, path, 0)
            if line.strip():
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError) as exc:
                    raise _json_error(path, f"line {n}", exc) from exc
                yield _record(rec)


def json_array_records(path: Path) -> Iterator[dict[str, Any]]:
    """Items of a top-level JSON array, parsed one by one as the file is read."""
    decoder = json.JSONDecoder()
    with open_text(path, errors="strict") as fh:
        chunks = _chunks(fh, path)
        buf, pos, eof = "", 0, False

        def more() -> bool:
            nonlocal buf, pos, eof
            chunk = next(chunks, None)
            if chunk is None:
                eof = True
                return False
            buf, pos = buf[pos:] + chunk, 0
            return True

        def skip_space() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                if not more():
                    return ""

        if skip_space() != "[":
            raise SourceError(f"{path} does not start with a JSON array")
        pos += 1
        if skip_space() == "]":
            return
        n = 0
        while True:
            skip_space()
            while True:  # one item: read on while it is incomplete
                try:
                    item, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:  # a number may go on in the next chunk
                        break
                except (ValueError, RecursionError) as exc:
                    if eof or isinstance(exc, RecursionError):
                        raise _json_error(path, f"item {n + 1}", exc) from exc
                    if len(buf) - pos > MAX_RECORD_CHARS:
                        raise SourceError(
                            f"{path} item {n + 1} is longer than {MAX_RECORD_CHARS:,} characters "
                            "(or not valid JSON): split it into smaller records"
                        ) from exc
                more()
            yield _record(item)
            n += 1
            pos = end
            sep = skip_space()
            pos += 1
            if sep == "]":
                return
            if sep != ",":
                raise SourceError(
                    f"{path} is not valid JSON: expected ',' or ']' after item {n}, found "
                    f"{sep[:1]!r}"
                )


def json_records(path: Path) -> Iterator[dict[str, Any]]:
    """A ``.json`` file: a top-level array read item by item, else JSON lines."""
    with open_text(path, errors="strict") as fh:
        try:
            first = fh.read(1)
        except UnicodeDecodeError:
            first = ""
    if first == "[":
        yield from json_array_records(path)
    else:
        yield from jsonl_records(path)


def token_row(value: Any, column: str, row: int, d_vocab: int) -> list[int]:
    """A pre-tokenised row as token ids, or a :class:`SourceError` naming the column, the
    row and the first bad value (strings, floats, booleans, nested lists, ids outside
    ``0 .. d_vocab - 1``)."""
    fix = (
        f"column {column!r} must hold lists of integer token ids from 0 to {d_vocab - 1} "
        "(the model's vocabulary); for text, name the text column instead"
    )
    if isinstance(value, str | bytes | dict) or not hasattr(value, "__iter__"):
        raise SourceError(
            f"row {row} of column {column!r} holds {value!r:.60} ({type(value).__name__}), "
            f"not a list: {fix}"
        )
    ids: list[int] = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise SourceError(
                f"row {row} of column {column!r} holds {v!r:.60} ({type(v).__name__}): {fix}"
            )
        if not 0 <= int(v) < d_vocab:
            raise SourceError(
                f"row {row} of column {column!r} holds token id {int(v)}, outside the model's "
                f"vocabulary of {d_vocab} entries: the dataset was tokenised for another model; "
                f"{fix}"
            )
        ids.append(int(v))
    return ids


__all__ = [
    "MAX_PIECE_CHARS",
    "json_records",
    "jsonl_records",
    "open_regular",
    "text_file_pieces",
    "text_pieces",
    "token_row",
]

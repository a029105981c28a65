"""Low-level safety of the memo's diskcache directory (used by :mod:`core.memo`).

* :class:`NoPickleDisk` stores and returns bytes only and never unpickles.
* :func:`read_value_file` / :func:`own_value_path`: only files the memo named itself
  are read or removed: diskcache's own names (``xx/yy/<28 hex>.val``) inside the
  directory, regular files (no links, FIFOs or devices), as long as their row says.
* :func:`repair_settings` drops unknown or malformed rows of diskcache's ``Settings``
  table, which would otherwise make every later open fail.
* :class:`ReadOnlyDb` reads a cache database without writing anything next to it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import diskcache
from diskcache.core import (
    DEFAULT_SETTINGS,
    EVICTION_POLICY,
    MODE_BINARY,
    MODE_PICKLE,
    MODE_RAW,
    UNKNOWN,
)

from core.errors import FeaturescopeError

log = logging.getLogger(__name__)

#: the only file names diskcache gives values (``Disk.filename``): two levels of
#: two hex digits, then 28 hex digits and ``.val``
_VALUE_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val")


class CorruptEntry(FeaturescopeError, ValueError):
    """A cache row that the memo did not write (or that was damaged since)."""


def own_value_path(directory: str | Path, filename: Any) -> Path:
    """The path of a value file named ``filename`` when it is one the memo wrote.

    The name must have diskcache's own form and the two folders above it must be real
    directories inside ``directory`` (no symbolic links); anything else raises
    :class:`CorruptEntry`, so no row can point the memo at a file elsewhere.
    """
    if not isinstance(filename, str) or not _VALUE_NAME.fullmatch(filename):
        raise CorruptEntry(f"a cache row names the file {str(filename)[:80]!r}, not one of its own")
    root = Path(directory)
    top, sub, _ = filename.split("/")
    for folder in (root / top, root / top / sub):
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise CorruptEntry(f"{folder} is not a plain folder")
        except FileNotFoundError as exc:
            raise CorruptEntry(f"the value file {filename} is missing") from exc
    return root / filename


def read_value_file(directory: str | Path, filename: Any, size: Any) -> bytes:
    """The bytes of one of the memo's own value files, exactly ``size`` of them.

    Refuses (:class:`CorruptEntry`) a name not of the memo's form, a link, a FIFO, a
    device or any non-regular file (opened without following links and without
    blocking), and a file whose length is not the row's ``size``.
    """
    path = own_value_path(directory, filename)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CorruptEntry(f"the cache row of {filename} has no valid size ({size!r})")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise CorruptEntry(f"the value file {filename} is missing") from exc
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise CorruptEntry(f"the value file {filename} is a link") from exc
        raise
    with os.fdopen(fd, "rb", buffering=0) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CorruptEntry(f"the value file {filename} is not a regular file")
        if st.st_size != size:
            raise CorruptEntry(
                f"the value file {filename} has {st.st_size} bytes, its row says {size}"
            )
        chunks, left = [], size
        while left > 0:
            chunk = fh.read(min(left, 1 << 22))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left:
            raise CorruptEntry(f"the value file {filename} is shorter than its row says")
        return b"".join(chunks)


class NoPickleDisk(diskcache.Disk):
    """A diskcache ``Disk`` that stores and returns bytes only, never unpickles, and reads
    or removes only value files of its own form inside its directory."""

    def put(self, key):
        if not isinstance(key, str | bytes):
            raise TypeError(f"memo keys must be str or bytes, got {type(key).__name__}")
        return super().put(key)

    def get(self, key, raw):
        if not raw:
            raise ValueError(
                "refusing to unpickle a cache key: the cache directory was tampered with"
            )
        return super().get(key, raw)

    def store(self, value, read, key=UNKNOWN):
        if not read and not isinstance(value, bytes):
            raise TypeError(f"memo values must be bytes, got {type(value).__name__}")
        return super().store(value, read, key=key)

    def _write(self, full_path, iterator, mode, encoding=None):
        try:
            return super()._write(full_path, iterator, mode, encoding)
        except BaseException:
            # a full disk leaves half a file behind: it is no entry's, so it goes
            with contextlib.suppress(OSError):
                os.remove(full_path)
            raise

    def fetch(self, mode, filename, value, read):
        if mode == MODE_PICKLE:
            raise ValueError(
                "refusing to unpickle a cache value: the cache directory was tampered with"
            )
        if mode == MODE_RAW:
            return super().fetch(mode, filename, value, read)
        if mode != MODE_BINARY or read:
            raise CorruptEntry(f"the memo stores bytes only, the row has mode {mode!r}")
        path = own_value_path(self._directory, filename)
        size = os.lstat(path).st_size
        return read_value_file(self._directory, filename, size)

    def remove(self, file_path):
        """Remove one of the memo's own value files (and its folders once empty); a row
        naming anything else is left alone."""
        try:
            path = own_value_path(self._directory, file_path)
        except CorruptEntry:
            log.warning("not removing %r: it is not a file the cache wrote", str(file_path)[:80])
            return
        with contextlib.suppress(OSError):
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                os.remove(path)
        for folder in (path.parent, path.parent.parent):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


# --- diskcache's Settings table ---------------------------------------------------------------
def _is_int(v: Any, lo: int = 0, hi: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


_SETTING_OK = {
    "statistics": lambda v: _is_int(v, 0, 1),
    "tag_index": lambda v: _is_int(v, 0, 1),
    "eviction_policy": lambda v: v in EVICTION_POLICY,
    "size_limit": _is_int,
    "cull_limit": _is_int,
    "sqlite_auto_vacuum": lambda v: _is_int(v, 0, 2),
    "sqlite_cache_size": lambda v: _is_int(v, -(1 << 40)),
    "sqlite_journal_mode": lambda v: (
        isinstance(v, str)
        and v.lower() in ("wal", "delete", "truncate", "persist", "memory", "off")
    ),
    "sqlite_mmap_size": _is_int,
    "sqlite_synchronous": lambda v: _is_int(v, 0, 3),
    "disk_min_file_size": _is_int,
    "disk_pickle_protocol": lambda v: _is_int(v, 0, 5),
    "count": _is_int,
    "size": _is_int,
    "hits": _is_int,
    "misses": _is_int,
}


def _setting_ok(key: str, value: Any) -> bool:
    """A known setting with a usable value (a default of another diskcache version: its type)."""
    check = _SETTING_OK.get(key)
    if check is not None:
        return bool(check(value))
    return key in DEFAULT_SETTINGS and type(value) is type(DEFAULT_SETTINGS[key])


def repair_settings(db: Path) -> list[str]:
    """Drop unknown or malformed rows of diskcache's ``Settings`` table in ``db``.

    diskcache turns every row into an attribute, a ``Disk`` argument or a ``PRAGMA``
    when it opens, so one bad row makes every later open fail; dropped rows come back
    with their defaults. ``count`` and ``size`` are recounted when theirs were bad.
    Returns the keys dropped (nothing is written when all rows are good).
    """
    if not db.is_file():
        return []
    con = sqlite3.connect(str(db), timeout=60, isolation_level=None)
    try:
        try:
            rows = con.execute("SELECT rowid, key, value FROM Settings").fetchall()
        except sqlite3.OperationalError:  # no Settings table yet
            return []
        bad = [
            (rowid, key)
            for rowid, key, value in rows
            if not isinstance(key, str) or not _setting_ok(key, value)
        ]
        if not bad:
            return []
        with con:
            con.execute("BEGIN IMMEDIATE")
            con.executemany("DELETE FROM Settings WHERE rowid = ?", [(r,) for r, _ in bad])
            names = {str(k) for _, k in bad}
            with contextlib.suppress(sqlite3.OperationalError):  # no Cache table yet
                if "count" in names:
                    con.execute(
                        "INSERT INTO Settings VALUES ('count', (SELECT COUNT(*) FROM Cache))"
                    )
                if "size" in names:
                    con.execute(
                        "INSERT INTO Settings VALUES "
                        "('size', (SELECT COALESCE(SUM(size), 0) FROM Cache))"
                    )
        return [str(k) for _, k in bad]
    finally:
        con.close()


class ReadOnlyDb:
    """A read-only SQLite connection to a cache database (shared across threads)."""

    def __init__(self, db: Path):
        self.lock = threading.Lock()
        uri = f"file:{quote(str(db))}?mode=ro"
        try:
            self.con = self._open(uri)
        except sqlite3.OperationalError:
            # a WAL database in a directory nobody may write: its -shm file cannot be
            # made, so read the file as it is (a cleanly closed cache holds everything)
            self.con = self._open(uri + "&immutable=1")

    @staticmethod
    def _open(uri: str) -> sqlite3.Connection:
        con = sqlite3.connect(uri, uri=True, check_same_thread=False)
        try:
            con.execute("SELECT COUNT(*) FROM Cache LIMIT 1").fetchall()
        except sqlite3.DatabaseError:
            con.close()
            raise
        return con

    def execute(self, query: str, args: tuple = ()) -> list[tuple]:
        with self.lock:
            return self.con.execute(query, args).fetchall()

    def close(self) -> None:
        with self.lock:
            self.con.close()

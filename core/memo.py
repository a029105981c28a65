"""The memo layer: computed feature data stored as bytes in a diskcache directory.

* Values are bytes only (safetensors or JSON), never pickle. :class:`NoPickleDisk`
  refuses to store anything else and refuses to unpickle anything it finds, so a
  writable cache directory cannot be turned into code execution (diskcache's default
  pickling, CVE-2025-69872).
* Every value carries a sha256 of its payload; a corrupted or truncated entry is
  detected on read, dropped, and reported as a miss so the caller recomputes it.
* Only files the memo named itself are read or removed: diskcache's own file names
  (``xx/yy/<28 hex>.val``) inside the directory, regular files (no links, FIFOs or
  devices), exactly as long as their row says. A row naming anything else is a corrupt
  entry: the row is dropped, the path is never touched. Unknown or malformed rows in
  diskcache's ``Settings`` table are dropped before the cache is opened.
* A directory that cannot be written (a read-only mount, a full disk) is opened
  read-only: reads work, writes are skipped with a warning (:attr:`Memo.read_only`,
  :attr:`Memo.writes_failing`).
* One key scheme for everything that computes (the app's workspace, the notebook API,
  the precompute runner): feature ``f`` is stored under :func:`feature_key` of the
  :func:`feature_prefix` of the sources' key (:func:`core.engine.cached.source_key`, a
  sha256 of the model, dictionary and token fingerprints and the result-changing config).

The directory defaults to ``cache/memo`` in the project and can be moved with the
``FEATURESCOPE_CACHE_DIR`` environment variable; ``FEATURESCOPE_CACHE_SIZE`` (bytes)
sets the size limit (default 4 GiB, least recently stored entries go first).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import diskcache
from diskcache.core import MODE_BINARY, MODE_PICKLE, MODE_RAW

from core.errors import FeaturescopeError
from core.memo_disk import (
    CorruptEntry,
    NoPickleDisk,
    ReadOnlyDb,
    read_value_file,
    repair_settings,
)
from core.settings import memo_dir, memo_size_limit

if TYPE_CHECKING:
    from core.engine.features import FeatureData

log = logging.getLogger(__name__)

_MAGIC = b"FSM1"
DB_NAME = "cache.db"
_FIX = "Make it writable, or set FEATURESCOPE_CACHE_DIR to a writable directory"


class MemoError(FeaturescopeError, RuntimeError):
    """The cache directory cannot be used (message says why and what to do)."""


def feature_prefix(source: str, correlation: str, features: list[int]) -> str:
    """The key prefix of features computed together from sources with key ``source``:
    ``source`` itself, except in ``requested`` correlation mode, where a feature's data
    depends on the whole requested set."""
    if correlation != "requested":
        return source
    text = json.dumps({"source": source, "requested": list(features)}, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def feature_key(prefix: str, feature: int) -> str:
    """Where one feature's :class:`~core.engine.features.FeatureData` is stored."""
    return f"{prefix}:{feature}"


_FILENAME = "SELECT filename FROM Cache WHERE key = ? AND raw = 1"
_SELECT = (
    "SELECT mode, filename, value, size FROM Cache WHERE key = ? AND raw = 1 "
    "AND (expire_time IS NULL OR expire_time > ?)"
)


class Memo:
    """Bytes-only memo store with integrity checks.

    Args:
        directory: where entries live (default ``$FEATURESCOPE_CACHE_DIR`` or ``cache/memo``).
        size_limit: bytes kept before eviction (default ``$FEATURESCOPE_CACHE_SIZE`` or 4 GiB).

    A directory that cannot be written is opened read-only (:attr:`read_only`): entries
    already there are served, new ones are not kept, and a warning says so once.
    """

    def __init__(self, directory: str | Path | None = None, size_limit: int | None = None):
        directory = Path(directory) if directory else memo_dir()
        if size_limit is None:
            size_limit = memo_size_limit()
        self.directory = directory
        self.read_only = False
        self.hits = 0
        self.misses = 0
        self.write_errors = 0
        self._write_failing = False
        self._cache: diskcache.Cache | None = None
        self._ro: ReadOnlyDb | None = None
        db = directory / DB_NAME
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if not directory.is_dir():
                raise MemoError(
                    f"cannot open the cache directory {directory}: {exc}. {_FIX}"
                ) from exc
        if self._writable(directory, db):
            try:
                dropped = repair_settings(db)
                if dropped:
                    log.warning(
                        "the cache directory %s had unknown or malformed settings %s: dropped "
                        "(defaults restored)",
                        directory,
                        sorted(dropped)[:5],
                    )
                self._cache = diskcache.Cache(
                    str(directory),
                    disk=NoPickleDisk,
                    size_limit=size_limit,
                    eviction_policy="least-recently-stored",
                )
                return
            except (OSError, sqlite3.Error, ValueError, TypeError, KeyError) as exc:
                reason = exc
        else:
            reason = OSError(errno.EROFS, "the directory is not writable")
        self._open_read_only(db, reason)

    @staticmethod
    def _writable(directory: Path, db: Path) -> bool:
        if not os.access(directory, os.W_OK):
            return False
        return not db.exists() or os.access(db, os.W_OK)

    def _open_read_only(self, db: Path, reason: BaseException) -> None:
        """Serve what the directory holds without writing anything to it."""
        if db.exists():
            try:
                self._ro = ReadOnlyDb(db)
            except sqlite3.DatabaseError as exc:
                raise MemoError(
                    f"cannot open the cache directory {self.directory}: {reason}; reading it "
                    f"read-only failed too ({exc}). {_FIX}, or delete {db} if it is damaged"
                ) from exc
        self.read_only = True
        self._write_failing = True
        log.warning(
            "the cache directory %s cannot be written (%s): it is opened read-only, so stored "
            "results are served but new ones are not kept. %s",
            self.directory,
            reason,
            _FIX,
        )

    # --- rows -----------------------------------------------------------------------------
    def _rows(self, query: str, args: tuple = ()) -> list[tuple]:
        if self._cache is not None:
            return self._cache._sql(query, args).fetchall()
        if self._ro is not None:
            return self._ro.execute(query, args)
        return []

    def _read(self, key: str) -> bytes | None:
        """The stored blob of ``key`` (``None``: no entry); raises CorruptEntry."""
        rows = self._rows(_SELECT, (key, time.time()))
        if not rows:
            return None
        mode, filename, value, size = rows[0]
        if mode == MODE_RAW:
            if not isinstance(value, bytes):
                raise CorruptEntry(f"the row holds {type(value).__name__}, not bytes")
            return value
        if mode == MODE_BINARY:
            return read_value_file(self.directory, filename, size)
        if mode == MODE_PICKLE:
            raise CorruptEntry(
                "refusing to unpickle a cache value: the cache directory was tampered with"
            )
        raise CorruptEntry(f"the memo stores bytes only, the row has mode {mode!r}")

    # --- bytes ----------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes | None:
        try:
            blob = self._read(key)
        except (CorruptEntry, OSError, sqlite3.DatabaseError) as exc:
            log.warning("dropping unreadable cache entry %s: %s", key[:12], exc)
            self.delete(key)
            blob = None
        if blob is None:
            self.misses += 1
            return None
        if len(blob) < 36 or blob[:4] != _MAGIC:
            log.warning("dropping malformed cache entry %s", key[:12])
            self.delete(key)
            self.misses += 1
            return None
        digest, payload = blob[4:36], blob[36:]
        if hashlib.sha256(payload).digest() != digest:
            log.warning("dropping corrupted cache entry %s (checksum mismatch)", key[:12])
            self.delete(key)
            self.misses += 1
            return None
        self.hits += 1
        return payload

    def put_bytes(self, key: str, payload: bytes) -> bool:
        """Store ``payload``; returns False (and keeps going) when the disk refuses."""
        if self._cache is None:
            self.write_errors += 1
            return False  # read-only: said once when opened
        blob = _MAGIC + hashlib.sha256(payload).digest() + payload
        try:
            self._cache.set(key, blob)
            self._write_failing = False
            return True
        except (OSError, sqlite3.DatabaseError) as exc:
            self.write_errors += 1
            self._write_failed(exc)
            return False

    def _write_failed(self, exc: BaseException) -> None:
        # a warning when writes start failing, not for every feature of a full disk
        log.log(
            logging.DEBUG if self._write_failing else logging.WARNING,
            "cannot write to the cache directory %s (%s): results are still returned but "
            "not kept. Free space there, or set FEATURESCOPE_CACHE_DIR to a writable "
            "directory",
            self.directory,
            exc,
        )
        self._write_failing = True

    @property
    def writes_failing(self) -> bool:
        """True while writes fail (full or read-only directory); the next good write clears it."""
        return self._write_failing

    def delete(self, key: str) -> None:
        """Drop ``key``'s row (its value file too when it is one of the memo's own)."""
        if self._cache is None:
            return
        with contextlib.suppress(OSError, sqlite3.DatabaseError, ValueError):
            self._cache.delete(key)

    # --- typed helpers ---------------------------------------------------------------------
    def get_feature(self, key: str) -> FeatureData | None:
        """The feature stored under ``key`` (a row of :meth:`put_rows`), or ``None``."""
        # Lazy: the engine package imports torch, and the memo stays light for the CLI.
        from core.engine.rows import feature_from_row

        payload = self.get_bytes(key)
        if payload is None:
            return None
        try:
            return feature_from_row(payload)
        except Exception as exc:  # any decode failure means a bad entry
            log.warning("dropping undecodable feature entry %s: %s", key[:12], exc)
            self.delete(key)
            return None

    def put_rows(self, items: Iterable[tuple[str, bytes]]) -> int:
        """Store many ``(key, row)`` pairs (a feature's stored bytes,
        :meth:`~core.engine.result.FeatureSet.row_bytes`), each by :meth:`put_bytes`, in one
        transaction: one commit for all of them instead of one per feature.

        Once a write fails (a full disk) what was written is committed and the rest are
        stored one by one. A commit that fails is rolled back
        (the value files it wrote are removed) and warned about like any failing write;
        then every item is tried one by one. Returns how many of the keys are stored
        afterwards (counted, not assumed); the others count as :attr:`write_errors`.
        """
        items = list(items)
        if self._cache is None:
            self.write_errors += len(items)
            return 0
        errors_before = self.write_errors
        files: list[str] = []  # value files written in the transaction
        done = 0
        try:
            with self._cache.transact():
                for key, row in items:
                    done += 1
                    if not self.put_bytes(key, row):
                        break  # commit what is there, go on one by one
                    files += [f for (f,) in self._rows(_FILENAME, (key,)) if f]
        except (OSError, sqlite3.DatabaseError) as exc:
            # a commit that failed can leave the transaction open: close it, keep going
            with contextlib.suppress(sqlite3.Error):
                self._cache._sql("ROLLBACK")
            for name in files:  # their rows are gone: the files would only fill the disk
                self._cache._disk.remove(name)
            self._write_failed(exc)
            done = 0
        for key, row in items[done:]:
            self.put_bytes(key, row)
        if not self._write_failing and self.write_errors == errors_before:
            return len(items)
        stored = sum(1 for key, _ in items if key in self)
        self.write_errors = errors_before + len(items) - stored
        return stored

    def get_json(self, key: str) -> Any | None:
        payload = self.get_bytes(key)
        if payload is None:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            self.delete(key)
            return None

    def put_json(self, key: str, value: Any) -> bool:
        return self.put_bytes(key, json.dumps(value, sort_keys=True).encode())

    def __contains__(self, key: str) -> bool:
        query = "SELECT 1 FROM Cache WHERE key = ? AND raw = 1"
        try:
            return bool(self._rows(query, (key,)))
        except sqlite3.DatabaseError:
            return False

    def __len__(self) -> int:
        if self._cache is not None:
            return len(self._cache)
        return int(self._rows("SELECT COUNT(*) FROM Cache")[0][0]) if self._ro else 0

    def stored_keys(self) -> list[str]:
        """Every stored key (string keys only: the memo writes no others)."""
        return [k for (k,) in self._rows("SELECT key FROM Cache WHERE raw = 1 ORDER BY rowid")]

    def volume(self) -> int:
        if self._cache is not None:
            return int(self._cache.volume())
        if self._ro is None:
            return 0
        pages = self._rows("PRAGMA page_count")[0][0] * self._rows("PRAGMA page_size")[0][0]
        return int(pages + self._rows("SELECT COALESCE(SUM(size), 0) FROM Cache")[0][0])

    def clear(self) -> None:
        if self._cache is None:
            log.warning("the cache directory %s is read-only: nothing was cleared", self.directory)
            return
        self._cache.clear()

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        if self._ro is not None:
            self._ro.close()

"""The memo layer: computed feature data stored as bytes in a diskcache directory.

* Values are bytes only (safetensors or JSON), never pickle. :class:`NoPickleDisk`
  refuses to store anything else and refuses to unpickle anything it finds, so a
  writable cache directory cannot be turned into code execution (diskcache's default
  pickling, CVE-2025-69872).
* Every value carries a sha256 of its payload; a corrupted or truncated entry is
  detected on read, dropped, and reported as a miss so the caller recomputes it.
* Keys are sha256 digests of everything that fixes a result (see :func:`memo_key`).

The directory defaults to ``cache/memo`` in the project and can be moved with the
``FEATURESCOPE_CACHE_DIR`` environment variable; ``FEATURESCOPE_CACHE_SIZE`` (bytes)
sets the size limit (default 4 GiB, least recently stored entries go first).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import diskcache
from diskcache.core import MODE_PICKLE, UNKNOWN

if TYPE_CHECKING:
    from core.engine.features import FeatureData

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = PROJECT_ROOT / "cache" / "memo"
DEFAULT_SIZE = 4 << 30
_MAGIC = b"FSM1"


class MemoError(RuntimeError):
    """The cache directory cannot be used (message says why and what to do)."""


class NoPickleDisk(diskcache.Disk):
    """A diskcache ``Disk`` that stores and returns bytes only, and never unpickles."""

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

    def fetch(self, mode, filename, value, read):
        if mode == MODE_PICKLE:
            raise ValueError(
                "refusing to unpickle a cache value: the cache directory was tampered with"
            )
        return super().fetch(mode, filename, value, read)


def memo_key(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts`` plus the schema version."""
    from core.engine.features import SCHEMA_VERSION

    text = json.dumps([SCHEMA_VERSION, *parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Memo:
    """Bytes-only memo store with integrity checks.

    Args:
        directory: where entries live (default ``$FEATURESCOPE_CACHE_DIR`` or ``cache/memo``).
        size_limit: bytes kept before eviction (default ``$FEATURESCOPE_CACHE_SIZE`` or 4 GiB).
    """

    def __init__(self, directory: str | Path | None = None, size_limit: int | None = None):
        directory = Path(directory or os.environ.get("FEATURESCOPE_CACHE_DIR") or DEFAULT_DIR)
        if size_limit is None:
            size_limit = int(os.environ.get("FEATURESCOPE_CACHE_SIZE", DEFAULT_SIZE))
        self.directory = directory
        self.read_only = False
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(
                str(directory),
                disk=NoPickleDisk,
                size_limit=size_limit,
                eviction_policy="least-recently-stored",
            )
        except (OSError, sqlite3.OperationalError) as exc:
            raise MemoError(
                f"cannot open the cache directory {directory}: {exc}. Make it writable, or point "
                "FEATURESCOPE_CACHE_DIR at a writable directory"
            ) from exc
        self.hits = 0
        self.misses = 0
        self.write_errors = 0
        self._write_failing = False

    # --- bytes ----------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes | None:
        try:
            blob = self._cache.get(key, default=None)
        except (ValueError, OSError, sqlite3.DatabaseError) as exc:
            log.warning("dropping unreadable cache entry %s: %s", key[:12], exc)
            self.delete(key)
            blob = None
        if blob is None:
            self.misses += 1
            return None
        if not isinstance(blob, bytes) or len(blob) < 36 or blob[:4] != _MAGIC:
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
        blob = _MAGIC + hashlib.sha256(payload).digest() + payload
        try:
            self._cache.set(key, blob)
            self._write_failing = False
            return True
        except (OSError, sqlite3.DatabaseError) as exc:
            self.write_errors += 1
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
            return False

    @property
    def writes_failing(self) -> bool:
        """True while writes fail (full or read-only directory); the next good write clears it."""
        return self._write_failing

    def delete(self, key: str) -> None:
        with contextlib.suppress(OSError, sqlite3.DatabaseError, ValueError):
            self._cache.delete(key)

    # --- typed helpers ---------------------------------------------------------------------
    def get_feature(self, key: str) -> FeatureData | None:
        from core.engine.features import FeatureData

        payload = self.get_bytes(key)
        if payload is None:
            return None
        try:
            return FeatureData.from_bytes(payload)
        except Exception as exc:  # any decode failure means a bad entry
            log.warning("dropping undecodable feature entry %s: %s", key[:12], exc)
            self.delete(key)
            return None

    def put_feature(self, key: str, feature: FeatureData) -> bool:
        return self.put_bytes(key, feature.to_bytes())

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
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def volume(self) -> int:
        return int(self._cache.volume())

    def clear(self) -> None:
        self._cache.clear()

    def close(self) -> None:
        self._cache.close()

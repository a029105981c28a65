"""Objects built once per server process and shared by every session (workspaces, the memo).

They are kept here, in a module-level registry, and not in ``st.cache_resource``: any
browser session, signed in or not, can send Streamlit's ``clear_cache`` message over the
websocket, and that empties Streamlit's caches for everyone, so the next visitor of every
signed-in user's workspace would rebuild it (load the model again). Nothing a session sends
reaches this registry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class Registry:
    """A bounded, thread-safe map from keys to objects built on first use.

    Each key is built once even when many sessions ask at the same moment (the others wait
    for it); a build that raises stores nothing. Beyond ``max_entries`` the least recently
    used entry is dropped."""

    def __init__(self, max_entries: int):
        self.max_entries = max(1, int(max_entries))
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def values(self) -> list[Any]:
        """The objects built so far, least recently used first."""
        with self._lock:
            return list(self._items.values())

    def pop(self, key: str) -> Any | None:
        """Forget ``key``'s object (``None`` when there is none)."""
        with self._lock:
            return self._items.pop(key, None)

    def get(self, key: str, build: Callable[[], Any]) -> Any:
        """The object for ``key``, built with ``build()`` the first time."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            gate = self._building.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            try:
                value = build()
            except BaseException:
                with self._lock:
                    self._drop_gate(key, gate)
                raise
            with self._lock:  # stored before the gate goes, so nobody builds it twice
                self._items[key] = value
                while len(self._items) > self.max_entries:
                    self._items.popitem(last=False)
                self._drop_gate(key, gate)
            return value

    def _drop_gate(self, key: str, gate: threading.Lock) -> None:
        if self._building.get(key) is gate:
            del self._building[key]

    def clear(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            self._items.clear()

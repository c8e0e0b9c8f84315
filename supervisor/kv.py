"""The key/value store workers see through wws's snapshot protocol.

Each request gets a copy of its worker's namespace (``kv`` in the request);
after a successful run only what the worker changed (keys set, keys deleted)
is written back, atomically, so concurrent requests that touch different keys
of one namespace do not lose each other's updates (wws replaces the whole
namespace and does). A failed request writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable


class KvLimitError(Exception):
    """A write would break a limit; nothing of that request is applied."""


class MemoryKv:
    """In-process store (wws's behaviour: gone on restart)."""

    def __init__(
        self, max_keys: int = 10_000, max_key_bytes: int = 1024, max_value_bytes: int = 1 << 20
    ) -> None:
        self._namespaces: dict[str, dict[str, str]] = {}
        self.max_keys = max_keys
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes

    def snapshot(self, namespace: str) -> dict[str, str]:
        return dict(self._namespaces.get(namespace, {}))

    def apply(self, namespace: str, changed: dict[str, str], deleted: Iterable[str]) -> None:
        """Write one request's changes, all or nothing.

        Raises:
            KvLimitError: a key or value is too large, or the namespace would
                hold too many keys.
        """
        for key, value in changed.items():
            if len(key.encode()) > self.max_key_bytes:
                raise KvLimitError(
                    f"key of {len(key.encode())} bytes is over the {self.max_key_bytes}-byte limit"
                )
            if len(value.encode()) > self.max_value_bytes:
                raise KvLimitError(f"value of {key!r} is over the {self.max_value_bytes}-byte limit")
        current = self._namespaces.setdefault(namespace, {})
        deleted = [key for key in deleted if key not in changed]
        added = sum(1 for key in changed if key not in current) - sum(1 for key in deleted if key in current)
        if len(current) + added > self.max_keys:
            raise KvLimitError(f"namespace {namespace!r} would hold more than {self.max_keys} keys")
        for key in deleted:
            current.pop(key, None)
        current.update(changed)

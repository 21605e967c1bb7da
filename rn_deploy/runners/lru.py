"""A bounded least-recently-used map whose evictions release what they held.

Per-shape state on a GPU (an ONNX Runtime CUDA-graph session, a TensorRT context with its captured
graph and static buffers) costs device memory for as long as it is kept. A service that sees
arbitrary image sizes must not grow it without bound: :class:`ShapeLRU` keeps at most ``maxsize``
entries and calls ``on_evict`` on each one it drops (and on every entry at :meth:`clear`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_MAX_SHAPES = 8


class ShapeLRU(Generic[K, V]):
    """``get_or_create(key, factory)``: the entry for ``key``, made by ``factory()`` if absent, evicting the oldest beyond ``maxsize``.

    Attributes:
        evictions: how many entries were dropped to stay within ``maxsize``.
    """

    def __init__(self, maxsize: int = DEFAULT_MAX_SHAPES, on_evict: Callable[[K, V], None] | None = None):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize, self.on_evict = maxsize, on_evict
        self._d: OrderedDict[K, V] = OrderedDict()
        self.evictions = 0

    def get_or_create(self, key: K, factory: Callable[[], V]) -> tuple[V, bool]:
        """(entry, created): the cached entry (now most recent), or a new one from ``factory``."""
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key], False
        while len(self._d) >= self.maxsize:  # evict first: the new entry may need the memory
            old_key, old = self._d.popitem(last=False)
            self.evictions += 1
            if self.on_evict is not None:
                self.on_evict(old_key, old)
        value = factory()
        self._d[key] = value
        return value, True

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._d))

    def clear(self) -> None:
        """Drop every entry (calling ``on_evict`` on each), oldest first."""
        while self._d:
            k, v = self._d.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict(k, v)

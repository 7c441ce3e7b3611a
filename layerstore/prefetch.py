"""Run a chunk iterator in a background thread, a few chunks ahead of its consumer.

Reading, hashing and decompressing a layer are C calls that release the GIL
(hashlib, zlib and zstandard all do for large buffers), so on a second core
they overlap the unpacker's Python work and system calls, the way
``tar -xz`` overlaps a gzip process. The queue is bounded: memory stays at
``depth`` chunks however fast the producer is.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Self

__all__ = ["Prefetch"]

_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetch:
    """Iterate ``chunks`` in a thread; errors in it re-raise in the consumer.

    Always ``close()`` (or use ``with``): it stops the thread and waits for
    it, so nothing reads the caller's stream after the consumer returns.
    """

    def __init__(self, chunks: Iterable[bytes], depth: int = 8) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, args=(chunks,), name="layer-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failed):
            self._done = True
            raise item.error
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _produce(self, chunks: Iterable[bytes]) -> None:
        try:
            for chunk in chunks:
                if not self._put(chunk):
                    return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, who decides
            self._put(_Failed(exc))

    def _put(self, item: object) -> bool:
        """Queue ``item``, giving up once the consumer has closed us."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

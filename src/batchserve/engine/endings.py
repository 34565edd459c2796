"""Long polls woken the moment their batch ends, rather than at their next look.

A batch ends when the store moves it to a final state or removes it. That happens on any
thread (the scheduler's, a request's); the long polls waiting for it are coroutines of the
server's event loop. :class:`Endings` carries the one to the other. It knows only what this
process changes: a long poll still looks again now and then, for a store other processes share.
"""

from __future__ import annotations

import asyncio
import threading


class Endings:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def expect(self, batch_id: str) -> asyncio.Future[None]:
        """A future of the running loop that is done once ``batch_id`` ends. Take it before
        looking at the batch, so that an end between the look and the wait is not missed; give
        it back with :meth:`forget` when done with it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.setdefault(batch_id, set()).add(future)
        return future

    def forget(self, batch_id: str, future: asyncio.Future[None]) -> None:
        with self._lock:
            waiting = self._waiters.get(batch_id)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiters[batch_id]

    def ended(self, batch_id: str) -> None:
        """Called from any thread once the store's change is committed."""
        with self._lock:
            waiting = self._waiters.pop(batch_id, set())
        for future in waiting:
            future.get_loop().call_soon_threadsafe(_wake, future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

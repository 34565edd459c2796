"""Password checks off the shared thread pool, a few at a time.

An argon2 check (or hash) takes about 64 MiB and a tenth of a second of a core. Run on the
thread pool that serves every plain route, forty wrong logins at once would hold that pool for
seconds, with health and status reads queued behind them, and take gigabytes of memory. So the
routes that check or set a password run it on threads of their own, at most
``login_concurrency`` at a time; the others wait their turn on the event loop, which costs no
thread, for at most ``login_wait`` seconds, and then get 503 with ``Retry-After``. One client
address has at most :data:`PER_CLIENT` such requests in progress: more get 429 at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request

from batchserve.engine.errors import Busy, TooManyRequests

T = TypeVar("T")

PER_CLIENT = 4


class PasswordChecks:
    """Where the password work of one app runs. Made on the event loop, used only there."""

    def __init__(self, concurrency: int, wait: float, per_client: int = PER_CLIENT) -> None:
        self._turns = anyio.Semaphore(concurrency)
        # The threads: a limiter of the same size, never waited on (a turn is held first), so
        # the work never takes a token of the default pool that plain routes run on.
        self._threads = anyio.CapacityLimiter(concurrency)
        self._wait = wait
        self._per_client = per_client
        self._in_progress: dict[str, int] = {}

    async def run(self, client: str, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` on a thread of its own, once a turn is free."""
        if self._in_progress.get(client, 0) >= self._per_client:
            raise TooManyRequests(
                f"{self._per_client} logins or password changes from this address are in "
                "progress already; try again in 1 second(s), once they are answered.",
                retry_after=1,
            )
        self._in_progress[client] = self._in_progress.get(client, 0) + 1
        try:
            got_turn = False
            with anyio.move_on_after(self._wait):
                await self._turns.acquire()
                got_turn = True
            if not got_turn:
                raise Busy(
                    "The server is checking as many passwords as it may at once; "
                    "try again in a second.",
                    retry_after=1,
                )
            try:
                return await anyio.to_thread.run_sync(work, *args, limiter=self._threads)
            finally:
                self._turns.release()
        finally:
            left = self._in_progress[client] - 1
            if left:
                self._in_progress[client] = left
            else:
                del self._in_progress[client]


async def password_checks(request: Request) -> PasswordChecks:
    """The app's :class:`PasswordChecks`, made on first use (anyio's primitives belong to the
    running event loop, so not when the app is built)."""
    checks: PasswordChecks | None = getattr(request.app.state, "password_checks", None)
    if checks is None:
        settings = request.app.state.engine.settings
        checks = PasswordChecks(settings.login_concurrency, settings.login_wait)
        request.app.state.password_checks = checks
    return checks


PasswordChecksDep = Annotated[PasswordChecks, Depends(password_checks)]


def client_address(request: Request) -> str:
    """The address login limits are counted for: the connection's peer."""
    return request.client.host if request.client else "unknown"

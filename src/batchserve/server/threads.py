"""The threads that uploads and consumes wait on, apart from everything else's.

Sync routes, sync dependencies and file I/O of uploaded forms share anyio's default limiter of
40 threads. An upload holds a thread for as long as its body keeps coming (the parser reads it
from a thread), and a consume for as long as its service runs: without limiters of their own,
a few dozen slow uploads or consumes would take every thread, and health, log-in and status
reads would queue behind them. Routes that run those on a thread pass these limiters to
``anyio.to_thread.run_sync``; the rest keep the default one.
"""

from __future__ import annotations

from dataclasses import dataclass

from anyio import CapacityLimiter

from batchserve.settings import Settings


@dataclass(frozen=True)
class Threads:
    uploads: CapacityLimiter  # reading and storing record uploads, bundles, session objects
    consumes: CapacityLimiter  # waiting for a consumed service's answer

    @classmethod
    def of(cls, settings: Settings) -> Threads:
        # anyio >= 4.2 builds a limiter outside of an event loop, as here (at app creation).
        return cls(
            uploads=CapacityLimiter(settings.upload_threads),
            consumes=CapacityLimiter(settings.consume_threads),
        )

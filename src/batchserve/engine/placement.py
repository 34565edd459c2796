"""Whether this node's executor can place a worker of a service now, and the scheduling error
that tells a batch's owner when it cannot (Azure Batch's ``JobSchedulingError``).

A service's resources are checked when it is published, against what the cluster has then; a
Ray cluster may shrink afterwards (a node leaves, a GPU node is taken away). Its chunks would
then wait for an actor that never starts. The scheduler asks here before it claims a chunk: a
batch that cannot be placed is left unclaimed, for this node to look at again or for another
node that can, and says why in its ``scheduling_error`` until a chunk of it is claimed.
"""

from __future__ import annotations

import time
from typing import Any

from batchserve.engine.running import scheduling_error
from batchserve.engine.tasks import ServiceSpec
from batchserve.executors.base import Executor
from batchserve.store import Store
from batchserve.store.models import Batch

#: The code of the scheduling error of a batch whose workers no node can hold.
RESOURCES_UNAVAILABLE = "ResourcesUnavailable"
#: How long an answer of the executor is kept before it is asked again, per service version.
LOOK_SECONDS = 5.0


class Placement:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._seen: dict[str, tuple[float, str | None]] = {}

    def problem(self, executor: Executor, spec: ServiceSpec) -> str | None:
        """Why no worker of ``spec`` can be placed now, or None."""
        now = time.monotonic()
        seen = self._seen.get(spec.key)
        if seen is None or now - seen[0] > LOOK_SECONDS:
            seen = (now, executor.unavailable(spec.resources))
            self._seen[spec.key] = seen
        return seen[1]

    def say(self, batch: Batch, problem: str) -> None:
        """The batch waits for resources: its scheduling error says so (written once)."""
        said: dict[str, Any] = batch.scheduling_error or {}
        if said.get("code") == RESOURCES_UNAVAILABLE and said.get("message", "").endswith(problem):
            return
        self.store.update_batch(
            batch.id,
            scheduling_error=scheduling_error(
                "servererror",
                RESOURCES_UNAVAILABLE,
                f"The batch waits: {problem}",
            ),
        )

    def placed(self, batch: Batch) -> None:
        """A chunk of the batch was claimed: a scheduling error of this kind is gone."""
        if (batch.scheduling_error or {}).get("code") == RESOURCES_UNAVAILABLE:
            self.store.update_batch(batch.id, scheduling_error=None)

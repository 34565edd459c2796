"""The executor port: where the scheduler sends tasks, and how it hears back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from batchserve.engine.tasks import ChunkTask, ConsumeTask, LoadTask, ServiceSpec, TaskEvent

EventSink = Callable[[TaskEvent], None]


class ExecutorUnavailable(RuntimeError):
    """The executor cannot start: what it runs on is missing or unreachable."""


class Executor(Protocol):
    """Runs tasks on workers and reports :class:`~batchserve.engine.tasks.TaskEvent` s.

    Events go to the sink given at construction, from any thread.
    """

    def start(self) -> None: ...

    def shutdown(self) -> None: ...

    def describe(self) -> str:
        """One line for the operator: where service code runs, and how confined."""
        ...

    def capacity(self) -> int:
        """How many tasks can run at once (free or not)."""
        ...

    def free_slots(self) -> int:
        """How many more tasks can be submitted right now."""
        ...

    def slots_for(self, spec: ServiceSpec) -> int:
        """How many of the free slots a task of this service takes."""
        ...

    def check_resources(self, resources: dict[str, Any]) -> str | None:
        """Why no worker here could have these resources (a service's ``resources``), or None."""
        ...

    def unavailable(self, resources: dict[str, Any]) -> str | None:
        """Why no worker can be placed with these resources now (what the executor runs on
        has changed since the service was published), or None."""
        ...

    def submit(self, task: ChunkTask | ConsumeTask | LoadTask) -> None: ...

    def stop_task(self, task_id: str) -> bool:
        """Stop a running task at once (its worker is killed, not waited for).

        Returns when the worker is gone, so its files no longer change. A :class:`Lost` event
        with ``stopped=True`` follows. False when the task is not running here.
        """
        ...

    def workers(self) -> list[dict[str, object]]:
        """A description of each worker (pid, busy, task) for operators and tests."""
        ...

    def owed_releases(self) -> set[str]:
        """The batches whose job release some worker here owes (it ran chunks of the batch,
        which has release code), to be run once the batch ends."""
        ...

    def release(self, batch_id: str) -> None:
        """The batch ended: each worker that owes its release runs it (see
        :class:`~batchserve.engine.tasks.ReleaseTask`)."""
        ...


class NoWorkers:
    """The executor of a node that runs no service code (an API node, ``--workers 0``):
    chunks and one-record requests run on the compute nodes sharing its store."""

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def describe(self) -> str:
        return "none on this node (an API node): the compute nodes sharing its store run chunks"

    def capacity(self) -> int:
        return 0

    def free_slots(self) -> int:
        return 0

    def slots_for(self, spec: ServiceSpec) -> int:
        return 1

    def check_resources(self, resources: dict[str, Any]) -> str | None:
        return None  # the compute nodes judge them

    def unavailable(self, resources: dict[str, Any]) -> str | None:
        return None  # never asked: this node claims no chunks

    def submit(self, task: ChunkTask | ConsumeTask | LoadTask) -> None:
        raise RuntimeError("this node runs no tasks")

    def stop_task(self, task_id: str) -> bool:
        return False

    def workers(self) -> list[dict[str, object]]:
        return []

    def owed_releases(self) -> set[str]:
        return set()

    def release(self, batch_id: str) -> None:
        pass

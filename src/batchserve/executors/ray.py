"""Chunks on a Ray cluster: one actor per slot of a service version.

An actor loads its service's bundle and runs its ``init`` once, then runs chunk after chunk of
that version: it reads the chunk's records from the upload parts in the blob store and writes
the results (as segments on a store without append) and the artifacts back to it, so no record
passes through the API process. Progress and the chunk's figures come back as a stream of
small messages (a Ray generator), checked here as untrusted data, like a local worker's.

Slots: at most ``slots`` tasks run at once (default: the cluster's CPUs when it starts). An idle
actor keeps its service loaded for that version's next chunk; an actor of another version is
stopped to make room when all slots hold actors. A cancel kills the chunk's actor at once.
A dead actor, or a dead node, ends its chunk as lost, retried by the scheduler's worker-loss
policy under a new attempt (a new result key), so a record ends with exactly one result.

Ray is imported here only: the ``ray`` extra is needed for ``--executor ray`` alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from batchserve.engine.tasks import (
    ChunkTask,
    ConsumeTask,
    Finished,
    LoadTask,
    Lost,
    Progress,
    ReleaseTask,
    ServiceSpec,
    Task,
    chunk_result,
    consume_result,
    release_task_of,
    task_from_wire,
    task_to_wire,
)
from batchserve.executors.base import EventSink, ExecutorUnavailable
from batchserve.executors.process import MEMORY_VARIABLES, THREAD_VARIABLES, artifact_problem

log = logging.getLogger(__name__)

#: The variables of the API process that actors get: how to reach the blob store.
FORWARDED_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
NAMESPACE = "batchserve"
#: Seconds between looks at the cluster's live nodes.
WATCH_INTERVAL = 1.0
#: Seconds a new actor may take to start before idle actors are stopped to give it room.
ACTOR_START_GRACE = 3.0
#: Seconds a new actor may take to start (its node found, its process up) before its task is
#: given up as lost, and retried.
ACTOR_START_TIMEOUT = 120.0
#: Seconds stop_task waits for a killed actor's chunk to end before it reports it stopped.
STOP_WAIT = 10.0


class ServiceActor:
    """The body of an actor: a worker runtime for one service version (runs on the cluster)."""

    def __init__(self, blob_url: str, progress_interval: float) -> None:
        import pyarrow as pa

        from batchserve.blobs import blob_store_from_url
        from batchserve.worker.runtime import Runtime, warm_up

        pa.set_cpu_count(int(os.environ.get("OMP_NUM_THREADS") or 1))
        warm_up()
        self._interval = progress_interval
        self._runtime = Runtime(blob_store_from_url(blob_url), artifacts=self._put_artifact)

    def _put_artifact(self, task: ChunkTask, index: int, name: str, data: bytes) -> None:
        from batchserve.blobs import keys

        problem = artifact_problem(task, index, name)
        if problem:
            raise ValueError(problem)
        self._runtime.blobs.write_bytes(
            keys.artifact_key(task.batch_id, index, name, task.attempt), data
        )

    def pid(self) -> int:
        return os.getpid()

    def load(self, wire: dict[str, Any]) -> dict[str, Any]:
        task = task_from_wire(wire)
        try:
            self._runtime.load(task.service)
        except Exception as exc:  # reported when a chunk runs; the actor stays usable
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {}

    def consume(self, wire: dict[str, Any]) -> dict[str, Any]:
        task = task_from_wire(wire)
        assert isinstance(task, ConsumeTask)
        try:
            return self._runtime.run_consume(task)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    def release(self, wire: dict[str, Any]) -> dict[str, Any]:
        task = task_from_wire(wire)
        assert isinstance(task, ReleaseTask)
        return self._runtime.run_release(task)

    def run_chunk(self, wire: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Progress messages while the chunk runs, then its result."""
        task = task_from_wire(wire)
        assert isinstance(task, ChunkTask)
        messages: queue.Queue[dict[str, Any]] = queue.Queue()

        def report(succeeded: int, failed: int) -> None:
            messages.put({"type": "progress", "succeeded": succeeded, "failed": failed})

        def run() -> None:
            try:
                result = self._runtime.run_chunk(task, report, self._interval)
            except Exception as exc:  # an unreadable part, an unreachable store: the task fails
                result = {"error": f"{type(exc).__name__}: {exc}"}
            messages.put({"type": "finished", "result": result})

        threading.Thread(target=run, daemon=True, name="batchserve-chunk").start()
        while True:
            message = messages.get()
            yield message
            if message["type"] == "finished":
                return


def actor_options(resources: dict[str, Any]) -> dict[str, Any]:
    """Ray actor options for a service's resources (``num_cpus``, ``num_gpus``, ``memory``)."""
    options: dict[str, Any] = {"num_cpus": float(resources.get("num_cpus") or 1)}
    if resources.get("num_gpus"):
        options["num_gpus"] = float(resources["num_gpus"])
    if resources.get("memory"):
        options["memory"] = int(resources["memory"])
    return options


def resource_problem(resources: dict[str, Any], nodes: list[dict[str, float]]) -> str | None:
    """Why no node (of ``nodes``' total resources) can hold one actor of a service, or None."""
    wanted = {
        "CPU": float(resources.get("num_cpus") or 1),
        "GPU": float(resources.get("num_gpus") or 0),
        "memory": float(resources.get("memory") or 0),
    }
    if any(all(node.get(k, 0.0) >= v for k, v in wanted.items() if v) for node in nodes):
        return None
    asked = ", ".join(f"{k} {v:g}" for k, v in wanted.items() if v)
    largest = "; ".join(
        ", ".join(f"{k} {node.get(k, 0.0):g}" for k in wanted) for node in nodes[:5]
    )
    return (
        f"no node of the Ray cluster has what one worker of this service asks for ({asked}); "
        f"its nodes have: {largest or 'no live node'}. Ask for less, or add a larger node."
    )


@dataclass
class _Actor:
    handle: Any
    service: str  # the service version's key
    created: float = field(default_factory=time.monotonic)
    task: Task | None = None
    stopping: bool = False
    driver: threading.Thread | None = None
    # The job releases this actor owes, by batch, for batches it ran chunks of.
    releases: dict[str, ReleaseTask] = field(default_factory=dict)


class RayExecutor:
    def __init__(
        self,
        address: str,
        blob_url: str,
        sink: EventSink,
        slots: int | None = None,
        progress_interval: float = 0.25,
    ) -> None:
        self._address = address
        self._blob_url = blob_url
        self._sink = sink
        self._wanted_slots = slots
        self._n = slots or 1
        self._progress_interval = progress_interval
        self._actors: list[_Actor] = []
        self._lock = threading.RLock()
        self._closing = False
        self._remote: Any = None
        self._cluster_cpus = 0

    # --- the cluster ------------------------------------------------------------------------

    def start(self) -> None:
        env = {name: os.environ[name] for name in FORWARDED_VARIABLES if name in os.environ}
        env.update({name: os.environ.get(name, value) for name, value in MEMORY_VARIABLES.items()})
        try:
            ray.init(
                address=self._address,
                namespace=NAMESPACE,
                runtime_env={"env_vars": env},
                log_to_driver=False,
                configure_logging=False,
            )
        except (ConnectionError, RayError, RuntimeError, ValueError) as exc:
            raise ExecutorUnavailable(
                f"could not join the Ray cluster at {self._address!r} ({exc}); start one "
                "(ray start --head) or point --ray-address at its head, host:port"
            ) from None
        self._cluster_cpus = self._live_cpus()
        if self._wanted_slots is None:
            self._n = max(1, self._cluster_cpus)
        self._remote = ray.remote(ServiceActor)
        threading.Thread(target=self._watch, daemon=True, name="batchserve-ray-watch").start()

    def _live_cpus(self) -> int:
        return int(sum(node.get("CPU", 0.0) for node in self.nodes()))

    def _watch(self) -> None:
        """Follow the cluster's size: chunks are handed out only to workers that can start now,
        so a batch does not wait on a worker for which no node is left (after a node died),
        and, without a slot count set, the slots grow and shrink with the cluster."""
        while not self._closing:
            time.sleep(WATCH_INTERVAL)
            try:
                cpus = self._live_cpus()
            except Exception:  # the cluster is unreachable for now: keep the last figure
                continue
            with self._lock:
                self._cluster_cpus = cpus
                if self._wanted_slots is None:
                    self._n = max(1, cpus)

    def shutdown(self) -> None:
        with self._lock:
            self._closing = True
            actors, self._actors = list(self._actors), []
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor.handle, no_restart=True)
        with contextlib.suppress(Exception):
            ray.shutdown()

    def describe(self) -> str:
        return (
            f"{self._n} slot(s) of Ray actors on the cluster at {self._address}; service code "
            "runs with the rights of the cluster's worker processes (not sandboxed here)"
        )

    def nodes(self) -> list[dict[str, float]]:
        """The total resources of each live node."""
        return [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    def check_resources(self, resources: dict[str, Any]) -> str | None:
        return resource_problem(resources, self.nodes())

    def unavailable(self, resources: dict[str, Any]) -> str | None:
        return resource_problem(resources, self.nodes())

    def slots_for(self, spec: ServiceSpec) -> int:
        return 1  # Ray places each actor by its resources

    # --- slots ------------------------------------------------------------------------------

    def capacity(self) -> int:
        return self._n

    def free_slots(self) -> int:
        with self._lock:
            busy = sum(1 for a in self._actors if a.task is not None or a.stopping)
            return min(self._n, self._cluster_cpus) - busy

    def _actor_for(self, spec: ServiceSpec) -> _Actor:
        """An idle actor of the service version, else a new one, in place of the idle actor
        of another version that waited longest when every slot holds one (lock held)."""
        idle = [a for a in self._actors if a.task is None and not a.stopping]
        mine = next((a for a in idle if a.service == spec.key), None)
        if mine is not None:
            return mine
        if len(self._actors) >= self._n:
            others = sorted((a for a in idle if a.service != spec.key), key=lambda a: a.created)
            if not others:
                raise RuntimeError("no free slot")
            self._forget(others[0])
        options = actor_options(spec.resources)
        threads = str(max(1, int(options["num_cpus"])))
        actor = _Actor(
            self._remote.options(
                **options,
                max_restarts=0,
                max_task_retries=0,
                # Its progress stream and a consume may overlap the chunk loop's own thread.
                max_concurrency=4,
                runtime_env={"env_vars": dict.fromkeys(THREAD_VARIABLES, threads)},
            ).remote(self._blob_url, self._progress_interval),
            spec.key,
        )
        self._actors.append(actor)
        return actor

    def _forget(self, actor: _Actor) -> None:
        with self._lock:
            if actor in self._actors:
                self._actors.remove(actor)
        with contextlib.suppress(Exception):
            ray.kill(actor.handle, no_restart=True)

    def submit(self, task: ChunkTask | ConsumeTask | LoadTask) -> None:
        with self._lock:
            if self.free_slots() <= 0:
                raise RuntimeError("no free slot")
            actor = self._actor_for(task.service)
            actor.task = task
            if isinstance(task, ChunkTask) and task.release_key:
                actor.releases[task.batch_id] = release_task_of(task)
            actor.driver = threading.Thread(
                target=self._drive, args=(actor, task), daemon=True, name="batchserve-ray-task"
            )
        actor.driver.start()

    # --- running a task ---------------------------------------------------------------------

    def _drive(self, actor: _Actor, task: Task) -> None:
        """Run one task on its actor and turn what comes back into events."""
        wire = task_to_wire(task)
        event: Finished | Lost
        try:
            self._wait_started(actor)
            if isinstance(task, ChunkTask):
                event = self._run_chunk(actor, task, wire)
            elif isinstance(task, ConsumeTask):
                raw = ray.get(actor.handle.consume.remote(wire))
                spec = task.service
                event = Finished(task.task_id, consume_result(raw, spec.outputs, spec.artifacts))
            else:
                raw = ray.get(actor.handle.load.remote(wire))
                if isinstance(raw, dict) and raw.get("error"):
                    log.warning("loading %s on a Ray actor failed: %s", task.service.key, raw)
                event = Finished(task.task_id, {})
        except (RayActorError, RayError, GetTimeoutError) as exc:
            with self._lock:
                stopped = actor.stopping
            self._forget(actor)
            if stopped:
                reason = "stopped"
            elif isinstance(exc, GetTimeoutError):
                reason = "no node of the cluster had room to start a worker for it"
            else:
                reason = f"the Ray actor died ({type(exc).__name__})"
            event = Lost(task.task_id, reason, stopped)
        with self._lock:
            if actor.task is task:
                actor.task = None
        self._sink(event)

    def _wait_started(self, actor: _Actor) -> None:
        """Wait for the actor to run somewhere. A new actor may find no node with room: when
        the cluster shrank under the actors it has (a node died), or it took too long, its task
        is given up as lost, to be retried when there is room."""
        started = actor.handle.pid.remote()
        began = time.monotonic()
        deadline = began + ACTOR_START_TIMEOUT
        while True:
            ready, _ = ray.wait([started], timeout=WATCH_INTERVAL)
            if ready:
                ray.get(started)
                return
            with self._lock:
                busy = sum(1 for a in self._actors if a.task is not None or a.stopping)
                shrunk = busy > min(self._n, self._cluster_cpus)
                # Idle actors keep their resources; one waiting to start needs them more.
                idle = sorted(
                    (a for a in self._actors if a.task is None and not a.stopping),
                    key=lambda a: a.created,
                )
            if idle and time.monotonic() - began > ACTOR_START_GRACE:
                self._forget(idle[0])
                continue
            if shrunk or time.monotonic() > deadline:
                raise GetTimeoutError("no node has room for a new worker")

    def _run_chunk(self, actor: _Actor, task: ChunkTask, wire: dict[str, Any]) -> Finished:
        for ref in actor.handle.run_chunk.remote(wire):
            message = ray.get(ref)
            if not isinstance(message, dict):
                raise ValueError("a Ray actor sent something other than a message")
            if message.get("type") == "progress":
                succeeded, failed = message.get("succeeded"), message.get("failed")
                if all(isinstance(v, int) and 0 <= v <= task.count for v in (succeeded, failed)):
                    self._sink(Progress(task.task_id, int(succeeded), int(failed)))  # type: ignore[arg-type]
            elif message.get("type") == "finished":
                return Finished(task.task_id, chunk_result(message.get("result"), task.count))
        return Finished(task.task_id, {"error": "the Ray actor ended the chunk without a result"})

    # --- job releases ------------------------------------------------------------------------

    def owed_releases(self) -> set[str]:
        with self._lock:
            return {batch_id for a in self._actors for batch_id in a.releases}

    def release(self, batch_id: str) -> None:
        """Each actor that ran the batch runs its release, alongside whatever it runs now (an
        actor takes a few calls at once); an actor gone since took what it prepared with it."""
        with self._lock:
            owing = [(a, a.releases.pop(batch_id)) for a in self._actors if batch_id in a.releases]
        for actor, task in owing:
            threading.Thread(
                target=self._run_release,
                args=(actor, task),
                daemon=True,
                name="batchserve-ray-release",
            ).start()

    def _run_release(self, actor: _Actor, task: ReleaseTask) -> None:
        try:
            raw = ray.get(actor.handle.release.remote(task_to_wire(task)))
        except RayError as exc:
            log.warning("the job release of batch %s did not run: %s", task.batch_id, exc)
            return
        if isinstance(raw, dict) and raw.get("error"):
            log.warning(
                "the job release of batch %s failed: %s", task.batch_id, str(raw["error"])[:2000]
            )
        else:
            log.info("ran the job release of batch %s on a Ray actor", task.batch_id)

    def stop_task(self, task_id: str) -> bool:
        with self._lock:
            actor = next(
                (a for a in self._actors if a.task is not None and a.task.task_id == task_id),
                None,
            )
            if actor is None:
                return False
            actor.stopping = True
            driver = actor.driver
        with contextlib.suppress(Exception):
            ray.kill(actor.handle, no_restart=True)
        # Its driver sees the actor die, reports the task stopped, and frees the slot: once it
        # has, the actor writes nothing more.
        if driver is not None:
            driver.join(timeout=STOP_WAIT)
        return True

    def workers(self) -> list[dict[str, object]]:
        with self._lock:
            out: list[dict[str, object]] = []
            for number, a in enumerate(self._actors):
                info: dict[str, object] = {
                    "slot": number,
                    "actor": a.handle._actor_id.hex(),
                    "service": a.service,
                    "busy": a.task is not None,
                    "task": a.task.task_id if a.task else None,
                }
                if isinstance(a.task, ChunkTask):
                    info.update(batch_id=a.task.batch_id, chunk_id=a.task.chunk_id)
                out.append(info)
            return out

"""The engine: the one object the faces talk to. It owns the store, the blob store, the
scheduler and the executor, and recovers unfinished work when it starts."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from batchserve.blobs import BlobStore, LocalBlobStore, blob_store_from_url
from batchserve.engine.auth import Accounts
from batchserve.engine.batch_results import ResultOps
from batchserve.engine.batches import BatchOps
from batchserve.engine.endings import Endings
from batchserve.engine.job_tasks import JobTaskOps
from batchserve.engine.metrics import NodeMetrics
from batchserve.engine.nodes import Identity, Membership
from batchserve.engine.scheduler import ConsumeWaiting, Scheduler, Wake
from batchserve.engine.services import ServiceOps
from batchserve.executors import Executor, ProcessExecutor
from batchserve.executors.base import EventSink, NoWorkers
from batchserve.settings import Settings
from batchserve.store import Store, upgrade
from batchserve.store.nodes import node_name
from batchserve.worker.sandbox import WorkerSandbox, not_dumpable

log = logging.getLogger(__name__)


def make_private(home: Path) -> None:
    """Keep the data directory (database, blobs, the admin password file) to this server's
    user: the folder 0700, and everything the server creates from now on 0600 / 0700."""
    os.umask(0o077)
    home.mkdir(parents=True, exist_ok=True)
    mode = home.stat().st_mode & 0o777
    if mode != 0o700:
        if mode & 0o077:
            log.warning("the data directory %s was open to others (%o); made it 0700", home, mode)
        os.chmod(home, 0o700)


def worker_sandbox(settings: Settings) -> WorkerSandbox:
    """How the workers are confined: out of sight of everything the server keeps."""
    hidden = [settings.home]
    if settings.blob_store_url.startswith("file://"):
        hidden.append(Path(settings.blob_store_url.removeprefix("file://")))
    if settings.db_url.startswith("sqlite:///"):
        hidden.append(Path(settings.db_url.removeprefix("sqlite:///")).parent)
    config = Path(os.path.expanduser("~")) / ".config" / "batchserve"
    hidden.append(config)
    return WorkerSandbox.create(
        settings.sandbox,
        hidden,
        network=settings.worker_network,
        uid_base=settings.worker_uid_base,
        memory_limit=settings.worker_memory,
    )


class ConfigurationError(RuntimeError):
    """The settings ask for backends that cannot work (together) here."""


def build_executor(settings: Settings, blobs: BlobStore, sink: EventSink) -> Executor:
    """The executor the settings choose: none (an API node), the local pool, or actors on a
    Ray cluster."""
    if settings.workers == 0:
        return NoWorkers()
    if settings.executor == "ray":
        try:
            from batchserve.executors.ray import RayExecutor
        except ImportError:
            raise ConfigurationError(
                "--executor ray needs Ray, which is not installed; install it with "
                "pip install 'batchserve[ray]'"
            ) from None
        return RayExecutor(
            settings.ray_address, blobs.url, sink, settings.workers, settings.progress_interval
        )
    if not isinstance(blobs, LocalBlobStore):
        # Sandboxed workers cannot reach the network, let alone hold the store's keys: the pool
        # hands them the open files of their tasks, which needs a folder.
        raise ConfigurationError(
            f"the local executor needs a file:// blob store, not {blobs.url}; run chunks on a "
            "Ray cluster (--executor ray) to keep batch data in S3"
        )
    return ProcessExecutor(
        settings.workers or os.cpu_count() or 1,
        blobs,
        sink,
        worker_sandbox(settings),
        settings.progress_interval,
    )


ROLES = ("all", "api", "compute")


class Engine:
    """One node: ``all`` (the embedded server: API and workers), ``api`` (``--workers 0``) or
    ``compute`` (``batchserve worker``: workers, no HTTP face). Any number of nodes share one
    PostgreSQL store and one blob store; SQLite is one node's alone."""

    def __init__(self, settings: Settings, role: str | None = None) -> None:
        self.settings = settings
        self.role = role or ("api" if settings.workers == 0 else "all")
        if self.role not in ROLES:
            raise ValueError(f"unknown node role {self.role!r}")
        if self.role == "compute" and settings.workers == 0:
            raise ConfigurationError("a compute node needs workers: --workers is at least 1")
        make_private(settings.home)
        upgrade(settings.db_url)
        self.identity = Identity.here(self.role)
        self.store = Store(settings.db_url, node_name(self.identity.id))
        if self.role != "all" and not self.store.shared:
            self.store.close()
            raise ConfigurationError(
                "API nodes (--workers 0) and compute nodes (batchserve worker) share their "
                "batches through PostgreSQL; SQLite is one server's alone. Set "
                "BATCHSERVE_DATABASE_URL=postgresql://... on every node, or run one "
                "batchserve serve."
            )
        self.endings = Endings()
        self.store.on_end = self.endings.ended
        # The composition root: the backends the settings choose are named here only.
        self.blobs = blob_store_from_url(settings.blob_store_url)
        self.accounts = Accounts(
            self.store, settings.access_token_lifetime, settings.refresh_token_lifetime
        )
        self.scheduler = Scheduler(
            self.store,
            self.blobs,
            settings.max_worker_loss_retries,
            target_chunk_seconds=settings.target_chunk_seconds,
            max_chunk_size=settings.max_chunk_size,
            consume_workers=settings.consume_workers,
        )
        self.executor = build_executor(settings, self.blobs, self.scheduler.post)
        self.membership = Membership(
            self.store,
            self.identity,
            lease_seconds=settings.node_lease,
            workers=self.executor.capacity(),
            executor=self.executor.describe(),
            on_wake=self._woken,
        )
        self.scheduler.node_id = self.identity.id
        self.scheduler.is_leader = lambda: self.membership.is_leader
        self.scheduler.cluster = self.membership.cluster
        # Prometheus figures: this node's own, and on the nodes that answer HTTP the cluster's,
        # read from the store at each scrape (see batchserve.engine.metrics).
        self.metrics = self.scheduler.metrics = NodeMetrics()
        if self.role != "compute":
            self.metrics.watch_cluster(self.store)
        self.services = ServiceOps(
            self.store,
            self.blobs,
            self.scheduler,
            consume_timeout=settings.consume_timeout,
            check_resources=self.executor.check_resources,
            remote=self.role == "api",
        )
        self.batches = BatchOps(
            self.store,
            self.blobs,
            self.scheduler,
            max_user_priority=settings.max_user_priority,
            allowed_environment=settings.allowed_environment,
        )
        self.results = ResultOps(self.store, self.blobs)
        self.job_tasks = JobTaskOps(self.batches, self.store, self.blobs)
        self.generated_admin_password: str | None = None
        self._stopped = False

    def start(self) -> None:
        # Processes of this user (sandboxed workers share it when the server is not root) must
        # not read this one's memory or environment through /proc.
        not_dumpable()
        if not self.store.shared:
            self._check_alone()
        if self.role != "compute":
            self.generated_admin_password = self.accounts.ensure_admin(
                self.settings.admin_password, self.settings.admin_password_file
            )
        self.executor.start()
        self.membership.start()
        self.scheduler.start(self.executor)
        self.scheduler.post(Wake())

    def _check_alone(self) -> None:
        """SQLite is one server's: refuse to start beside another live one on the same file."""
        live, _ = self.membership.cluster()
        if live:
            self.store.close()
            raise ConfigurationError(
                "another batchserve server runs on this data directory's SQLite database "
                f"({self.settings.db_url}); stop it first, or share batches between servers "
                "through PostgreSQL (BATCHSERVE_DATABASE_URL)"
            )

    def _woken(self, payload: str) -> None:
        """A notification from another node (or this node's leadership): act on it now."""
        kind, _, ident = payload.partition(":")
        if kind == "end":
            self.endings.ended(ident)
        elif kind == "consumed":
            self.services.answered(ident)
            return
        elif kind == "consume":
            self.scheduler.post(ConsumeWaiting())
            return
        elif kind in ("listening", "lead"):  # anything may have been missed meanwhile
            self.scheduler.post(ConsumeWaiting())
        self.scheduler.post(Wake())

    def drain(self) -> None:
        """Claim nothing new; the chunks running now finish (see :meth:`running`)."""
        self.scheduler.draining = True
        self.membership.draining = True
        self.scheduler.post(Wake())

    def running(self) -> int:
        """How many chunks run on this node now."""
        return len(self.scheduler._running)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.scheduler.stop()
        self.executor.shutdown()
        self.scheduler.release()
        self.membership.stop()
        self.store.close()

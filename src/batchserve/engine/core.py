"""The engine: the one object the faces talk to. It owns the store, the blob store, the
scheduler and the executor, and recovers unfinished work when it starts."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from batchserve.blobs import BlobNotFound, BlobStore, LocalBlobStore, blob_store_from_url, keys
from batchserve.blobs.segments import open_stream_reader
from batchserve.engine.auth import Accounts
from batchserve.engine.batch_results import ResultOps
from batchserve.engine.batches import BatchOps
from batchserve.engine.endings import Endings
from batchserve.engine.results import read_results
from batchserve.engine.scheduler import CancelBatch, Scheduler, Wake, remove_batch
from batchserve.engine.services import ServiceOps
from batchserve.executors import Executor, ProcessExecutor
from batchserve.executors.base import EventSink
from batchserve.settings import Settings
from batchserve.states import BatchState, ChunkState
from batchserve.store import Store, upgrade
from batchserve.store.models import utcnow
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
    """The executor the settings choose: the local pool, or actors on a Ray cluster."""
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


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        make_private(settings.home)
        upgrade(settings.db_url)
        self.store = Store(settings.db_url)
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
        self.services = ServiceOps(
            self.store,
            self.blobs,
            self.scheduler,
            consume_timeout=settings.consume_timeout,
            check_resources=self.executor.check_resources,
        )
        self.batches = BatchOps(
            self.store,
            self.blobs,
            self.scheduler,
            max_user_priority=settings.max_user_priority,
            allowed_environment=settings.allowed_environment,
        )
        self.results = ResultOps(self.store, self.blobs)
        self.generated_admin_password: str | None = None
        self._stopped = False

    def start(self) -> None:
        # Processes of this user (sandboxed workers share it when the server is not root) must
        # not read this one's memory or environment through /proc.
        not_dumpable()
        self.generated_admin_password = self.accounts.ensure_admin(
            self.settings.admin_password, self.settings.admin_password_file
        )
        self._recover()
        self.executor.start()
        self.scheduler.start(self.executor)
        for batch in self.store.batches_in_states([BatchState.CANCELLING]):
            self.scheduler.post(CancelBatch(batch.id, "cancelled before it ran"))
        self.scheduler.post(Wake())

    def _recover(self) -> None:
        """Make the store true again after a crash: nothing runs before this process starts."""
        for batch in self.store.batches_being_deleted():
            # None of its workers runs any more: its removal can be finished.
            log.warning("removing batch %s, whose deletion was cut short", batch.id)
            remove_batch(self.store, self.blobs, batch.id)
        self._settle_stopping_chunks()
        requeued = self.store.requeue_running_chunks()
        if requeued:
            log.warning("requeued %d chunk(s) left running by a previous process", requeued)
        for batch in self.store.batches_in_states([BatchState.PAUSING]):
            # Nothing of it runs any more: disabling it is done.
            self.store.transition(batch.id, BatchState.PAUSED, only_from=[BatchState.PAUSING])
        for batch in self.store.batches_in_states(list(BatchState), sealed=False):
            log.warning("removing batch %s whose upload never finished", batch.id)
            remove_batch(self.store, self.blobs, batch.id)
        self._remove_orphan_files()

    def _remove_orphan_files(self) -> None:
        """Remove the files of batches that no longer exist: deleting a service removes its
        batches' rows first and their files after, so a crash in between leaves files nothing
        refers to."""
        for batch_id in self.blobs.folders(keys.BATCHES):
            if self.store.get_batch(batch_id) is None:
                log.warning("removing the files of batch %s, which no longer exists", batch_id)
                self.blobs.delete_prefix(keys.batch_prefix(batch_id))

    def _settle_stopping_chunks(self) -> None:
        """End the running chunks of batches that were being cancelled as the cancel would have:
        cancelled, with the records already in their result files keeping their results.

        Requeued instead, such a chunk would never run again, yet its result file would still
        hold the records it finished: results and counts would disagree.
        """
        for batch in self.store.batches_in_states([BatchState.CANCELLING]):
            outputs = batch.options.get("outputs", {})
            for chunk in self.store.chunks(batch.id, [ChunkState.RUNNING]):
                statuses: list[str] = []
                if chunk.result_key is not None:
                    try:
                        with open_stream_reader(self.blobs, chunk.result_key) as f:
                            statuses = read_results(f, outputs).column("status").to_pylist()
                    except BlobNotFound:
                        pass
                succeeded, failed = statuses.count("succeeded"), statuses.count("failed")
                self.store.set_chunk(
                    chunk.id,
                    expect_state=ChunkState.RUNNING,
                    state=ChunkState.CANCELLED.value,
                    finished_at=utcnow(),
                    succeeded=succeeded,
                    failed=failed,
                    cancelled=chunk.count - succeeded - failed,
                    error="cancelled",
                )
                log.warning("chunk %s of batch %s, being cancelled, settled", chunk.seq, batch.id)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.scheduler.stop()
        self.executor.shutdown()
        self.store.close()

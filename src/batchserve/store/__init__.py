"""The metadata store: users, services, batches, chunks and their states."""

from batchserve.store.migrate import upgrade
from batchserve.store.sql import (
    AlreadyExists,
    BatchCounts,
    RevisionMismatch,
    ServiceBatch,
    Store,
)

__all__ = ["AlreadyExists", "BatchCounts", "RevisionMismatch", "ServiceBatch", "Store", "upgrade"]

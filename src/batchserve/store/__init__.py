"""The metadata store: users, services, batches, chunks and their states."""

from batchserve.store.base import AlreadyExists, RevisionMismatch
from batchserve.store.migrate import upgrade
from batchserve.store.services import ServiceBatch
from batchserve.store.sql import BatchCounts, Store

__all__ = ["AlreadyExists", "BatchCounts", "RevisionMismatch", "ServiceBatch", "Store", "upgrade"]

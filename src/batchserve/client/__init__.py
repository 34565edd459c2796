"""The batchserve Python SDK: publish services, call them, and run batch executions.

The implementation lives in private modules; what is listed in ``__all__`` is the public API.
"""

from batchserve.client._async import AsyncClient, AsyncService
from batchserve.client._batch import Batch
from batchserve.client._client import Client
from batchserve.client._operations import AsyncBatch, AsyncBatchTaskOperation, BatchTaskResult
from batchserve.client._responses import BatchResponse, ServiceResponse
from batchserve.client._service import Service
from batchserve.client._taskinfo import (
    BatchTaskErrorsInfo,
    BatchTaskInfo,
    BatchTaskStatus,
    ChunkErrorInfo,
    LineErrorInfo,
    ServiceRef,
)

__all__ = [
    "AsyncBatch",
    "AsyncBatchTaskOperation",
    "AsyncClient",
    "AsyncService",
    "Batch",
    "BatchResponse",
    "BatchTaskErrorsInfo",
    "BatchTaskInfo",
    "BatchTaskResult",
    "BatchTaskStatus",
    "ChunkErrorInfo",
    "Client",
    "LineErrorInfo",
    "Service",
    "ServiceRef",
    "ServiceResponse",
]

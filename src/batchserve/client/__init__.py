"""The batchserve Python SDK: publish services, call them, and run batch executions.

The implementation lives in private modules; what is listed in ``__all__`` is the public API.
"""

from batchserve.client._async import AsyncBatchExecution, AsyncClient, AsyncService
from batchserve.client._async_responses import AsyncBatchResponse, AsyncServiceResponse
from batchserve.client._batch import Batch
from batchserve.client._batchtasks import AsyncBatch, BatchTasks
from batchserve.client._client import Client
from batchserve.client._operations import (
    AsyncBatchTaskOperation,
    AsyncBatchTaskResult,
    BatchTaskOperation,
    BatchTaskResult,
)
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
    "AsyncBatchExecution",
    "AsyncBatchResponse",
    "AsyncBatchTaskOperation",
    "AsyncBatchTaskResult",
    "AsyncClient",
    "AsyncService",
    "AsyncServiceResponse",
    "Batch",
    "BatchResponse",
    "BatchTaskErrorsInfo",
    "BatchTaskInfo",
    "BatchTaskOperation",
    "BatchTaskResult",
    "BatchTaskStatus",
    "BatchTasks",
    "ChunkErrorInfo",
    "Client",
    "LineErrorInfo",
    "Service",
    "ServiceRef",
    "ServiceResponse",
]

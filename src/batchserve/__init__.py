"""batchserve: publish Python functions and models as versioned web services, and run
asynchronous batch executions over record sets.

This package's top level is the Python SDK::

    from batchserve import Client

    client = Client("http://127.0.0.1:8000", username="admin", password="...")
    svc = client.get_service("mtService", version="v1.0.0")
    batch = svc.batch(records, parallel_count=10).start()
    print(batch.wait().to_pandas())

Importing it loads only the SDK; the server's modules are imported by the server alone.
"""

from batchserve import errors
from batchserve._version import __version__
from batchserve.client import (
    AsyncBatch,
    AsyncBatchExecution,
    AsyncBatchResponse,
    AsyncBatchTaskOperation,
    AsyncBatchTaskResult,
    AsyncClient,
    AsyncService,
    AsyncServiceResponse,
    Batch,
    BatchResponse,
    BatchTaskErrorsInfo,
    BatchTaskInfo,
    BatchTaskOperation,
    BatchTaskResult,
    BatchTasks,
    BatchTaskStatus,
    ChunkErrorInfo,
    Client,
    LineErrorInfo,
    Service,
    ServiceRef,
    ServiceResponse,
)
from batchserve.states import BatchState

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
    "BatchState",
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
    "__version__",
    "errors",
]

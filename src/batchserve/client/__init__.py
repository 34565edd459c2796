"""The batchserve Python SDK: publish services, call them, and run batch executions.

The implementation lives in private modules; what is listed in ``__all__`` is the public API.
"""

from batchserve.client._batch import Batch
from batchserve.client._client import Client
from batchserve.client._responses import BatchResponse, ServiceResponse
from batchserve.client._service import Service

__all__ = ["Batch", "BatchResponse", "Client", "Service", "ServiceResponse"]

"""Results of an asyncio client: :class:`AsyncServiceResponse` and :class:`AsyncBatchResponse`.

They are the results of ``_responses.py`` with the methods that may need the server as coroutines
(twins of the blocking ones, see ``_twins.py``); what only reads what is already here is inherited
unchanged.
"""

from __future__ import annotations

from batchserve.client._responses import BatchResponse, ServiceResponse
from batchserve.client._twins import twin


def async_record(response: ServiceResponse) -> AsyncServiceResponse:
    """``response`` as a result of an asyncio client."""
    if isinstance(response, AsyncServiceResponse):
        return response
    return AsyncServiceResponse(response.raw, response._runner, execution_id=response.execution_id)


def async_response(response: BatchResponse) -> AsyncBatchResponse:
    """``response`` as a snapshot of an asyncio client."""
    if isinstance(response, AsyncBatchResponse):
        return response
    twin_response = AsyncBatchResponse.__new__(AsyncBatchResponse)
    twin_response.__dict__.update(vars(response))
    return twin_response


class AsyncServiceResponse(ServiceResponse):
    """The result of one record, from an asyncio client: :meth:`artifact` is a coroutine."""

    artifact = twin(ServiceResponse.artifact)  # type: ignore[assignment]


class AsyncBatchResponse(BatchResponse):
    """A snapshot of a batch's progress, from an asyncio client: reading its records is awaited
    (:meth:`execution`, :meth:`to_pandas`, :meth:`export`)."""

    execution = twin(BatchResponse.execution, async_record)  # type: ignore[assignment]
    to_pandas = twin(BatchResponse.to_pandas)  # type: ignore[assignment]
    export = twin(BatchResponse.export)  # type: ignore[assignment]

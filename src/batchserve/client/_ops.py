"""The REST calls of ``docs/rest-api.md``, each written once as a sans-IO operation.

Each function returns a generator (see ``_wire.py``) that yields the requests it needs and returns
the decoded answer: a JSON dict or list, or bytes. The objects in ``_service.py``, ``_batch.py`` and
``_responses.py`` compose these into their methods; a runner from ``_runner.py`` carries them out.
Error statuses never reach an operation: the session turns them into exceptions first.
"""

from __future__ import annotations

import json as jsonlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchserve.client._records import ARROW_STREAM, RecordsBody
from batchserve.client._wire import Op, Request, call, q

#: How many records one page of batch results holds when the SDK reads them.
RESULTS_PAGE_SIZE = 1000


def _service_path(name: str, version: str) -> str:
    return f"/v1/services/{q(name)}/{q(version)}"


# -- authentication ---------------------------------------------------------------------------


def login(username: str, password: str) -> Op[dict[str, Any]]:
    resp = yield from call(
        Request("POST", "/login", json={"username": username, "password": password}, auth=False)
    )
    return dict(resp.json())


def refresh_token(token: str) -> Op[dict[str, Any]]:
    resp = yield from call(
        Request("POST", "/login/refreshToken", json={"refreshToken": token}, auth=False)
    )
    return dict(resp.json())


def me() -> Op[dict[str, Any]]:
    resp = yield from call(Request("GET", "/v1/me"))
    return dict(resp.json())


# -- services ---------------------------------------------------------------------------------


def publish_service(metadata_json: str, bundle: bytes) -> Op[dict[str, Any]]:
    resp = yield from call(
        Request(
            "POST",
            "/v1/services",
            data={"metadata": metadata_json},
            files={"bundle": ("bundle.pkl", bundle, "application/octet-stream")},
        )
    )
    return dict(resp.json())


def get_service(name: str, version: str | None) -> Op[dict[str, Any]]:
    resp = yield from call(Request("GET", _service_path(name, version or "latest")))
    return dict(resp.json())


def list_services(name: str | None) -> Op[list[dict[str, Any]]]:
    params = {"name": name} if name is not None else None
    resp = yield from call(Request("GET", "/v1/services", params=params))
    return list(resp.json()["services"])


def delete_service(name: str, version: str, force: bool = False) -> Op[None]:
    params = {"force": "true"} if force else None
    yield from call(Request("DELETE", _service_path(name, version), params=params))


def service_publishers(name: str) -> Op[dict[str, Any]]:
    resp = yield from call(Request("GET", f"/v1/services/{q(name)}/publishers"))
    return dict(resp.json())


def grant_publisher(name: str, username: str) -> Op[dict[str, Any]]:
    resp = yield from call(Request("PUT", f"/v1/services/{q(name)}/publishers/{q(username)}"))
    return dict(resp.json())


def revoke_publisher(name: str, username: str) -> Op[dict[str, Any]]:
    resp = yield from call(Request("DELETE", f"/v1/services/{q(name)}/publishers/{q(username)}"))
    return dict(resp.json())


def consume(name: str, version: str, inputs: dict[str, Any]) -> Op[dict[str, Any]]:
    resp = yield from call(
        Request("POST", f"{_service_path(name, version)}/consume", json={"inputs": inputs})
    )
    return dict(resp.json())


# -- batches ----------------------------------------------------------------------------------


def create_batch(
    name: str,
    version: str,
    body: RecordsBody,
    *,
    parallel_count: int,
    chunk_size: int | None,
    options: dict[str, Any] | None = None,
    start: bool = True,
) -> Op[dict[str, Any]]:
    params: dict[str, Any] = {
        "parallel_count": parallel_count,
        "start": "true" if start else "false",
    }
    if chunk_size is not None:
        params["chunk_size"] = chunk_size
    if body.record_count is not None:
        params["record_count"] = body.record_count
    for key, value in (options or {}).items():
        # The body is the records, so options travel as parameters (mappings as JSON text).
        params[key] = jsonlib.dumps(value) if isinstance(value, dict) else value
    resp = yield from call(
        Request(
            "POST",
            f"{_service_path(name, version)}/batches",
            params=params,
            content=body.pieces,
            headers={"Content-Type": body.content_type},
        )
    )
    return dict(resp.json())


#: How many batches one page of a batch listing holds unless asked otherwise (the server's most).
BATCHES_PAGE_SIZE = 100


def list_batches(
    filters: dict[str, Any], cursor: str | None, page_size: int = BATCHES_PAGE_SIZE
) -> Op[dict[str, Any]]:
    """One page of every service's batches: ``{"batches": [...], "next_cursor": ...}``.

    ``filters`` are the listing's query parameters (see :func:`listing_filters`).
    """
    params = {**filters, "limit": page_size, **({"cursor": cursor} if cursor else {})}
    resp = yield from call(Request("GET", "/v1/batches", params=params))
    return dict(resp.json())


def list_service_batches(
    name: str,
    version: str,
    filters: dict[str, Any] | None = None,
    cursor: str | None = None,
    page_size: int = BATCHES_PAGE_SIZE,
) -> Op[dict[str, Any]]:
    """One page of a service version's batches: ``{"batches": [...], "next_cursor": ...}``."""
    params = {**(filters or {}), "limit": page_size, **({"cursor": cursor} if cursor else {})}
    resp = yield from call(Request("GET", f"{_service_path(name, version)}/batches", params=params))
    return dict(resp.json())


def get_batch(execution_id: str, wait: float = 0.0) -> Op[dict[str, Any]]:
    """The batch; with ``wait`` the server answers once it is finished or ``wait`` s passed."""
    params = {"wait": round(wait, 3)} if wait > 0 else None
    resp = yield from call(Request("GET", f"/v1/batches/{q(execution_id)}", params=params))
    return dict(resp.json())


def add_records(execution_id: str, body: RecordsBody) -> Op[dict[str, Any]]:
    """Add records to an open batch: ``{"first_index", "count", "batch"}``."""
    resp = yield from call(
        Request(
            "POST",
            f"/v1/batches/{q(execution_id)}/records",
            content=body.pieces,
            headers={"Content-Type": body.content_type},
        )
    )
    return dict(resp.json())


def close_batch(execution_id: str, if_match: str | None = None) -> Op[dict[str, Any]]:
    resp = yield from call(
        Request("POST", f"/v1/batches/{q(execution_id)}/close", headers=_conditional(if_match))
    )
    return dict(resp.json())


def attach_job_task(execution_id: str, kind: str, code: bytes, name: str) -> Op[dict[str, Any]]:
    resp = yield from call(
        Request(
            "PUT",
            f"/v1/batches/{q(execution_id)}/{kind}",
            params={"name": name},
            content=code,
            headers={"Content-Type": "application/octet-stream"},
        )
    )
    return dict(resp.json())


def start_batch(execution_id: str) -> Op[dict[str, Any]]:
    resp = yield from call(Request("POST", f"/v1/batches/{q(execution_id)}/start"))
    return dict(resp.json())


def _conditional(if_match: str | None) -> dict[str, str]:
    """The headers that make a change conditional on the batch's etag."""
    return {"If-Match": if_match} if if_match else {}


def cancel_batch(execution_id: str, if_match: str | None = None) -> Op[dict[str, Any]]:
    resp = yield from call(
        Request("POST", f"/v1/batches/{q(execution_id)}/cancel", headers=_conditional(if_match))
    )
    return dict(resp.json())


def update_batch(
    execution_id: str, changes: dict[str, Any], if_match: str | None
) -> Op[dict[str, Any]]:
    resp = yield from call(
        Request(
            "PATCH",
            f"/v1/batches/{q(execution_id)}",
            json=changes,
            headers=_conditional(if_match),
        )
    )
    return dict(resp.json())


def terminate_batch(
    execution_id: str, reason: str | None, if_match: str | None = None
) -> Op[dict[str, Any]]:
    resp = yield from call(
        Request(
            "POST",
            f"/v1/batches/{q(execution_id)}/terminate",
            json={"reason": reason},
            headers=_conditional(if_match),
        )
    )
    return dict(resp.json())


def disable_batch(
    execution_id: str, disable_tasks: str, if_match: str | None = None
) -> Op[dict[str, Any]]:
    resp = yield from call(
        Request(
            "POST",
            f"/v1/batches/{q(execution_id)}/disable",
            json={"disable_tasks": disable_tasks},
            headers=_conditional(if_match),
        )
    )
    return dict(resp.json())


def enable_batch(execution_id: str, if_match: str | None = None) -> Op[dict[str, Any]]:
    resp = yield from call(
        Request("POST", f"/v1/batches/{q(execution_id)}/enable", headers=_conditional(if_match))
    )
    return dict(resp.json())


def delete_batch(execution_id: str, if_match: str | None = None) -> Op[None]:
    yield from call(
        Request("DELETE", f"/v1/batches/{q(execution_id)}", headers=_conditional(if_match))
    )


def results_page(
    execution_id: str, start: int, limit: int = RESULTS_PAGE_SIZE
) -> Op[dict[str, Any]]:
    resp = yield from call(
        Request(
            "GET", f"/v1/batches/{q(execution_id)}/results", params={"start": start, "limit": limit}
        )
    )
    return dict(resp.json())


def records_page(
    execution_id: str, start: int, limit: int = RESULTS_PAGE_SIZE
) -> Op[dict[str, Any]]:
    """A page of a batch's input records (``InputPage``)."""
    resp = yield from call(
        Request(
            "GET", f"/v1/batches/{q(execution_id)}/records", params={"start": start, "limit": limit}
        )
    )
    return dict(resp.json())


def results_arrow(execution_id: str) -> Op[bytes]:
    resp = yield from call(
        Request(
            "GET",
            f"/v1/batches/{q(execution_id)}/results",
            params={"format": "arrow"},
            headers={"Accept": ARROW_STREAM},
        )
    )
    return resp.content


def stream_results(
    execution_id: str,
    format: str,
    sink: Callable[[bytes], object],
    columns: list[str] | None = None,
) -> Op[None]:
    """Stream every finished result, in ``format`` (``csv``, ``tsv``, ``jsonl``, ``parquet``,
    ``arrow``), to ``sink`` a piece at a time, with only ``columns`` if given."""
    params = {"format": format}
    if columns is not None:
        params["columns"] = ",".join(columns)
    path = f"/v1/batches/{q(execution_id)}/results"
    yield from call(Request("GET", path, params=params, sink=sink))


def download_results(
    execution_id: str, format: str, target: Path, columns: list[str] | None = None
) -> Op[Path]:
    """Stream every finished result, in ``format``, into ``target``, with only ``columns`` if
    given; a failed download leaves no file behind."""
    partial = target.with_name(target.name + ".part")
    with open(partial, "wb") as out:
        try:
            yield from stream_results(execution_id, format, out.write, columns)
        except BaseException:
            out.close()
            partial.unlink(missing_ok=True)
            raise
    os.replace(partial, target)
    return target


def list_artifacts(execution_id: str, index: int) -> Op[list[str]]:
    resp = yield from call(
        Request("GET", f"/v1/batches/{q(execution_id)}/results/{index}/artifacts")
    )
    return [str(name) for name in resp.json()["artifacts"]]


def _artifact_path(execution_id: str, index: int, name: str) -> str:
    return f"/v1/batches/{q(execution_id)}/results/{index}/artifacts/{q(name)}"


def artifact(execution_id: str, index: int, name: str) -> Op[bytes]:
    resp = yield from call(Request("GET", _artifact_path(execution_id, index, name)))
    return resp.content


def download_artifact(execution_id: str, index: int, name: str, target: Path) -> Op[Path]:
    """Stream an artifact into ``target``; a failed download leaves no file behind."""
    partial = target.with_name(target.name + ".part")
    with open(partial, "wb") as out:
        try:
            path = _artifact_path(execution_id, index, name)
            yield from call(Request("GET", path, sink=out.write))
        except BaseException:
            out.close()
            partial.unlink(missing_ok=True)
            raise
    os.replace(partial, target)
    return target

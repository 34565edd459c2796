"""Batches: the listing, one batch's page, its results, artifacts and exports, and its actions.

Each page is one or two engine reads, whatever the size of what it shows: a page of the listing
(:meth:`~batchserve.engine.batches.BatchOps.list_page`) with its batches' counts in one
statement, a page of results by index range, and failed records found chunk by chunk from the
chunks that hold them. Nothing reads every batch or every record, but for one thing: a results
table sorted by a column reads that column of every record, up to a million records; a larger
batch sorts the page shown (by index range), as its pages follow record order.

An action (cancel, pause, resume, terminate, delete, new settings) is asked for on a page of its
own that says what it will do, and done by that page's form: the form carries the batch's etag,
so a batch that changed meanwhile is not changed on the strength of what it was (412).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlencode

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from batchserve.engine.auth import Principal
from batchserve.engine.core import Engine
from batchserve.engine.errors import BadRequest
from batchserve.engine.ingest import CSV, JSONL, PARQUET
from batchserve.engine.results import row_to_json
from batchserve.schema import MAX_RECORD_INDEX
from batchserve.server.schemas import BatchPublic
from batchserve.server.ui import forms
from batchserve.server.ui.pages import PREFIX, SECURITY_HEADERS, DashboardRoute, render
from batchserve.server.ui.progress import is_live, progress_of
from batchserve.server.ui.sessions import Session, session_of

router = APIRouter(prefix=PREFIX, route_class=DashboardRoute, include_in_schema=False)

#: The states offered by the listing's filter, in the order a batch goes through them.
STATES = [
    "created",
    "pending",
    "running",
    "pausing",
    "paused",
    "enabling",
    "cancelling",
    "cancelled",
    "completed",
    "failed",
]
EXPORTS = {"csv": "CSV", "jsonl": "JSON Lines", "parquet": "Parquet"}
EXPORT_TYPES = {"csv": CSV, "jsonl": JSONL, "parquet": PARQUET}
RESULTS_PER_PAGE = 50
FAILURES_PER_PAGE = 20
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


@dataclass(frozen=True)
class Action:
    """Something a user may do to a batch, from the states that allow it."""

    name: str
    label: str
    explain: str
    states: frozenset[str]
    danger: bool = False


_UNFINISHED = frozenset(
    {"created", "pending", "running", "pausing", "paused", "enabling", "cancelling"}
)
ACTIONS = {
    a.name: a
    for a in (
        Action(
            "start",
            "Start",
            "The batch starts: its records are queued for the workers.",
            frozenset({"created"}),
        ),
        Action(
            "disable",
            "Pause",
            "No new chunk of the batch starts; its running chunks are handled as chosen below. "
            "It can be resumed.",
            frozenset({"pending", "running"}),
        ),
        Action(
            "enable",
            "Resume",
            "The paused batch runs again: its waiting records are queued for the workers.",
            frozenset({"paused"}),
        ),
        Action(
            "cancel",
            "Cancel",
            "The batch stops: no more records run, and the results it has are kept.",
            _UNFINISHED - {"cancelling"},
            danger=True,
        ),
        Action(
            "terminate",
            "Terminate",
            "The batch stops with the reason given below: no more records run, and the results "
            "it has are kept.",
            _UNFINISHED - {"cancelling"},
            danger=True,
        ),
        Action(
            "update",
            "Change settings",
            "The batch's priority and parallel count change to the values below.",
            _UNFINISHED - {"cancelling"},
        ),
        Action(
            "delete",
            "Delete",
            "The batch is stopped if it runs, and its records, results and files are deleted. "
            "This cannot be undone.",
            frozenset(STATES),
            danger=True,
        ),
    )
}
DONE = {
    "start": "The batch was started.",
    "disable": "The batch is being paused.",
    "enable": "The batch is being resumed.",
    "cancel": "The batch is being cancelled; its finished results are kept.",
    "terminate": "The batch is being terminated; its finished results are kept.",
    "update": "The batch's settings were changed.",
}


def allowed_actions(state: str) -> list[Action]:
    return [a for a in ACTIONS.values() if state in a.states]


async def _run(function: Callable[..., Any], *args: Any) -> Any:
    """Engine work off the event loop (store and blob reads may wait on a network)."""
    return await anyio.to_thread.run_sync(partial(function, *args))


# --- the listing -----------------------------------------------------------------------------


def _filters(request: Request) -> dict[str, str]:
    """The listing's filters as given (for its form and its next-page link)."""
    names = ("state", "service", "owner", "metadata")
    return {n: request.query_params.get(n, "").strip() for n in names}


@router.get("/batches")
async def batch_list(
    request: Request,
    cursor: str | None = Query(None, max_length=500),
    limit: int = Query(25, ge=1, le=200),
) -> Response:
    session = await session_of(request)
    engine: Engine = request.app.state.engine
    wanted = _filters(request)
    rows, next_cursor = await _run(_listing, engine, session.who, wanted, cursor, limit)
    next_link = None
    if next_cursor:
        query = {k: v for k, v in wanted.items() if v}
        next_link = f"{PREFIX}/batches?" + urlencode(
            {**query, "limit": limit, "cursor": next_cursor}
        )
    return render(
        request,
        "batches.html",
        deleted=request.query_params.get("done") == "delete",
        rows=rows,
        filters=wanted,
        states=STATES,
        next_link=next_link,
        first_link=(
            f"{PREFIX}/batches?" + urlencode({k: v for k, v in wanted.items() if v})
            if cursor
            else None
        ),
        live_ids=[r["progress"].id for r in rows if is_live(r["progress"].state)],
    )


def _listing(
    engine: Engine, who: Principal, wanted: dict[str, str], cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    services = None
    if wanted["service"]:
        name, _, version = wanted["service"].partition("/")
        services = (
            [engine.services.get(name, version)] if version else engine.services.list_services(name)
        )
    page = engine.batches.list_page(
        who,
        services=services,
        states=[wanted["state"]] if wanted["state"] else None,
        metadata=_metadata(wanted["metadata"]),
        owner=wanted["owner"] or None,
        limit=limit,
        cursor=cursor,
    )
    # The page's counts and owners in one read, not one per batch.
    found = {
        b.id: (b, c, u) for b, c, u in engine.batches.statuses(who, [b.id for b in page.batches])
    }
    rows = []
    for listed in page.batches:
        if listed.id not in found:  # deleted since the page was read
            continue
        batch, counts, owner = found[listed.id]
        service = batch.options.get("service", {})
        rows.append(
            {
                "batch": batch,
                "service": f"{service.get('name', '')} {service.get('version', '')}",
                "owner": owner,
                "progress": progress_of(batch, counts),
            }
        )
    return rows, page.next_cursor


def _metadata(text: str) -> dict[str, str] | None:
    """The listing's metadata filter: ``key:value`` pairs separated by commas."""
    wanted: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        key, colon, value = pair.partition(":")
        if not colon or not key.strip():
            raise BadRequest(
                f"The metadata filter {pair!r} is not key:value; write it like team:risk, and "
                "separate pairs with commas."
            )
        wanted[key.strip()] = value.strip()
    return wanted or None


# --- one batch -------------------------------------------------------------------------------


def _sorted(rows: list[dict[str, Any]], column: str, desc: bool) -> list[dict[str, Any]]:
    """A page of results sorted by ``column``; records without a value (failed records have no
    outputs) come last either way."""

    def value(row: dict[str, Any]) -> Any:
        if column.startswith("output:"):
            return (row.get("outputs") or {}).get(column.removeprefix("output:"))
        return row.get(column)

    def key(row: dict[str, Any]) -> tuple[int, float, str]:
        found = value(row)
        # Numbers by value, the rest by their text: a column may mix them.
        if isinstance(found, (int, float)) and not isinstance(found, bool):
            return (0, found if math.isfinite(found) else math.inf, "")
        return (1, 0.0, str(found))

    present = [r for r in rows if value(r) is not None]
    missing = [r for r in rows if value(r) is None]
    return sorted(present, key=key, reverse=desc) + missing


@router.get("/batches/{batch_id}")
async def batch_page(
    request: Request,
    batch_id: str = Path(max_length=100),
    start: int = Query(0, ge=0, le=MAX_RECORD_INDEX),
    limit: int = Query(RESULTS_PER_PAGE, ge=1, le=500),
    sort: str = Query("index", max_length=300),
    desc: bool = Query(False),
    failed_after: int = Query(0, ge=0, le=MAX_RECORD_INDEX),
    done: str | None = Query(None, max_length=20),
) -> Response:
    session = await session_of(request)
    engine: Engine = request.app.state.engine

    def read() -> dict[str, Any]:
        batch, counts, created_by = engine.batches.status(session.who, batch_id)
        info = BatchPublic.of(batch, counts, created_by)
        outputs = list(batch.options.get("outputs", {}))
        columns = ["index", "status", *(f"output:{o}" for o in outputs), "duration_ms", "attempts"]
        if sort not in columns:
            raise BadRequest(
                f"The results cannot be sorted by {sort!r}; sort by one of {', '.join(columns)}."
            )
        # Sorted whole when the batch is small enough, else each page in record order is sorted.
        whole = None
        if sort != "index" or desc:
            whole = engine.results.sorted_page(batch, sort, desc, start, limit)
        if whole is not None:
            results = [row_to_json(r) for r in whole]
        else:
            results = [row_to_json(r) for r in engine.results.page(batch, start, limit)]
            results = _sorted(results, sort, desc)
        failures: list[dict[str, Any]] = []
        next_failed = None
        if counts.failed:
            found, next_failed = engine.results.failures(batch, failed_after, FAILURES_PER_PAGE)
            failures = [row_to_json(r) for r in found]
        return {
            "batch": batch,
            "info": info,
            "progress": progress_of(batch, counts),
            "outputs": outputs,
            "columns": columns,
            "results": results,
            "sorted_whole": (sort == "index" and not desc) or whole is not None,
            "failures": failures,
            "next_failed": next_failed,
        }

    page = await _run(read)
    batch = page["batch"]
    total = batch.total_count
    nav = {"limit": limit, "sort": sort, "desc": int(desc)}
    here = f"{PREFIX}/batches/{batch.id}"
    return render(
        request,
        "batch.html",
        **page,
        start=start,
        limit=limit,
        sort=sort,
        desc=desc,
        failed_after=failed_after,
        done=DONE.get(done or ""),
        actions=allowed_actions(batch.state),
        exports=EXPORTS,
        image_types=tuple(IMAGE_TYPES),
        live=is_live(batch.state),
        here=here,
        previous_link=(
            f"{here}?" + urlencode({**nav, "start": max(0, start - limit)}) if start > 0 else None
        ),
        next_link=(
            f"{here}?" + urlencode({**nav, "start": start + limit})
            if start + limit < total
            else None
        ),
        sort_link=lambda column: (
            f"{here}?"
            + urlencode(
                {
                    "start": start,
                    "limit": limit,
                    "sort": column,
                    "desc": int(column == sort and not desc),
                }
            )
        ),
        failed_link=(
            f"{here}?" + urlencode({**nav, "start": start, "failed_after": page["next_failed"]})
            if page["next_failed"] is not None and page["failures"]
            else None
        ),
        max_user_priority=engine.batches.max_user_priority,
    )


@router.get("/batches/{batch_id}/records/{index}/artifacts/{name}")
async def artifact(
    request: Request,
    batch_id: str = Path(max_length=100),
    index: int = Path(ge=0, le=MAX_RECORD_INDEX),
    name: str = Path(max_length=1024),
) -> Response:
    session = await session_of(request)
    engine: Engine = request.app.state.engine

    def read() -> bytes:
        batch = engine.batches.get(session.who, batch_id)
        data: bytes = engine.results.artifact(batch, index, name)
        return data

    data = await _run(read)
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    media_type = IMAGE_TYPES.get(suffix)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    headers = {
        "Cache-Control": "private, no-store",
        # Shown by the browser only as an image, never run: the file is the service's output.
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if media_type is None:
        media_type = "application/octet-stream"
        headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    else:
        headers["Content-Disposition"] = f'inline; filename="{safe}"'
    return Response(data, media_type=media_type, headers=headers)


@router.get("/batches/{batch_id}/export")
async def export(
    request: Request,
    batch_id: str = Path(max_length=100),
    format: str = Query(..., pattern="^(csv|jsonl|parquet)$"),
) -> Response:
    session = await session_of(request)
    engine: Engine = request.app.state.engine

    def prepare() -> tuple[str, Any]:
        batch = engine.batches.get(session.who, batch_id)
        return batch.id, engine.results.stream(batch, format)

    found_id, pieces = await _run(prepare)
    return StreamingResponse(
        pieces,
        media_type=EXPORT_TYPES[format],
        headers={
            "Content-Disposition": f'attachment; filename="{found_id}-results.{format}"',
            "Cache-Control": "private, no-store",
        },
    )


# --- actions ---------------------------------------------------------------------------------


def _action(name: str, state: str) -> Action:
    action = ACTIONS.get(name)
    if action is None:
        raise BadRequest(
            f"There is no batch action {name!r}; the actions are {', '.join(ACTIONS)}."
        )
    if state not in action.states:
        raise BadRequest(
            f"The batch is {state}: it cannot be asked to {action.label.lower()} now. It can be "
            f"asked to {', '.join(a.label.lower() for a in allowed_actions(state)) or 'nothing'}."
        )
    return action


@router.get("/batches/{batch_id}/confirm/{action}")
async def confirm(
    request: Request,
    batch_id: str = Path(max_length=100),
    action: str = Path(max_length=20),
    priority: int | None = Query(None, ge=-1000, le=1000),
    parallel_count: int | None = Query(None, ge=-1, le=10_000),
) -> Response:
    session = await session_of(request)
    engine: Engine = request.app.state.engine
    batch = await _run(engine.batches.get, session.who, batch_id)
    chosen = _action(action, batch.state)
    if chosen.name == "update" and priority is None and parallel_count is None:
        raise BadRequest("Give a new priority or a new parallel count to change.")
    return render(
        request,
        "confirm.html",
        batch=batch,
        action=chosen,
        priority=priority,
        parallel_count=parallel_count,
        etag=str(batch.revision),
    )


@router.post("/batches/{batch_id}/{action}")
async def act(request: Request, batch_id: str, action: str) -> Response:
    form = await forms.read_form(request)
    session = await session_of(request, form)
    engine: Engine = request.app.state.engine
    etag = forms.text(form, "etag") or None
    done = await _run(_perform, engine, session, batch_id, action, form, etag)
    if done == "delete":
        return RedirectResponse(
            f"{PREFIX}/batches?done=delete", status_code=303, headers=SECURITY_HEADERS
        )
    return RedirectResponse(
        f"{PREFIX}/batches/{batch_id}?done={done}", status_code=303, headers=SECURITY_HEADERS
    )


def _perform(
    engine: Engine, session: Session, batch_id: str, name: str, form: Any, etag: str | None
) -> str:
    """Do a confirmed action with the engine operation the API's route calls."""
    who, ops = session.who, engine.batches
    batch = ops.get(who, batch_id)
    # An action its state no longer allows says so plainly (the engine would answer 409).
    if etag is None or etag == str(batch.revision):
        _action(name, batch.state)
    if_match = f'"{etag}"' if etag else None
    if name == "start":
        ops.start(who, batch_id)
    elif name == "disable":
        ops.disable(who, batch_id, forms.text(form, "mode", "requeue"), if_match=if_match)
    elif name == "enable":
        ops.enable(who, batch_id, if_match=if_match)
    elif name == "cancel":
        ops.cancel(who, batch_id, if_match=if_match)
    elif name == "terminate":
        reason = forms.text(form, "reason") or "UserTerminate"
        ops.cancel(who, batch_id, reason=reason, if_match=if_match)
    elif name == "update":
        priority = forms.whole_number(form, "priority", "The priority")
        parallel = forms.whole_number(form, "parallel_count", "The parallel count")
        ops.update(who, batch_id, if_match=if_match, priority=priority, parallel_count=parallel)
    elif name == "delete":
        ops.delete(who, batch_id, if_match=if_match)
    else:
        _action(name, batch.state)  # raises: no such action
    return name

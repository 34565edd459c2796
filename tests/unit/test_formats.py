"""Results out: every result format streamed chunk by chunk in index order, with the record ids
joined from the upload parts; and the SDK's streamed exports and paged results."""

from __future__ import annotations

import io
import json
import math

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from batchserve import Client
from batchserve.blobs import LocalBlobStore, keys
from batchserve.engine.batch_results import RESULT_FORMATS, ResultOps, json_lines
from batchserve.engine.batches import BatchOps
from batchserve.engine.errors import BadRequest, UnsupportedMediaType
from batchserve.engine.ingest import JSONL
from batchserve.engine.inputs import PartRef, read_range
from batchserve.engine.results import ResultWriter, flatten, read_results, row_to_json
from batchserve.engine.scheduler import Scheduler, result_key
from batchserve.errors import UsageError

OUTPUTS = {"sq": "int"}


@pytest.fixture
def ops(store, tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs")
    return BatchOps(store, blobs, Scheduler(store, blobs))


@pytest.fixture
def service(squares):
    return squares


def jsonl(rows) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


def run_chunks(ops, batch, how_many=None):
    """Play a worker: claim chunks and write a result for each of their records."""
    done = 0
    while how_many is None or done < how_many:
        chunk = ops.store.claim_chunk(batch.id, result_key, lambda remaining, sealed: 4)
        if chunk is None:
            break
        parts = [PartRef(p.key, p.start_index, p.count) for p in ops.store.parts(batch.id)]
        inputs, _ = read_range(ops.blobs, parts, chunk.start_index, chunk.count)
        writer = ResultWriter(ops.blobs.open_write(chunk.result_key), OUTPUTS)
        # Written in reverse order: the results must still come out in index order.
        for offset in reversed(range(chunk.count)):
            n = inputs.column("n")[offset].as_py()
            index = chunk.start_index + offset
            if n % 5 == 0:
                writer.add({"index": index, "status": "failed", "error": "five", "attempts": 1})
            else:
                writer.add(
                    {"index": index, "status": "succeeded", "outputs": {"sq": n * n}, "attempts": 1}
                )
        writer.close()
        done += 1


def make_batch(ops, who, service, rows, **kwargs):
    batch = ops.create(who, service, jsonl(rows), JSONL, start=False, **kwargs)
    run_chunks(ops, batch)
    return ops.get(who, batch.id)


ROWS = [{"n": n, "customer": f"c{n:02d}"} for n in range(1, 11)]


def read_stream(ops, batch, format) -> pd.DataFrame:
    data = b"".join(ResultOps(ops.store, ops.blobs).stream(batch, format))
    if format == "arrow":
        return pa.ipc.open_stream(data).read_all().to_pandas()
    if format == "parquet":
        return pq.read_table(io.BytesIO(data)).to_pandas()
    if format in ("csv", "tsv"):
        return pd.read_csv(io.BytesIO(data), sep="\t" if format == "tsv" else ",")
    return pd.read_json(io.BytesIO(data), lines=True)


@pytest.mark.parametrize("format", RESULT_FORMATS)
def test_each_format_streams_every_result_in_index_order_with_its_id(ops, who, service, format):
    batch = make_batch(ops, who, service, ROWS, id_column="customer")
    frame = read_stream(ops, batch, format)
    assert list(frame.columns) == [
        "index",
        "id",
        "status",
        "sq",
        "error",
        "error_type",
        "console_output",
        "duration_ms",
        "attempts",
    ]
    assert frame["index"].tolist() == list(range(10))
    assert frame["id"].tolist() == [f"c{n:02d}" for n in range(1, 11)]
    statuses = ["failed" if n % 5 == 0 else "succeeded" for n in range(1, 11)]
    assert frame["status"].tolist() == statuses
    sq = [None if pd.isna(v) else int(v) for v in frame["sq"]]
    assert sq == [None if n % 5 == 0 else n * n for n in range(1, 11)]


def test_a_stream_yields_one_piece_per_chunk_after_its_header(ops, who, service):
    batch = make_batch(ops, who, service, ROWS)  # chunks of 4: 4, 4 and 2 records
    pieces = [p for p in ResultOps(ops.store, ops.blobs).stream(batch, "jsonl")]
    assert [p.count(b"\n") for p in pieces if p] == [4, 4, 2]


def test_partial_results_hold_only_the_finished_chunks(ops, who, service):
    batch = ops.create(who, service, jsonl(ROWS), JSONL, start=False, id_column="customer")
    run_chunks(ops, batch, how_many=1)
    frame = read_stream(ops, ops.get(who, batch.id), "arrow")
    assert frame["index"].tolist() == [0, 1, 2, 3]
    assert frame["id"].tolist() == ["c01", "c02", "c03", "c04"]
    empty = ops.create(who, service, jsonl(ROWS), JSONL, start=False, id_column="customer")
    table = pa.ipc.open_stream(
        b"".join(ResultOps(ops.store, ops.blobs).stream(empty, "arrow"))
    ).read_all()
    assert table.num_rows == 0
    assert table.schema.field("id").type == pa.string()


def test_json_pages_and_single_results_carry_the_id(ops, who, service):
    ids = [{"n": n, "customer": 100 + n} for n in range(1, 11)]
    batch = make_batch(ops, who, service, ids, id_column="customer")
    page = ResultOps(ops.store, ops.blobs).page(batch, 3, 4)
    assert [r["id"] for r in page] == [104, 105, 106, 107]
    record = row_to_json(ResultOps(ops.store, ops.blobs).record(batch, 8))
    assert record["id"] == 109 and record["outputs"] == {"sq": 81}


def test_without_an_id_column_there_is_no_id(ops, who, service):
    batch = make_batch(ops, who, service, ROWS)
    assert "id" not in read_stream(ops, batch, "arrow").columns
    assert "id" not in row_to_json(ResultOps(ops.store, ops.blobs).record(batch, 0))


def test_the_id_option_is_kept_with_the_batch(ops, who, service):
    batch = make_batch(ops, who, service, ROWS, id_column="customer")
    assert batch.options["id_column"] == "customer"
    assert "id_type" in batch.options


def test_an_unknown_content_type_is_refused_as_unsupported_and_nothing_is_kept(
    ops, who, service, store
):
    with pytest.raises(UnsupportedMediaType, match="application/json"):
        ops.create(who, service, io.BytesIO(b"{}"), "application/json")
    assert store.list_batches(limit=10) == []


def test_a_missing_id_column_is_refused_and_nothing_is_kept(ops, who, service, store):
    with pytest.raises(BadRequest, match="no column 'customer_id'"):
        ops.create(who, service, jsonl(ROWS), JSONL, id_column="customer_id")
    assert store.list_batches(limit=10) == []
    assert ops.blobs.list("batches") == []


def test_an_unknown_results_format_is_refused(ops, who, service):
    batch = make_batch(ops, who, service, ROWS)
    with pytest.raises(BadRequest, match="jsonl"):
        list(ResultOps(ops.store, ops.blobs).stream(batch, "xml"))


def test_an_output_named_id_is_renamed_when_the_results_carry_ids():
    table = read_results(b"", {"id": "int", "sq": "int"})
    assert flatten(table).column_names[:3] == ["index", "status", "id"]
    with_ids = table.add_column(1, "id", pa.array([], pa.string()))
    assert flatten(with_ids).column_names[:4] == ["index", "id", "status", "output_id"]


def test_json_lines_turn_nan_into_null_and_dates_into_text():
    table = pa.table(
        {
            "x": [math.nan, math.inf, 0.1 + 0.2, None],
            "name": ["Zoë", "a\nb", None, ""],
            "when": pa.array([0, 1, None, 2], pa.timestamp("s")),
        }
    )
    data = json_lines(table)
    rows = [json.loads(line) for line in data.decode().splitlines()]
    assert [r["x"] for r in rows] == [None, None, 0.1 + 0.2, None]
    assert [r["name"] for r in rows] == ["Zoë", "a\nb", None, ""]
    assert rows[1]["when"] == "1970-01-01 00:00:01"
    assert data.count(b"\n") == 4


# -- the SDK ------------------------------------------------------------------------------------


SERVICE = {"name": "squares", "version": "v1", "inputs": {"n": "int"}, "outputs": OUTPUTS}
BATCH = {
    "id": "b1",
    "service": {"name": "squares", "version": "v1"},
    "state": "completed",
    "total_item_count": 5,
    "completed_item_count": 5,
}


def arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    return sink.getvalue().to_pybytes()


RESULTS = pa.table({"index": [0, 1, 2], "id": ["a", "b", "c"], "status": ["succeeded"] * 3})


@pytest.fixture
def sdk():
    asked = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        path = request.url.path
        if path.endswith("/latest") or path == "/v1/services/squares/v1":
            return httpx.Response(200, json=SERVICE)
        if path == "/v1/batches/b1":
            return httpx.Response(200, json=BATCH)
        if path == "/v1/batches/b1/results":
            fmt = request.url.params.get("format", "json")
            if fmt == "arrow":
                return httpx.Response(200, content=arrow_bytes(RESULTS))
            if fmt == "jsonl":
                return httpx.Response(200, content=b'{"index": 0, "id": "a"}\n')
            start = int(request.url.params["start"])
            limit = int(request.url.params["limit"])
            stop = min(start + limit, 5)
            results = [
                {"index": i, "id": f"r{i}", "status": "succeeded", "outputs": {"sq": i * i}}
                for i in range(start, stop)
            ]
            nxt = stop if stop < 5 else None
            return httpx.Response(
                200, json={"start": start, "limit": limit, "next_start": nxt, "results": results}
            )
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})

    client = Client("http://batchserve.test", token="t", transport=httpx.MockTransport(answer))
    batch = client.get_service("squares", version="v1").get_batch("b1")
    batch.asked = asked
    return batch


def test_a_csv_export_is_written_here_from_the_servers_arrow_stream(sdk, tmp_path):
    path = tmp_path / "out.csv"
    assert sdk.export_results(path) == str(path)
    expected = io.BytesIO()
    pacsv.write_csv(RESULTS, expected)
    assert path.read_bytes() == expected.getvalue()
    assert sdk.asked[-1].url.params["format"] == "arrow"
    assert list(tmp_path.iterdir()) == [path]


def test_a_tsv_export_is_tab_separated(sdk, tmp_path):
    path = tmp_path / "out.tsv"
    sdk.export_results(path)
    expected = io.BytesIO()
    pacsv.write_csv(RESULTS, expected, write_options=pacsv.WriteOptions(delimiter="\t"))
    assert path.read_bytes() == expected.getvalue()


def test_an_export_asks_the_server_for_the_columns_wanted(sdk, tmp_path):
    sdk.export_results(tmp_path / "out.jsonl", columns=["index", "sq"])
    asked = sdk.asked[-1].url.params
    assert (asked["format"], asked["columns"]) == ("jsonl", "index,sq")
    with pytest.raises(UsageError, match="list of result column names"):
        sdk.export_results(tmp_path / "out.csv", columns="index")


def test_a_download_cut_short_leaves_no_file_behind(sdk, tmp_path):
    path = tmp_path / "out.csv"
    sdk.asked.clear()
    broken = arrow_bytes(RESULTS)[:-40]  # the stream ends in the middle of a message

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=broken)

    sdk._runner.http._transport = httpx.MockTransport(answer)
    with pytest.raises(Exception):  # noqa: B017 - pyarrow's error for a truncated stream
        sdk.export_results(path)
    assert list(tmp_path.iterdir()) == []


def test_an_arrow_export_is_an_arrow_ipc_file(sdk, tmp_path):
    path = tmp_path / "out.arrow"
    sdk.export_results(path)
    assert pa.ipc.open_file(str(path)).read_all().equals(RESULTS)
    assert list(tmp_path.iterdir()) == [path]


def test_an_export_needs_a_known_extension_and_an_existing_folder(sdk, tmp_path):
    with pytest.raises(UsageError, match=r"\.csv, \.jsonl or \.parquet, or \.tsv, \.arrow"):
        sdk.export_results(tmp_path / "out.xlsx")
    with pytest.raises(UsageError, match="does not exist"):
        sdk.export_results(tmp_path / "missing" / "out.csv")


def test_iter_results_reads_page_by_page_as_it_goes(sdk):
    results = sdk.iter_results(page_size=2)
    first = next(results)
    assert (first.index, first.id, first.output("sq")) == (0, "r0", 0)
    pages_asked = [r for r in sdk.asked if r.url.path.endswith("/results")]
    assert len(pages_asked) == 1
    assert [r.index for r in results] == [1, 2, 3, 4]
    pages_asked = [r for r in sdk.asked if r.url.path.endswith("/results")]
    assert [r.url.params["start"] for r in pages_asked] == ["0", "2", "4"]


def test_iter_results_refuses_a_bad_page_size(sdk):
    with pytest.raises(UsageError, match="page_size"):
        sdk.iter_results(page_size=0)


def test_to_pandas_puts_the_id_after_the_index(sdk):
    frame = sdk.results().to_pandas()
    assert list(frame.columns) == ["index", "id", "status"]


def test_iter_results_is_an_async_iterator_with_an_asyncio_runner():
    import asyncio

    from batchserve.client._batch import Batch
    from batchserve.client._runner import AsyncRunner, Session
    from batchserve.client._service import service_from_info

    def answer(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params["start"])
        results = [
            {"index": i, "status": "succeeded", "outputs": {}} for i in range(start, start + 2)
        ]
        nxt = start + 2 if start + 2 < 4 else None
        return httpx.Response(200, json={"next_start": nxt, "results": results})

    async def read() -> list[int]:
        async with httpx.AsyncClient(
            base_url="http://batchserve.test", transport=httpx.MockTransport(answer)
        ) as http:
            runner = AsyncRunner(Session(token="t"), http)
            batch = Batch(service_from_info(SERVICE, runner), None, info=BATCH)
            return [r.index async for r in batch.iter_results(page_size=2)]

    assert asyncio.run(read()) == [0, 1, 2, 3]


def test_an_artifact_is_read_from_the_try_that_owns_its_chunk(ops, who, service):
    batch = ops.create(who, service, jsonl(ROWS[:4]), JSONL, start=False)
    first = ops.store.claim_chunk(batch.id, result_key, lambda remaining, sealed: 4)
    assert first is not None and first.attempts == 1
    # The first try's node loses its claim; the chunk runs again, and that try finishes it.
    assert ops.store.requeue_running_chunks() == 1
    owner = ops.store.claim_chunk(batch.id, result_key, lambda remaining, sealed: 4)
    assert owner is not None and owner.id == first.id and owner.attempts == 2
    writer = ResultWriter(ops.blobs.open_write(owner.result_key), OUTPUTS)
    for index in range(4):
        writer.add(
            {
                "index": index,
                "status": "succeeded",
                "outputs": {"sq": index},
                "artifacts": ["plot.txt"],
                "attempts": 2,
            }
        )
    writer.close()
    ops.blobs.write_bytes(keys.artifact_key(batch.id, 1, "plot.txt", 2), b"the owner's")
    # The first try, awake again, writes the same record's artifact after the owner did.
    ops.blobs.write_bytes(keys.artifact_key(batch.id, 1, "plot.txt", 1), b"stale")

    results = ResultOps(ops.store, ops.blobs)
    assert results.artifact(ops.get(who, batch.id), 1, "plot.txt") == b"the owner's"


def test_an_artifact_stored_before_artifacts_were_kept_by_try_is_still_read(ops, who, service):
    batch = make_batch(ops, who, service, ROWS[:4])
    chunk = ops.store.chunks(batch.id)[0]
    writer = ResultWriter(ops.blobs.open_write(chunk.result_key), OUTPUTS)
    writer.add({"index": 0, "status": "succeeded", "outputs": {"sq": 1}, "artifacts": ["a.txt"]})
    writer.close()
    ops.blobs.write_bytes(keys.unfenced_artifact_key(batch.id, 0, "a.txt"), b"kept")

    assert ResultOps(ops.store, ops.blobs).artifact(batch, 0, "a.txt") == b"kept"

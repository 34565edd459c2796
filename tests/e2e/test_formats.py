"""Every records format in, every results format out, and a record id column carried through,
against a real server."""

from __future__ import annotations

import io
import json

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from batchserve import errors

pytestmark = pytest.mark.e2e

N = 25
EXPECTED = [n * n if n % 7 else None for n in range(N)]


def square_but_sevens(n: int) -> int:
    if n % 7 == 0:
        raise ValueError(f"{n} is a multiple of seven")
    return n * n


def records_table() -> pa.Table:
    return pa.table(
        {
            "key": [f"k{n:03d}" for n in range(N)],
            "n": list(range(N)),
            "note": [f"note {n}" for n in range(N)],
        }
    )


@pytest.fixture
def squarer(client, unique_name):  # type: ignore[no-untyped-def]
    return client.publish_service(
        unique_name, code=square_but_sevens, inputs={"n": int}, outputs={"sq": int}, version="v1"
    )


@pytest.fixture
def rest(server, client):  # type: ignore[no-untyped-def]
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {client.token}"}, timeout=60
    ) as http:
        yield http


def write_file(tmp_path, kind: str):  # type: ignore[no-untyped-def]
    table = records_table()
    path = tmp_path / f"records.{kind}"
    if kind == "csv":
        pacsv.write_csv(table, path)
    elif kind == "tsv":
        pacsv.write_csv(table, path, pacsv.WriteOptions(delimiter="\t"))
    elif kind in ("jsonl", "ndjson"):
        path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    elif kind == "parquet":
        pq.write_table(table, path, row_group_size=10)
    elif kind in ("arrow", "feather"):
        feather.write_feather(table, path, chunksize=10)
    elif kind == "arrows":
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table, max_chunksize=10)
    return path


def check(frame: pd.DataFrame) -> None:
    """The results of the records of records_table(), with their ids."""
    assert frame["index"].tolist() == list(range(N))
    assert frame["id"].tolist() == [f"k{n:03d}" for n in range(N)]
    sq = [None if pd.isna(v) else int(v) for v in frame["sq"]]
    assert sq == EXPECTED
    statuses = ["succeeded" if n % 7 else "failed" for n in range(N)]
    assert frame["status"].tolist() == statuses
    assert "multiple of seven" in frame["error"].iloc[0]


# -- records in ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["csv", "tsv", "jsonl", "ndjson", "parquet", "arrow", "feather", "arrows"]
)
def test_a_records_file_of_each_format_gives_the_same_results(squarer, tmp_path, kind):  # type: ignore[no-untyped-def]
    path = write_file(tmp_path, kind)
    resp = squarer.batch(str(path), id_column="key", chunk_size=4).start().wait(timeout=120)
    assert resp.total_item_count == N
    check(resp.to_pandas())


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet", "arrow"])
def test_an_open_binary_file_is_streamed_with_its_format_from_its_name(squarer, tmp_path, kind):  # type: ignore[no-untyped-def]
    path = write_file(tmp_path, kind)
    with open(path, "rb") as f:
        resp = squarer.batch(f, id_column="key").start().wait(timeout=120)
    check(resp.to_pandas())


def test_a_nameless_binary_file_is_sent_in_the_format_given(squarer, tmp_path):  # type: ignore[no-untyped-def]
    data = write_file(tmp_path, "parquet").read_bytes()
    resp = squarer.batch(io.BytesIO(data), format="parquet", id_column="key").start().wait(120)
    check(resp.to_pandas())


@pytest.mark.parametrize("kind", ["dataframe", "list", "columns", "table", "iterator"])
def test_in_memory_records_of_each_kind_give_the_same_results(squarer, kind):  # type: ignore[no-untyped-def]
    table = records_table()
    records = {
        "dataframe": lambda: table.to_pandas(),
        "list": lambda: table.to_pylist(),
        "columns": lambda: table.to_pydict(),
        "table": lambda: table,
        "iterator": lambda: (row for row in table.to_pylist()),
    }[kind]()
    resp = squarer.batch(records, id_column="key", chunk_size=3).start().wait(timeout=120)
    check(resp.to_pandas())


def test_an_iterator_larger_than_a_record_batch_is_streamed_whole(squarer):  # type: ignore[no-untyped-def]
    total = 25_000  # more than two of the SDK's record batches
    records = ({"n": n % 6 + 1, "key": n} for n in range(total))
    resp = squarer.batch(records, id_column="key", chunk_size=5_000).start().wait(timeout=300)
    assert resp.total_item_count == total
    frame = resp.to_pandas()
    assert frame["id"].tolist() == list(range(total))
    assert frame["sq"].tolist() == [(n % 6 + 1) ** 2 for n in range(total)]


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("text/csv", "csv"),
        ("application/x-ndjson", "jsonl"),
        ("application/jsonl", "jsonl"),
        ("application/vnd.apache.parquet", "parquet"),
        ("application/vnd.apache.arrow.file", "arrow"),
        ("application/vnd.apache.arrow.stream", "arrows"),
    ],
)
def test_the_rest_api_takes_each_content_type(squarer, rest, tmp_path, content_type, kind):  # type: ignore[no-untyped-def]
    data = write_file(tmp_path, kind).read_bytes()
    r = rest.post(
        f"/v1/services/{squarer.name}/v1/batches",
        params={"id_column": "key", "chunk_size": 6},
        content=data,
        headers={"Content-Type": content_type},
    )
    assert r.status_code == 201, r.text
    batch = squarer.get_batch(r.json()["id"])
    check(batch.wait(timeout=120).to_pandas())


def test_without_a_chunk_size_chunks_are_cut_as_the_records_run(squarer, rest, tmp_path):  # type: ignore[no-untyped-def]
    data = write_file(tmp_path, "parquet").read_bytes()
    r = rest.post(
        f"/v1/services/{squarer.name}/v1/batches",
        params={"parallel_count": 2},
        content=data,
        headers={"Content-Type": "application/vnd.apache.parquet"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["chunk_size"] is None  # no size asked for: cut to measure
    done = squarer.get_batch(r.json()["id"]).wait(timeout=120)
    assert done.completed_item_count == done.total_item_count == 25
    info = rest.get(f"/v1/batches/{r.json()['id']}").json()
    assert 1 <= info["chunk_count"] <= 25


# -- the record id ------------------------------------------------------------------------------


def test_the_id_column_is_carried_into_json_results_and_each_record(squarer, rest):  # type: ignore[no-untyped-def]
    ids = [1000 + n for n in range(N)]
    records = {"n": list(range(N)), "customer_id": ids}
    batch = squarer.batch(records, id_column="customer_id", chunk_size=4).start()
    resp = batch.wait(timeout=120)
    assert resp.execution(3).id == 1003
    page = rest.get(f"/v1/batches/{batch.execution_id}/results", params={"limit": 10}).json()
    assert [r["id"] for r in page["results"]] == ids[:10]
    assert rest.get(f"/v1/batches/{batch.execution_id}/results/8").json()["id"] == 1008
    assert [r.id for r in batch.iter_results(page_size=6)] == ids
    arrow = rest.get(f"/v1/batches/{batch.execution_id}/results", params={"format": "arrow"})
    table = pa.ipc.open_stream(arrow.content).read_all()
    assert table.column_names[:3] == ["index", "id", "status"]
    assert table.schema.field("id").type == pa.int64()
    assert table.column("id").to_pylist() == ids


def test_an_id_column_that_is_also_an_input_keeps_its_values(squarer):  # type: ignore[no-untyped-def]
    resp = squarer.batch({"n": [3, 4, 5]}, id_column="n").start().wait(timeout=60)
    frame = resp.to_pandas()
    assert frame["id"].tolist() == [3, 4, 5]
    assert frame["sq"].tolist() == [9, 16, 25]


def test_without_an_id_column_the_results_have_no_id(squarer):  # type: ignore[no-untyped-def]
    resp = squarer.batch({"n": [3]}).start().wait(timeout=60)
    assert "id" not in resp.to_pandas().columns
    assert resp.execution(0).id is None


def test_a_missing_id_column_is_refused_and_no_batch_is_kept(squarer, rest, tmp_path):  # type: ignore[no-untyped-def]
    before = squarer.list_batch_executions()
    path = write_file(tmp_path, "jsonl")
    with pytest.raises(errors.BadRequestError) as caught:
        squarer.batch(str(path), id_column="customer").start()
    assert "'customer'" in str(caught.value) and "id_column" in str(caught.value)
    with pytest.raises(errors.InvalidRecordsError, match="no column 'customer'"):
        squarer.batch({"n": [1]}, id_column="customer")
    assert squarer.list_batch_executions() == before


# -- results out --------------------------------------------------------------------------------


@pytest.fixture
def finished(squarer):  # type: ignore[no-untyped-def]
    batch = squarer.batch(records_table(), id_column="key", chunk_size=4).start()
    batch.wait(timeout=120)
    return batch


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet", ".arrow", ".arrows"])
def test_each_export_format_reads_back_as_the_results(finished, tmp_path, suffix):  # type: ignore[no-untyped-def]
    path = tmp_path / f"results{suffix}"
    assert finished.export_results(path) == str(path)
    if suffix == ".csv":
        frame = pd.read_csv(path)
    elif suffix == ".tsv":
        frame = pd.read_csv(path, sep="\t")
    elif suffix == ".jsonl":
        frame = pd.read_json(path, lines=True)
    elif suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif suffix == ".arrow":
        frame = pa.ipc.open_file(str(path)).read_all().to_pandas()
    else:
        frame = pa.ipc.open_stream(path.read_bytes()).read_all().to_pandas()
    check(frame)
    assert list(frame.columns)[:4] == ["index", "id", "status", "sq"]
    assert not list(tmp_path.glob("*.part"))


def test_the_batch_response_exports_the_same_file(finished, tmp_path):  # type: ignore[no-untyped-def]
    path = finished.results().export(tmp_path / "out.parquet")
    check(pd.read_parquet(path))


def test_an_export_to_an_unknown_extension_is_refused_naming_the_formats(finished, tmp_path):  # type: ignore[no-untyped-def]
    with pytest.raises(errors.UsageError) as caught:
        finished.export_results(tmp_path / "results.xlsx")
    for suffix in (".csv", ".tsv", ".jsonl", ".parquet", ".arrow"):
        assert suffix in str(caught.value)


@pytest.mark.parametrize(
    ("format", "media_type"),
    [
        ("jsonl", "application/jsonl"),
        ("csv", "text/csv"),
        ("tsv", "text/tab-separated-values"),
        ("parquet", "application/vnd.apache.parquet"),
        ("arrow", "application/vnd.apache.arrow.stream"),
    ],
)
def test_the_rest_api_streams_each_results_format_as_a_named_file(  # type: ignore[no-untyped-def]
    finished, rest, format, media_type
):
    r = rest.get(f"/v1/batches/{finished.execution_id}/results", params={"format": format})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(media_type)
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("attachment;") and finished.execution_id in disposition
    if format == "jsonl":
        rows = [json.loads(line) for line in r.text.splitlines()]
        assert [row["id"] for row in rows] == [f"k{n:03d}" for n in range(N)]
        assert [row["sq"] for row in rows] == EXPECTED


def test_an_unknown_results_format_is_refused(finished, rest):  # type: ignore[no-untyped-def]
    r = rest.get(f"/v1/batches/{finished.execution_id}/results", params={"format": "xml"})
    assert r.status_code == 422
    assert "format" in r.json()["error"]["message"]


# -- bad records --------------------------------------------------------------------------------


def post(rest, squarer, data: bytes, content_type: str, **params):  # type: ignore[no-untyped-def]
    return rest.post(
        f"/v1/services/{squarer.name}/v1/batches",
        params=params,
        content=data,
        headers={"Content-Type": content_type},
    )


@pytest.mark.parametrize(
    ("data", "content_type", "status", "words"),
    [
        (b'{"n": 1}\n{"n": 2,\n{"n": 3}\n', "application/x-ndjson", 400, ["Line 2", "JSON"]),
        (b'{"n": 1}\n[1, 2]\n', "application/jsonl", 400, ["Line 2", "not an object"]),
        (b"", "application/x-ndjson", 400, ["no records"]),
        (b"", "application/vnd.apache.parquet", 400, ["empty"]),
        (b"PAR1 but not parquet", "application/vnd.apache.parquet", 400, ["Parquet"]),
        (b"not arrow", "application/vnd.apache.arrow.file", 400, ["arrow"]),
        (b'{"m": 1}\n', "application/jsonl", 400, ["no column 'n'"]),
        (b"<n>1</n>", "application/xml", 415, ["application/xml", "text/csv", "parquet"]),
    ],
)
def test_bad_uploads_are_refused_clearly_and_leave_no_batch(  # type: ignore[no-untyped-def]
    squarer, rest, data, content_type, status, words
):
    before = squarer.list_batch_executions()
    r = post(rest, squarer, data, content_type)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    for word in words:
        assert word.lower() in message.lower()
    assert squarer.list_batch_executions() == before


def test_a_wrongly_typed_json_value_fails_only_its_record(squarer, rest):  # type: ignore[no-untyped-def]
    data = b'{"n": 2}\n{"n": "two"}\n{"n": 3}\n'
    r = post(rest, squarer, data, "application/jsonl")
    assert r.status_code == 201, r.text
    resp = squarer.get_batch(r.json()["id"]).wait(timeout=60)
    assert [resp.execution(i).status for i in range(3)] == ["succeeded", "failed", "succeeded"]
    assert "two" in resp.execution(1).error


def test_an_unknown_file_extension_is_refused_by_the_sdk(squarer, tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "records.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(errors.InvalidRecordsError, match=r"\.jsonl"):
        squarer.batch(str(path))

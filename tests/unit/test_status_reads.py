"""The one-statement reads behind status polling and request-response calls give what the
general reads give, on every store backend brought up by its migrations."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect
from tests.unit.test_store import add_chunks

from batchserve.states import ChunkState
from batchserve.store import BatchCounts, Store
from batchserve.store.models import Batch, Chunk, Service


def add_service(store: Store, owner_id: int, version: str) -> Service:
    return store.add_service(
        name="mtService",
        version=version,
        alias="score",
        inputs={"hp": "float"},
        outputs={"answer": "float"},
        artifacts=["plot.png"],
        bundle_key=f"services/mtService/{version}/bundle.pkl",
        bundle_kind="callable",
        owner_id=owner_id,
    )


def add_batch(store: Store, service: Service, batch_id: str, chunks: list[int]) -> Batch:
    store.add_batch(
        id=batch_id,
        service_id=service.id,
        owner_id=service.owner_id,
        chunk_size=4,
        parallel_count=2,
        display_name="nightly",
        options={"outputs": {"answer": "float"}, "metadata": {"team": "risk"}},
    )
    store.update_batch(batch_id, sealed=True, total_count=sum(chunks))
    add_chunks(store, batch_id, chunks)
    found = store.get_batch(batch_id)
    assert found is not None
    return found


def columns(row: object) -> dict[str, object]:
    return {c.key: getattr(row, c.key) for c in inspect(type(row)).columns}


def result_key(chunk: Chunk) -> str:
    return f"batches/{chunk.batch_id}/results/{chunk.seq:06d}"


def test_batch_status_is_the_batch_its_counts_and_its_owner(store, owner):  # type: ignore[no-untyped-def]
    service = add_service(store, owner.id, "v1")
    batch = add_batch(store, service, "b1", [4, 4, 4, 2])
    add_batch(store, service, "b2", [4, 4])  # another batch's chunks count for it only
    first = store.claim_chunk("b1", result_key)
    store.set_chunk(
        first.id,
        expect_state=ChunkState.RUNNING,
        state=ChunkState.SUCCEEDED.value,
        succeeded=3,
        failed=1,
        cpu_user=0.5,
        bytes_in=100,
    )
    store.claim_chunk("b1", result_key)
    found = store.batch_status("b1")
    assert found is not None
    read, counts, username = found
    assert columns(read) == columns(store.get_batch("b1"))
    assert read.options == batch.options
    assert counts == store.batch_counts("b1")
    assert counts == BatchCounts(
        succeeded=3,
        failed=1,
        chunks=4,
        chunks_final=1,
        chunks_running=1,
        cpu_user=0.5,
        bytes_in=100,
    )
    assert username == "ann"


def test_batch_status_follows_the_chunks_as_they_change(store, owner):  # type: ignore[no-untyped-def]
    service = add_service(store, owner.id, "v1")
    add_batch(store, service, "b1", [4, 4])
    before = store.batch_status("b1")
    chunk = store.claim_chunk("b1", result_key)
    store.set_chunk(chunk.id, succeeded=2)
    after = store.batch_status("b1")
    assert before is not None and after is not None
    assert (before[1].succeeded, before[1].chunks_running) == (0, 0)
    assert (after[1].succeeded, after[1].chunks_running) == (2, 1)


def test_batch_status_of_a_batch_without_chunks_counts_zero(store, owner):  # type: ignore[no-untyped-def]
    add_batch(store, add_service(store, owner.id, "v1"), "b1", [])
    found = store.batch_status("b1")
    assert found is not None
    assert found[1] == BatchCounts()


def test_batch_status_of_no_batch_is_none(store):  # type: ignore[no-untyped-def]
    assert store.batch_status("nope") is None


@pytest.mark.parametrize(
    ("name", "version"),
    [("mtService", "v1"), ("mtService", "v2"), ("mtService", None), ("mtService", "latest")],
)
def test_find_service_is_what_get_service_finds(store, owner, name, version):  # type: ignore[no-untyped-def]
    add_service(store, owner.id, "v1")
    add_service(store, owner.id, "v2")
    found = store.find_service(name, version)
    assert found is not None
    assert columns(found) == columns(store.get_service(name, version))


@pytest.mark.parametrize(("name", "version"), [("mtService", "v9"), ("other", None)])
def test_find_service_of_no_service_is_none(store, owner, name, version):  # type: ignore[no-untyped-def]
    add_service(store, owner.id, "v1")
    assert store.find_service(name, version) is None

"""A server whose store is PostgreSQL: it migrates an empty database, runs and cancels batches,
and a server started again on the same database finds everything as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import throwaway_database

from batchserve import BatchState, Client

from .conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = pytest.mark.e2e


def square(x: float) -> float:
    return x * x


def nap(x: float) -> float:
    import time

    time.sleep(0.2)
    return x


@pytest.fixture
def pg_server(postgres_server: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own on an empty PostgreSQL database, given as a plain
    ``postgresql://`` URL as a user would write it."""
    with throwaway_database(postgres_server) as url:
        plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
        proc = ServerProcess(tmp_path / "home", workers=1, database_url=plain)
        yield proc
        proc.stop()


def test_batches_run_cancel_and_survive_a_restart_on_postgresql(pg_server: ServerProcess):
    pg_server.start()
    with Client(pg_server.url, username="admin", password=ADMIN_PASSWORD) as client:
        squares = client.publish_service(
            "squares", code=square, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        records = [{"x": float(i)} for i in range(20)]
        done = squares.batch(records, chunk_size=5, metadata={"team": "risk"}).start()
        finished = done.wait(timeout=60, poll_interval=0.1)
        assert finished.state is BatchState.COMPLETED
        assert list(finished.to_pandas()["y"]) == [float(i * i) for i in range(20)]

        napper = client.publish_service(
            "napper", code=nap, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        stopped = napper.batch([{"x": float(i)} for i in range(50)], chunk_size=5).start()
        stopped.cancel()
        cancelled = stopped.wait(timeout=60, poll_interval=0.1)
        assert cancelled.state is BatchState.CANCELLED
        assert cancelled.info["cancelled_item_count"] > 0

    pg_server.stop()
    pg_server.start()
    with Client(pg_server.url, username="admin", password=ADMIN_PASSWORD) as client:
        again = client.get_service("squares", version="v1").get_batch(done.execution_id)
        results = again.results()
        assert results.state is BatchState.COMPLETED
        assert list(results.to_pandas()["y"]) == [float(i * i) for i in range(20)]
        assert results.execution(3).outputs == {"y": 9.0}
        gone = client.get_service("napper", version="v1").get_batch(stopped.execution_id)
        assert gone.results().state is BatchState.CANCELLED
        listed = [b.execution_id for b in client.list_batches()]
        assert listed == [stopped.execution_id, done.execution_id]  # newest first
        tagged = [b.execution_id for b in client.list_batches(metadata={"team": "risk"})]
        assert tagged == [done.execution_id]

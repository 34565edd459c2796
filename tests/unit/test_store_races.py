"""Changes that read a row to decide how to change it do not lose a concurrent change."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from tests.conftest import throwaway_database
from tests.unit.test_store import add_batch, add_service

from batchserve.states import BatchState
from batchserve.store import RevisionMismatch


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls on threads released at the same moment; their results (or exceptions)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_moves_from_the_same_state_do_not_both_happen(store):
    owner = store.add_user("ann", "hash", "owner")
    service = add_service(store, owner, "svc", "v1")
    for _ in range(30):
        batch = add_batch(store, service, owner, chunks=[4])
        store.transition(batch.id, BatchState.PENDING)
        wanted = (BatchState.RUNNING, BatchState.PAUSING)
        moved = race(
            *(
                lambda w=w, b=batch: store.transition(b.id, w, only_from=[BatchState.PENDING])
                for w in wanted
            )
        )
        winners = [w for w, b in zip(wanted, moved, strict=True) if b is not None]
        assert len(winners) == 1, moved  # the other saw the new state and did nothing
        final = store.get_batch(batch.id)
        assert final.state == winners[0].value
        assert final.previous_state == BatchState.PENDING.value


def test_two_updates_with_the_same_etag_do_not_both_apply(store):
    owner = store.add_user("ann", "hash", "owner")
    service = add_service(store, owner, "svc", "v1")
    for _ in range(30):
        batch = add_batch(store, service, owner, chunks=[4])
        outcomes = race(
            *(
                lambda p=p, b=batch: store.update_batch(
                    b.id, expect_revision=b.revision, priority=p
                )
                for p in (5, 7)
            )
        )
        refused = [o for o in outcomes if isinstance(o, RevisionMismatch)]
        assert len(refused) == 1, outcomes
        assert store.get_batch(batch.id).revision == batch.revision + 1


def test_servers_started_together_on_a_new_postgresql_database_migrate_it_once(postgres_server):
    migrate = "import sys; from batchserve.store import upgrade; upgrade(sys.argv[1])"
    with throwaway_database(postgres_server) as url:
        servers = [subprocess.Popen([sys.executable, "-c", migrate, url]) for _ in range(2)]
        assert [p.wait(timeout=120) for p in servers] == [0, 0]

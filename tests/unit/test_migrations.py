"""Migrations of a store that holds data: what an earlier version wrote still runs and reads."""

from __future__ import annotations

import sqlite3

from batchserve.store import Store, upgrade


def test_a_batch_cut_into_chunk_files_by_an_earlier_version_becomes_parts_it_runs_on(tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    upgrade(url, "0004")
    with sqlite3.connect(tmp_path / "meta.db") as db:
        db.execute(
            "INSERT INTO users (id, username, password_hash, role, created_at) "
            "VALUES (1, 'ann', 'h', 'owner', '2026-11-01 00:00:00')"
        )
        db.execute(
            "INSERT INTO services (id, name, version, description, alias, mode, inputs, outputs,"
            " artifacts, bundle_key, bundle_kind, runtime, extra, owner_id, created_at) VALUES "
            "(1, 's', 'v1', '', 's', 'row', '{\"x\": \"float\"}', '{\"y\": \"float\"}', '[]',"
            " 'k', 'callable', 'python', '{}', 1, '2026-11-01 00:00:00')"
        )
        db.execute(
            "INSERT INTO batches (id, service_id, owner_id, state, state_transition_time,"
            " creation_time, last_modified, revision, priority, parallel_count, chunk_size,"
            " total_count, sealed, options) VALUES ('b1', 1, 1, 'pending', '2026-11-01 00:00:00',"
            " '2026-11-01 00:00:00', '2026-11-01 00:00:00', 1, 0, 2, 4, 10, 1, '{}')"
        )
        for seq, (start, count, state) in enumerate([(0, 4, "succeeded"), (4, 4, "pending"),
                                                     (8, 2, "pending")]):  # fmt: skip
            db.execute(
                "INSERT INTO chunks (batch_id, seq, start_index, count, state, attempts,"
                " lost_workers, input_key, succeeded, failed, cancelled, retried, timed_out,"
                " requeued, cpu_user, cpu_system, wait_seconds, bytes_in, bytes_out) VALUES "
                "('b1', ?, ?, ?, ?, 0, 0, ?, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)",
                (seq, start, count, state, f"batches/b1/inputs/{seq:06d}.arrow"),
            )
    upgrade(url)
    store = Store(url)
    try:
        parts = store.parts("b1")
        assert [(p.start_index, p.count, p.key) for p in parts] == [
            (0, 4, "batches/b1/inputs/000000.arrow"),
            (4, 4, "batches/b1/inputs/000001.arrow"),
            (8, 2, "batches/b1/inputs/000002.arrow"),
        ]
        # Every record was in a chunk already: the chunks left run as they were cut.
        assert store.get_batch("b1").claimed == 10
        chunk = store.claim_chunk("b1", lambda c: "r", lambda remaining, sealed: 100)
        assert (chunk.start_index, chunk.count) == (4, 4)
    finally:
        store.close()

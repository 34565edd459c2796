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


def test_names_published_before_owned_names_belong_to_their_first_publisher(tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    upgrade(url, "0005")
    with sqlite3.connect(tmp_path / "meta.db") as db:
        for uid, name in ((1, "ann"), (2, "bob"), (3, "cy")):
            db.execute(
                "INSERT INTO users (id, username, password_hash, role, created_at) "
                "VALUES (?, ?, 'h', 'contributor', '2026-11-01 00:00:00')",
                (uid, name),
            )
        versions = [
            # id, name, version, publisher, published at
            (1, "pricing", "v9", 2, "2026-11-02 00:00:00"),
            (2, "pricing", "v1", 1, "2026-11-01 00:00:00"),
            (3, "pricing", "v10", 2, "2026-11-03 00:00:00"),
            (4, "solo", "v1", 3, "2026-11-01 00:00:00"),
            (5, "tie", "a", 3, "2026-11-05 00:00:00"),  # same time: the first id wins
            (6, "tie", "b", 1, "2026-11-05 00:00:00"),
        ]
        for sid, name, version, owner, at in versions:
            db.execute(
                "INSERT INTO services (id, name, version, description, alias, mode, inputs,"
                " outputs, artifacts, bundle_key, bundle_kind, runtime, extra, owner_id,"
                " created_at) VALUES (?, ?, ?, '', 's', 'row', '{}', '{}', '[]', 'k',"
                " 'callable', 'python', '{}', ?, ?)",
                (sid, name, version, owner, at),
            )
    upgrade(url)
    store = Store(url)
    try:
        owners = {n: store.get_service_name(n).owner_id for n in ("pricing", "solo", "tie")}
        assert owners == {"pricing": 1, "solo": 3, "tie": 3}
        # Others who had published under a name keep publishing under it: they are granted it.
        assert [(g.user_id, who) for g, who, _ in store.service_publishers("pricing")] == [
            (2, "bob")
        ]
        assert store.may_publish("pricing", 2) and not store.may_publish("pricing", 3)
        assert [g.user_id for g, _, _ in store.service_publishers("tie")] == [1]
        assert store.service_publishers("solo") == []
        assert store.get_service_name("never") is None
    finally:
        store.close()


def test_users_of_an_earlier_version_stay_active_keep_their_tokens_and_ignore_case(tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    upgrade(url, "0005")
    with sqlite3.connect(tmp_path / "meta.db") as db:
        for user_id, name in [(1, "Ann"), (2, "ann"), (3, "Bob")]:  # two differ only in case
            db.execute(
                "INSERT INTO users (id, username, password_hash, role, created_at) "
                "VALUES (?, ?, 'h', 'reader', '2026-11-01 00:00:00')",
                (user_id, name),
            )
        db.execute(
            "INSERT INTO tokens (token_hash, user_id, kind, pair, expires_at, revoked, created_at)"
            " VALUES ('t', 3, 'access', 'p', '2999-01-01 00:00:00', 0, '2026-11-01 00:00:00')"
        )
    upgrade(url)
    store = Store(url)
    try:
        users = {u.username: u for u in store.list_users()}
        assert all(u.active and u.token_generation == 0 for u in users.values())
        assert (users["Ann"].username_key, users["Bob"].username_key) == ("ann", "bob")
        assert users["ann"].username_key == "ann#2"  # a key no new username can take
        # Each logs in by their exact name; a case-insensitive lookup finds the first.
        assert store.get_user("ann").id == 2  # type: ignore[union-attr]
        assert store.get_user("ANN").id == 1  # type: ignore[union-attr]
        assert store.get_user("bob").id == 3  # type: ignore[union-attr]
        token, user = store.find_token("t", "access")  # type: ignore[misc]
        assert token.generation == user.token_generation
    finally:
        store.close()

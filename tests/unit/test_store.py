"""The metadata store (batchserve.store) on every backend, brought up by its migrations."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import StatementError

from batchserve.states import BatchState, ChunkState, InvalidTransition
from batchserve.store import AlreadyExists, BatchCounts
from batchserve.store.models import Batch, Chunk

_ids = itertools.count()


@pytest.fixture
def service(store, owner):
    return add_service(store, owner, "mtService", "v1")


def add_service(store, owner, name, version):
    return store.add_service(
        name=name,
        version=version,
        alias=f"{name}_alias",
        inputs={"hp": "float", "wt": "float"},
        outputs={"answer": "float"},
        artifacts=["plot.png"],
        bundle_key=f"services/{name}/{version}/bundle.pkl",
        bundle_kind="callable",
        owner_id=owner.id,
    )


def add_batch(store, service, owner, *, sealed=True, priority=0, chunks=(), **fields):
    batch_id = f"batch{next(_ids):04d}"
    store.add_batch(
        id=batch_id,
        service_id=service.id,
        owner_id=owner.id,
        chunk_size=4,
        parallel_count=100,
        priority=priority,
        options={"outputs": {"y": "int"}},
        **fields,
    )
    start = 0
    for seq, count in enumerate(chunks):
        key = f"batches/{batch_id}/inputs/{seq:06d}.arrow"
        store.add_part(batch_id, seq, start, count, 16 * count, key)
        start += count
    if sealed:
        store.update_batch(batch_id, sealed=True, total_count=start)
        add_chunks(store, batch_id, chunks)
    return store.get_batch(batch_id)


def add_chunks(store, batch_id, sizes, first=0):
    """Chunks of these sizes cut from the batch's records (from index ``first``), as the
    scheduler would cut them, each waiting for a worker."""
    start = first
    with store.session() as s:
        seq = len(store.chunks(batch_id))
        for count in sizes:
            s.add(
                Chunk(batch_id=batch_id, seq=seq, start_index=start, count=count, state="pending")
            )
            seq += 1
            start += count
        s.get(Batch, batch_id).claimed = start


def result_key(chunk):
    return f"batches/{chunk.batch_id}/results/{chunk.seq:06d}-{chunk.attempts}.arrow"


def later(minutes=5):
    return datetime.now(UTC) + timedelta(minutes=minutes)


# --- users and tokens ------------------------------------------------------------------------


def test_a_user_is_found_by_name_and_by_id(store, owner):
    assert store.get_user("ann").id == owner.id
    assert store.get_user_by_id(owner.id).username == "ann"
    assert store.get_user("bob") is None


def test_a_username_is_unique(store, owner):
    with pytest.raises(AlreadyExists, match="ann"):
        store.add_user("ann", "other", "reader")


def test_users_are_listed_in_creation_order(store, owner):
    store.add_user("bob", "h", "reader")
    assert [u.username for u in store.list_users()] == ["ann", "bob"]


def test_a_user_can_be_changed(store, owner):
    store.update_user(owner.id, role="reader", password_hash="new")
    user = store.get_user("ann")
    assert (user.role, user.password_hash) == ("reader", "new")


def test_a_token_is_found_by_its_hash_and_kind_with_its_user(store, owner):
    store.add_tokens(
        owner.id, "pair1", [("access", "a" * 64, later()), ("refresh", "r" * 64, later(60))]
    )
    token, user = store.find_token("a" * 64, "access")
    assert token.pair == "pair1" and not token.revoked
    assert user.username == "ann"
    assert store.find_token("a" * 64, "refresh") is None
    assert store.find_token("x" * 64, "access") is None


def test_revoking_a_pair_revokes_both_of_its_tokens_only(store, owner):
    store.add_tokens(owner.id, "pair1", [("access", "a1", later()), ("refresh", "r1", later())])
    store.add_tokens(owner.id, "pair2", [("access", "a2", later()), ("refresh", "r2", later())])
    store.revoke_pair("pair1")
    assert store.find_token("a1", "access")[0].revoked
    assert store.find_token("r1", "refresh")[0].revoked
    assert not store.find_token("a2", "access")[0].revoked


def test_touching_a_token_moves_its_expiry(store, owner):
    store.add_tokens(owner.id, "p", [("access", "a1", later(5))])
    token, _ = store.find_token("a1", "access")
    new_expiry = later(30).replace(microsecond=0)
    store.touch_token(token.id, new_expiry)
    assert store.find_token("a1", "access")[0].expires_at == new_expiry


def test_times_come_back_timezone_aware_in_utc(store, owner):
    expiry = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    store.add_tokens(owner.id, "p", [("access", "a1", expiry)])
    got = store.find_token("a1", "access")[0].expires_at
    assert got == expiry
    assert got.utcoffset() == timedelta(0)


def test_a_naive_time_is_refused(store, owner):
    with pytest.raises(StatementError, match="naive datetime"):
        store.add_tokens(owner.id, "p", [("access", "a1", datetime(2030, 1, 1))])


def test_lookups_by_text_holding_a_nul_character_find_nothing(store, service, owner):
    batch = add_batch(store, service, owner)
    assert store.get_user("ann\x00") is None
    assert store.get_batch(batch.id + "\x00") is None
    assert store.batch_status(batch.id + "\x00") is None
    assert store.get_service("mtService\x00", "v1") is None
    assert store.find_service("mtService", "v1\x00") is None
    assert store.list_services("mtService\x00") == []
    assert store.list_batches(metadata={"team\x00": "risk"}) == []


def test_deleting_a_user_deletes_their_tokens(store):
    user = store.add_user("bob", "h", "reader")
    store.add_tokens(user.id, "p", [("access", "a1", later())])
    assert store.remove_user(user.id) is True  # deleted: bob owns no service and no batch
    assert store.get_user("bob") is None
    assert store.find_token("a1", "access") is None


# --- services --------------------------------------------------------------------------------


def test_a_service_is_stored_with_its_schemas(store, service):
    got = store.get_service("mtService", "v1")
    assert got.id == service.id
    assert got.inputs == {"hp": "float", "wt": "float"}
    assert got.outputs == {"answer": "float"}
    assert got.artifacts == ["plot.png"]
    assert got.mode == "row"


def test_publishing_the_same_name_and_version_again_is_refused(store, owner, service):
    with pytest.raises(AlreadyExists, match="service mtService v1"):
        add_service(store, owner, "mtService", "v1")


def test_the_same_version_of_another_name_is_fine(store, owner, service):
    assert add_service(store, owner, "other", "v1").id != service.id


def test_no_version_or_latest_gives_the_newest_version(store, owner, service):
    add_service(store, owner, "mtService", "v2")
    add_service(store, owner, "mtService", "v0-published-last")
    assert store.get_service("mtService", None).version == "v0-published-last"
    assert store.get_service("mtService", "latest").version == "v0-published-last"


def test_a_named_version_is_that_version(store, owner, service):
    add_service(store, owner, "mtService", "v2")
    assert store.get_service("mtService", "v1").id == service.id


def test_an_unknown_service_or_version_is_none(store, service):
    assert store.get_service("mtService", "v9") is None
    assert store.get_service("nothing", None) is None


def test_services_are_listed_in_publication_order_and_filtered_by_name(store, owner, service):
    add_service(store, owner, "other", "v1")
    add_service(store, owner, "mtService", "v2")
    assert [(s.name, s.version) for s in store.list_services()] == [
        ("mtService", "v1"),
        ("other", "v1"),
        ("mtService", "v2"),
    ]
    assert [s.version for s in store.list_services("mtService")] == ["v1", "v2"]


def test_a_service_can_be_changed_and_deleted(store, service):
    store.update_service(service.id, description="Predicts mpg")
    assert store.get_service_by_id(service.id).description == "Predicts mpg"
    store.delete_service(service.id)
    assert store.get_service_by_id(service.id) is None


# --- batches and transitions -----------------------------------------------------------------


def test_a_new_batch_is_created_with_revision_one(store, service, owner):
    batch = add_batch(store, service, owner, sealed=False)
    assert batch.state == "created"
    assert batch.previous_state is None
    assert batch.previous_state_transition_time is None
    assert batch.revision == 1
    assert batch.state_transition_time == batch.creation_time == batch.last_modified


def test_a_transition_records_the_previous_state_both_times_and_a_new_revision(
    store, service, owner
):
    batch = add_batch(store, service, owner)
    moved = store.transition(batch.id, BatchState.PENDING)
    assert moved.state == "pending"
    assert moved.previous_state == "created"
    assert moved.previous_state_transition_time == batch.state_transition_time
    assert moved.state_transition_time == moved.last_modified
    assert moved.revision == batch.revision + 1


def test_a_transition_is_stored(store, service, owner):
    batch = add_batch(store, service, owner)
    moved = store.transition(batch.id, BatchState.PENDING)
    again = store.get_batch(batch.id)
    assert again.state == "pending"
    assert again.previous_state == "created"
    assert again.revision == moved.revision
    assert again.state_transition_time == moved.state_transition_time


def test_each_transition_bumps_the_revision(store, service, owner):
    batch = add_batch(store, service, owner)
    revisions = [
        store.transition(batch.id, state).revision
        for state in (BatchState.PENDING, BatchState.RUNNING, BatchState.COMPLETED)
    ]
    assert revisions == [batch.revision + 1, batch.revision + 2, batch.revision + 3]
    assert store.get_batch(batch.id).previous_state == "running"


def test_a_transition_sets_the_given_fields(store, service, owner):
    batch = add_batch(store, service, owner)
    store.transition(batch.id, BatchState.PENDING)
    start = datetime(2030, 1, 1, tzinfo=UTC)
    store.transition(batch.id, BatchState.RUNNING, start_time=start)
    failed = store.transition(
        batch.id,
        BatchState.FAILED,
        error="wall clock limit",
        termination_reason="MaxWallClockTimeExpiry",
    )
    again = store.get_batch(batch.id)
    assert again.start_time == start
    assert again.error == failed.error == "wall clock limit"
    assert again.termination_reason == "MaxWallClockTimeExpiry"


def test_a_forbidden_transition_is_refused_and_changes_nothing(store, service, owner):
    batch = add_batch(store, service, owner)
    with pytest.raises(InvalidTransition, match="cannot become 'running'"):
        store.transition(batch.id, BatchState.RUNNING)
    again = store.get_batch(batch.id)
    assert again.state == "created"
    assert again.revision == batch.revision
    assert again.last_modified == batch.last_modified


def test_a_final_batch_cannot_move(store, service, owner):
    batch = add_batch(store, service, owner)
    store.transition(batch.id, BatchState.CANCELLED)
    with pytest.raises(InvalidTransition, match="it may become: deleting"):
        store.transition(batch.id, BatchState.PENDING)


def test_a_transition_from_another_state_than_expected_returns_none(store, service, owner):
    batch = add_batch(store, service, owner)
    assert (
        store.transition(
            batch.id, BatchState.CANCELLED, only_from=[BatchState.RUNNING, BatchState.PENDING]
        )
        is None
    )
    again = store.get_batch(batch.id)
    assert again.state == "created"
    assert again.revision == batch.revision


def test_a_transition_from_an_expected_state_happens(store, service, owner):
    batch = add_batch(store, service, owner)
    moved = store.transition(batch.id, BatchState.PENDING, only_from=[BatchState.CREATED])
    assert moved.state == "pending"


def test_only_from_is_checked_before_the_state_table(store, service, owner):
    batch = add_batch(store, service, owner)
    # CREATED -> RUNNING is forbidden, but a lost race is reported as None, not as an error.
    assert store.transition(batch.id, BatchState.RUNNING, only_from=[BatchState.PENDING]) is None


def test_a_transition_of_an_unknown_batch_returns_none(store):
    assert store.transition("missing", BatchState.PENDING) is None


def test_updating_a_batch_bumps_its_revision_but_not_its_state(store, service, owner):
    batch = add_batch(store, service, owner)
    updated = store.update_batch(batch.id, priority=500, display_name="nightly")
    assert updated.revision == batch.revision + 1
    assert updated.last_modified >= batch.last_modified
    again = store.get_batch(batch.id)
    assert (again.priority, again.display_name, again.state) == (500, "nightly", "created")
    assert again.state_transition_time == batch.state_transition_time


def test_updating_an_unknown_batch_returns_none(store):
    assert store.update_batch("missing", priority=1) is None


def test_options_are_stored_as_json(store, service, owner):
    batch = add_batch(store, service, owner)
    assert store.get_batch(batch.id).options == {"outputs": {"y": "int"}}


@pytest.mark.parametrize(
    ("value", "problem"),
    [(float("nan"), "nan"), (float("inf"), "inf"), ("a\x00b", "a NUL character")],
)
def test_options_no_backend_can_read_back_are_refused(store, service, owner, value, problem):
    batch = add_batch(store, service, owner)
    with pytest.raises(StatementError, match=f"JSON value holding {problem}"):
        store.update_batch(batch.id, options={"metadata": {"team": value}})
    assert store.get_batch(batch.id).options == {"outputs": {"y": "int"}}


def test_a_nul_character_in_an_error_message_becomes_a_replacement_character(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4])
    chunk = store.claim_chunk(batch.id, result_key)
    store.set_chunk(chunk.id, error="bad byte \x00 in the input")
    store.transition(batch.id, BatchState.FAILED, error="chunk 0: bad byte \x00")
    assert store.get_chunk(chunk.id).error == "bad byte \ufffd in the input"
    assert store.get_batch(batch.id).error == "chunk 0: bad byte \ufffd"


def test_deleting_a_batch_deletes_its_chunks(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 4])
    store.delete_batch(batch.id)
    assert store.get_batch(batch.id) is None
    assert store.chunks(batch.id) == []


def test_marking_a_batch_for_deletion_keeps_its_rows_and_records_when(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 4])
    assert batch.deleting_since is None
    assert store.mark_deleting(batch.id) is True
    marked = store.get_batch(batch.id)
    assert marked.deleting_since is not None
    assert marked.deleting_since.tzinfo is not None
    # Its state says so, with the one it had before: a change like any other.
    assert (marked.state, marked.previous_state) == ("deleting", batch.state)
    assert marked.revision == batch.revision + 1
    assert marked.last_modified >= batch.last_modified
    assert len(store.chunks(batch.id)) == 2


def test_a_batch_is_marked_for_deletion_once(store, service, owner):
    batch = add_batch(store, service, owner)
    assert store.mark_deleting(batch.id) is True
    first = store.get_batch(batch.id).deleting_since
    assert store.mark_deleting(batch.id) is False  # a second delete finds it marked
    assert store.get_batch(batch.id).deleting_since == first


def test_marking_an_unknown_batch_for_deletion_returns_false(store):
    assert store.mark_deleting("missing") is False


def test_batches_being_deleted_are_the_marked_ones_longest_waiting_first(store, service, owner):
    first, kept, second = (add_batch(store, service, owner) for _ in range(3))
    assert store.batches_being_deleted() == []
    store.mark_deleting(first.id)
    store.mark_deleting(second.id)
    assert [b.id for b in store.batches_being_deleted()] == [first.id, second.id]
    store.delete_batch(first.id)
    assert [b.id for b in store.batches_being_deleted()] == [second.id]
    assert store.get_batch(kept.id).deleting_since is None


# --- listing batches -------------------------------------------------------------------------


def test_list_batches_gives_sealed_batches_newest_first(store, service, owner):
    made = [add_batch(store, service, owner) for _ in range(3)]
    add_batch(store, service, owner, sealed=False)
    assert [b.id for b in store.list_batches()] == [b.id for b in reversed(made)]


def test_list_batches_pages_through_every_batch_once(store, service, owner):
    made = [add_batch(store, service, owner).id for _ in range(7)]
    seen = []
    before = None
    while True:
        page = store.list_batches(limit=3, before=before)
        if not page:
            break
        assert len(page) <= 3
        seen += [b.id for b in page]
        before = (page[-1].creation_time, page[-1].id)
    assert seen == list(reversed(made))


def test_list_batches_filters_by_state(store, service, owner):
    first = add_batch(store, service, owner)
    second = add_batch(store, service, owner)
    store.transition(second.id, BatchState.PENDING)
    assert [b.id for b in store.list_batches(states=["pending"])] == [second.id]
    assert [b.id for b in store.list_batches(states=["created", "pending"])] == [
        second.id,
        first.id,
    ]


def test_list_batches_filters_by_service_and_owner(store, service, owner):
    other_service = add_service(store, owner, "other", "v1")
    bob = store.add_user("bob", "h", "contributor")
    mine = add_batch(store, service, owner)
    other = add_batch(store, other_service, owner)
    bobs = add_batch(store, service, bob)
    assert [b.id for b in store.list_batches(service_ids=[other_service.id])] == [other.id]
    assert [b.id for b in store.list_batches(owner_id=bob.id)] == [bobs.id]
    assert {b.id for b in store.list_batches(service_ids=[service.id])} == {mine.id, bobs.id}


def tagged(store, service, owner, **metadata):
    batch = add_batch(store, service, owner)
    store.update_batch(batch.id, options={"outputs": {"y": "int"}, "metadata": metadata})
    return batch


def test_list_batches_keeps_batches_whose_metadata_has_every_pair(store, service, owner):
    risk_eu = tagged(store, service, owner, team="risk", region="eu")
    risk_us = tagged(store, service, owner, team="risk", region="us")
    tagged(store, service, owner, team="ops", region="eu")
    add_batch(store, service, owner)  # no metadata at all
    assert [b.id for b in store.list_batches(metadata={"team": "risk"})] == [
        risk_us.id,
        risk_eu.id,
    ]
    got = store.list_batches(metadata={"team": "risk", "region": "eu"})
    assert [b.id for b in got] == [risk_eu.id]
    assert store.list_batches(metadata={"team": "nobody"}) == []
    assert store.list_batches(metadata={"missing": "risk"}) == []


def test_list_batches_matches_metadata_keys_that_json_paths_cannot_spell(store, service, owner):
    odd = tagged(store, service, owner, **{'we"ird.key[0]': "a:b", "équipe": "risque"})
    tagged(store, service, owner, **{"weird.key": "a:b"})
    assert [b.id for b in store.list_batches(metadata={'we"ird.key[0]': "a:b"})] == [odd.id]
    assert [b.id for b in store.list_batches(metadata={"équipe": "risque"})] == [odd.id]


def test_list_batches_bounds_the_creation_time(store, service, owner):
    made = [add_batch(store, service, owner) for _ in range(3)]
    middle = made[1].creation_time
    assert [b.id for b in store.list_batches(created_after=middle)] == [made[2].id]
    assert [b.id for b in store.list_batches(created_before=middle)] == [made[0].id]
    assert store.list_batches(created_after=middle, created_before=middle) == []


def test_list_batches_pages_stay_stable_while_batches_are_added(store, service, owner):
    made = [add_batch(store, service, owner).id for _ in range(5)]
    first = store.list_batches(limit=2)
    added = add_batch(store, service, owner).id  # newer than every page already read
    rest = store.list_batches(limit=10, before=(first[-1].creation_time, first[-1].id))
    assert [b.id for b in first] + [b.id for b in rest] == list(reversed(made))
    assert added not in [b.id for b in rest]


def test_batches_in_states_puts_higher_priority_first_then_first_come(store, service, owner):
    low = add_batch(store, service, owner, priority=-5)
    first = add_batch(store, service, owner, priority=10)
    second = add_batch(store, service, owner, priority=10)
    for batch in (low, first, second):
        store.transition(batch.id, BatchState.PENDING)
    got = store.batches_in_states([BatchState.PENDING])
    assert [b.id for b in got] == [first.id, second.id, low.id]


def test_batches_in_states_leaves_out_unsealed_batches_unless_asked(store, service, owner):
    open_batch = add_batch(store, service, owner, sealed=False)
    assert store.batches_in_states([BatchState.CREATED]) == []
    got = store.batches_in_states([BatchState.CREATED], sealed=False)
    assert [b.id for b in got] == [open_batch.id]


def test_batches_marked_for_deletion_are_not_listed_unless_asked(store, service, owner):
    kept = add_batch(store, service, owner)
    deleted = add_batch(store, service, owner)
    store.mark_deleting(deleted.id)
    assert [b.id for b in store.list_batches()] == [kept.id]
    assert [b.id for b in store.list_batches(service_ids=[service.id])] == [kept.id]
    got = store.list_batches(service_ids=[service.id], include_deleting=True)
    assert [b.id for b in got] == [deleted.id, kept.id]


def test_batches_marked_for_deletion_are_left_out_of_the_states_scheduled(store, service, owner):
    kept = add_batch(store, service, owner)
    deleted = add_batch(store, service, owner)
    for batch in (kept, deleted):
        store.transition(batch.id, BatchState.PENDING)
    store.mark_deleting(deleted.id)
    got = store.batches_in_states([BatchState.PENDING, BatchState.RUNNING])
    assert [b.id for b in got] == [kept.id]


# --- chunks ----------------------------------------------------------------------------------


def test_chunks_are_claimed_in_order(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 4, 4])
    claimed = [store.claim_chunk(batch.id, result_key).seq for _ in range(3)]
    assert claimed == [0, 1, 2]
    assert store.claim_chunk(batch.id, result_key) is None


def test_a_new_chunk_is_cut_from_the_first_unclaimed_records_at_the_size_asked(
    store, service, owner
):
    batch = add_batch(store, service, owner, chunks=[])
    store.update_batch(batch.id, total_count=10)
    asked = []

    def size_for(remaining, sealed):
        asked.append(remaining)
        return 4

    cut = [store.claim_chunk(batch.id, result_key, size_for) for _ in range(4)]
    assert [(c.seq, c.start_index, c.count) for c in cut[:3]] == [(0, 0, 4), (1, 4, 4), (2, 8, 2)]
    assert cut[3] is None
    assert asked == [10, 6, 2]
    assert all(c.state == "running" and c.attempts == 1 for c in cut[:3])
    assert store.get_batch(batch.id).claimed == 10
    assert store.get_batch(batch.id).run_start_time is not None


def test_without_a_size_a_chunk_takes_every_unclaimed_record(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[])
    store.update_batch(batch.id, total_count=7)
    chunk = store.claim_chunk(batch.id, result_key)
    assert (chunk.start_index, chunk.count) == (0, 7)
    assert store.claim_chunk(batch.id, result_key) is None


def test_a_chunk_put_back_is_claimed_whole_before_a_new_one_is_cut(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[])
    store.update_batch(batch.id, total_count=10)
    first = store.claim_chunk(batch.id, result_key, lambda remaining, sealed: 3)
    assert store.requeue_running_chunks() == 1
    again = store.claim_chunk(batch.id, result_key, lambda remaining, sealed: 5)
    assert (again.id, again.start_index, again.count, again.attempts) == (first.id, 0, 3, 2)
    fresh = store.claim_chunk(batch.id, result_key, lambda remaining, sealed: 5)
    assert (fresh.start_index, fresh.count) == (3, 5)


def test_while_an_upload_goes_on_only_its_stored_records_are_cut(store, service, owner):
    batch = add_batch(store, service, owner, sealed=False)
    store.add_part(batch.id, 0, 0, 6, 96, "p0")
    told = []

    def size_for(remaining, sealed):
        told.append((remaining, sealed))
        return 0 if remaining < 4 else 4

    first = store.claim_chunk(batch.id, result_key, size_for)
    assert (first.start_index, first.count) == (0, 4)
    assert store.claim_chunk(batch.id, result_key, size_for) is None  # 2 stored: wait for more
    store.add_part(batch.id, 1, 6, 6, 96, "p1")
    second = store.claim_chunk(batch.id, result_key, size_for)
    assert (second.start_index, second.count) == (4, 4)
    assert told == [(6, False), (2, False), (8, False)]
    store.update_batch(batch.id, total_count=12, sealed=True)
    assert store.claim_chunk(batch.id, result_key).count == 4  # the rest, once sealed


def test_no_chunk_of_a_batch_being_deleted_is_handed_out(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 4])
    store.mark_deleting(batch.id)
    assert store.claim_chunk(batch.id, result_key) is None


def test_unclaimed_records_wait_and_are_unfinished(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[])
    store.update_batch(batch.id, total_count=6)
    assert store.has_waiting_records(batch.id)
    assert store.has_unfinished_records(batch.id)
    chunk = store.claim_chunk(batch.id, result_key)
    assert not store.has_waiting_records(batch.id)
    assert store.has_unfinished_records(batch.id)  # running
    store.set_chunk(chunk.id, expect_state=ChunkState.RUNNING, state="succeeded", succeeded=6)
    assert not store.has_unfinished_records(batch.id)
    assert not store.has_unfinished_records("no-such-batch")


def test_a_batch_s_parts_are_listed_in_record_order(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[3, 5, 2])
    parts = store.parts(batch.id)
    assert [(p.seq, p.start_index, p.count) for p in parts] == [(0, 0, 3), (1, 3, 5), (2, 8, 2)]
    store.delete_batch(batch.id)
    assert store.parts(batch.id) == []


def test_a_service_keeps_the_costs_measured_for_it(store, service):
    assert store.get_service_by_id(service.id).record_seconds is None
    store.observe_costs(service.id, chunk=0.004, call=0.001, record=2e-6)
    kept = store.get_service_by_id(service.id)
    assert (kept.chunk_seconds, kept.call_seconds, kept.record_seconds) == (0.004, 0.001, 2e-6)
    store.observe_costs(10_000, chunk=1.0, call=0.0, record=1.0)  # an unknown service: ignored


def test_claiming_a_chunk_makes_it_running_with_one_more_attempt_and_its_result_key(
    store, service, owner
):
    batch = add_batch(store, service, owner, chunks=[4])
    chunk = store.claim_chunk(batch.id, result_key)
    assert chunk.state == "running"
    assert chunk.attempts == 1
    assert chunk.result_key == f"batches/{batch.id}/results/000000-1.arrow"
    assert chunk.started_at is not None
    stored = store.get_chunk(chunk.id)
    assert (stored.state, stored.attempts, stored.result_key) == ("running", 1, chunk.result_key)


def test_claiming_only_takes_chunks_of_the_batch(store, service, owner):
    one = add_batch(store, service, owner, chunks=[4])
    two = add_batch(store, service, owner, chunks=[4])
    assert store.claim_chunk(one.id, result_key).batch_id == one.id
    assert store.claim_chunk(one.id, result_key) is None
    assert store.claim_chunk(two.id, result_key).batch_id == two.id


def test_a_requeued_chunk_is_claimed_again_with_a_new_attempt_and_result_key(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4])
    first = store.claim_chunk(batch.id, result_key)
    store.set_chunk(first.id, succeeded=2, failed=1)
    assert store.requeue_running_chunks() == 1
    requeued = store.get_chunk(first.id)
    assert requeued.state == "pending"
    assert (requeued.succeeded, requeued.failed, requeued.cancelled) == (0, 0, 0)
    second = store.claim_chunk(batch.id, result_key)
    assert second.id == first.id
    assert second.attempts == 2
    assert second.result_key == f"batches/{batch.id}/results/000000-2.arrow"


def test_requeue_leaves_pending_and_finished_chunks_alone(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 4, 4])
    done = store.claim_chunk(batch.id, result_key)
    store.set_chunk(
        done.id, expect_state=ChunkState.RUNNING, state=ChunkState.SUCCEEDED.value, succeeded=4
    )
    store.claim_chunk(batch.id, result_key)
    assert store.requeue_running_chunks() == 1
    assert [c.state for c in store.chunks(batch.id)] == ["succeeded", "pending", "pending"]
    assert store.get_chunk(done.id).succeeded == 4


def test_set_chunk_only_updates_a_chunk_in_the_expected_state_and_attempt(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4])
    chunk = store.claim_chunk(batch.id, result_key)
    assert not store.set_chunk(chunk.id, expect_state=ChunkState.PENDING, succeeded=4)
    assert not store.set_chunk(
        chunk.id, expect_state=ChunkState.RUNNING, expect_key="an/older/attempt", succeeded=4
    )
    assert store.get_chunk(chunk.id).succeeded == 0
    assert store.set_chunk(
        chunk.id, expect_state=ChunkState.RUNNING, expect_key=chunk.result_key, succeeded=4
    )
    assert store.get_chunk(chunk.id).succeeded == 4


def test_chunks_can_be_listed_by_state(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 4, 2])
    store.claim_chunk(batch.id, result_key)
    assert [c.seq for c in store.chunks(batch.id)] == [0, 1, 2]
    assert [c.seq for c in store.chunks(batch.id, [ChunkState.PENDING])] == [1, 2]


def test_batch_counts_add_up_the_chunks(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 4, 4, 2])
    first = store.claim_chunk(batch.id, result_key)
    store.set_chunk(
        first.id,
        expect_state=ChunkState.RUNNING,
        state=ChunkState.SUCCEEDED.value,
        succeeded=3,
        failed=1,
    )
    second = store.claim_chunk(batch.id, result_key)
    store.set_chunk(second.id, succeeded=1)
    store.finish_pending_chunks(batch.id, ChunkState.CANCELLED, "cancelled by ann")
    counts = store.batch_counts(batch.id)
    assert counts == BatchCounts(
        succeeded=4, failed=1, cancelled=6, chunks=4, chunks_final=3, chunks_running=1
    )
    assert counts.run_seconds == 0.0
    assert counts.completed == 5


def test_a_batch_without_chunks_counts_zero(store, service, owner):
    batch = add_batch(store, service, owner)
    assert store.batch_counts(batch.id) == BatchCounts()


def test_finishing_pending_chunks_as_cancelled_counts_their_records_cancelled(
    store, service, owner
):
    batch = add_batch(store, service, owner, chunks=[4, 4, 2])
    running = store.claim_chunk(batch.id, result_key)
    store.finish_pending_chunks(batch.id, ChunkState.CANCELLED, "cancelled by ann")
    chunks = store.chunks(batch.id)
    assert [c.state for c in chunks] == ["running", "cancelled", "cancelled"]
    assert [c.cancelled for c in chunks] == [0, 4, 2]
    assert [c.count for c in chunks[1:]] == [c.cancelled for c in chunks[1:]]
    assert all(c.error == "cancelled by ann" and c.finished_at is not None for c in chunks[1:])
    assert store.get_chunk(running.id).error is None


def test_finishing_pending_chunks_cuts_the_unclaimed_rest_in_the_same_state(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[])
    store.update_batch(batch.id, total_count=10)
    running = store.claim_chunk(batch.id, result_key, lambda remaining, sealed: 3)
    store.finish_pending_chunks(batch.id, ChunkState.CANCELLED, "cancelled by ann")
    chunks = store.chunks(batch.id)
    assert [(c.start_index, c.count, c.state) for c in chunks] == [
        (0, 3, "running"),
        (3, 7, "cancelled"),
    ]
    assert chunks[1].cancelled == 7 and chunks[1].error == "cancelled by ann"
    assert store.get_batch(batch.id).claimed == 10
    assert store.claim_chunk(batch.id, result_key, lambda remaining, sealed: 3) is None
    assert store.get_chunk(running.id).state == "running"


def test_finishing_pending_chunks_as_failed_counts_their_records_failed(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 2])
    store.finish_pending_chunks(batch.id, ChunkState.FAILED, "wall clock limit")
    chunks = store.chunks(batch.id)
    assert [(c.state, c.failed, c.cancelled) for c in chunks] == [
        ("failed", 4, 0),
        ("failed", 2, 0),
    ]


def test_finishing_a_requeued_chunk_drops_the_result_file_of_its_cut_off_attempt(
    store, service, owner
):
    batch = add_batch(store, service, owner, chunks=[4])
    chunk = store.claim_chunk(batch.id, result_key)
    store.set_chunk(chunk.id, succeeded=2)
    assert store.requeue_running_chunks() == 1  # a crash: the attempt is cut off
    store.finish_pending_chunks(batch.id, ChunkState.CANCELLED, "cancelled by ann")
    after = store.get_chunk(chunk.id)
    # Its records never finished as far as the batch knows: the old file must not say otherwise.
    assert (after.state, after.result_key) == ("cancelled", None)
    assert (after.succeeded, after.failed, after.cancelled) == (0, 0, 4)


def test_finishing_pending_chunks_leaves_other_batches_alone(store, service, owner):
    one = add_batch(store, service, owner, chunks=[4])
    two = add_batch(store, service, owner, chunks=[4])
    store.finish_pending_chunks(one.id, ChunkState.CANCELLED, "stop")
    assert [c.state for c in store.chunks(two.id)] == ["pending"]


@pytest.mark.parametrize(
    ("start", "stop", "seqs"),
    [
        (0, 1, [0]),
        (3, 5, [0, 1]),
        (4, 8, [1]),
        (0, 10, [0, 1, 2]),
        (9, 100, [2]),
        (10, 20, []),
    ],
)
def test_chunks_covering_gives_the_chunks_holding_any_index_in_the_range(
    store, service, owner, start, stop, seqs
):
    batch = add_batch(store, service, owner, chunks=[4, 4, 2])  # 0-3, 4-7, 8-9
    assert [c.seq for c in store.chunks_covering(batch.id, start, stop)] == seqs


def test_chunks_covering_takes_indexes_past_32_bits(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 4, 2])
    assert [c.seq for c in store.chunks_covering(batch.id, 5, 2**40)] == [1, 2]
    assert store.chunks_covering(batch.id, 2**40, 2**40 + 10) == []


def test_a_chunk_state_change_the_table_forbids_is_refused(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4])
    chunk = store.claim_chunk(batch.id, result_key)
    store.set_chunk(chunk.id, expect_state=ChunkState.RUNNING, state=ChunkState.SUCCEEDED.value)
    with pytest.raises(InvalidTransition):
        store.set_chunk(chunk.id, expect_state=ChunkState.SUCCEEDED, state=ChunkState.RUNNING.value)
    with pytest.raises(ValueError, match="expect_state"):
        store.set_chunk(chunk.id, state=ChunkState.FAILED.value)


# --- ends of batches -------------------------------------------------------------------------


def test_the_store_tells_of_a_batch_that_ends_once_it_is_committed(store, service, owner):
    told: list[tuple[str, str | None]] = []
    store.on_end = lambda batch_id: told.append((batch_id, state_of(store, batch_id)))
    batch = add_batch(store, service, owner, chunks=[4])
    store.transition(batch.id, BatchState.PENDING)
    store.transition(batch.id, BatchState.RUNNING)
    assert told == []  # not final: no long poll is woken
    store.transition(batch.id, BatchState.COMPLETED)
    assert told == [(batch.id, "completed")]  # the listener already reads the new state


def test_the_store_tells_of_a_batch_that_is_removed(store, service, owner):
    told: list[str] = []
    store.on_end = told.append
    batch = add_batch(store, service, owner, chunks=[4])
    store.transition(batch.id, BatchState.CANCELLED, only_from=[BatchState.PENDING])  # lost race
    assert told == []
    store.delete_batch(batch.id)
    assert told == [batch.id]


def state_of(store, batch_id):
    batch = store.get_batch(batch_id)
    return None if batch is None else batch.state


def test_record_counts_and_positions_past_two_to_the_31st_are_kept(store, service, owner):
    batch = add_batch(store, service, owner, sealed=False)
    first = 3_000_000_000
    store.add_part(batch.id, 0, first, 4, 64, f"batches/{batch.id}/inputs/000000.arrow")
    store.update_batch(batch.id, sealed=True, total_count=first + 4)
    add_chunks(store, batch.id, [4], first=first)
    assert store.get_batch(batch.id).total_count == first + 4
    assert [c.start_index for c in store.chunks(batch.id)] == [first]


def test_a_service_name_is_claimed_once_and_granted_to_others(store, owner):  # type: ignore[no-untyped-def]
    bob = store.add_user("bob", "hash-of-bob", "contributor")
    cy = store.add_user("cy", "hash-of-cy", "contributor")
    assert store.claim_service_name("pricing", owner.id).owner_id == owner.id
    assert store.claim_service_name("pricing", bob.id).owner_id == owner.id  # taken already
    assert store.grant_publisher("pricing", bob.id, owner.id) is True
    assert store.grant_publisher("pricing", bob.id, owner.id) is False
    assert store.may_publish("pricing", bob.id) and not store.may_publish("pricing", cy.id)
    grants = store.service_publishers("pricing")
    assert [(g.user_id, who, by) for g, who, by in grants] == [(bob.id, "bob", "ann")]
    assert store.revoke_publisher("pricing", bob.id) is True
    assert store.revoke_publisher("pricing", bob.id) is False
    assert store.service_publishers("pricing") == []
    assert store.get_service_name("pricing\x00") is None


def test_a_services_batches_are_listed_with_their_owners(store, owner, service):  # type: ignore[no-untyped-def]
    bob = store.add_user("bob", "hash-of-bob", "reader")
    mine = add_batch(store, service, owner, chunks=[4])
    theirs = add_batch(store, service, bob, sealed=False)
    found = {b.id: (b.owner, b.sealed, b.deleting) for b in store.service_batches(service.id)}
    assert found == {mine.id: ("ann", True, False), theirs.id: ("bob", False, False)}


def test_a_batch_s_chunks_are_claimed_only_up_to_its_parallel_count_wherever_they_run(
    store, service, owner
):
    batch = add_batch(store, service, owner, chunks=[4, 4, 4])
    store.update_batch(batch.id, parallel_count=2)
    first = store.claim_chunk(batch.id, result_key, node_id="a")
    second = store.claim_chunk(batch.id, result_key, node_id="b")
    assert (first.node_id, second.node_id) == ("a", "b")
    assert store.claim_chunk(batch.id, result_key, node_id="c") is None  # two run already
    store.set_chunk(
        first.id,
        expect_state=ChunkState.RUNNING,
        expect_key=first.result_key,
        state=ChunkState.SUCCEEDED.value,
    )
    assert store.claim_chunk(batch.id, result_key, node_id="c").seq == 2


def test_no_chunk_of_a_cancelling_or_paused_batch_is_claimed(store, service, owner):
    for state in (BatchState.PAUSING, BatchState.CANCELLING):
        batch = add_batch(store, service, owner, chunks=[4])
        store.transition(batch.id, BatchState.PENDING)
        store.transition(batch.id, state)
        assert store.claim_chunk(batch.id, result_key) is None

"""Bearer tokens resolved from the short-lived cache: every change made through the accounts
takes effect on the very next request, however recently the token was used."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchserve.engine.auth import Accounts
from batchserve.engine.errors import Unauthorized
from batchserve.store import Store


@pytest.fixture
def accounts(store: Store) -> Accounts:
    found = Accounts(store, access_lifetime=3600, refresh_lifetime=7200)
    found.add_user("ana", "ana-password", "reader")
    return found


def test_a_token_just_used_is_answered_from_the_cache_with_the_same_caller(accounts: Accounts):
    token = accounts.login("ana", "ana-password").access_token
    assert accounts.cached(token) is None  # never resolved yet
    first = accounts.authenticate(token)
    assert accounts.cached(token) == first
    assert (first.username, first.role) == ("ana", "reader")


def test_a_revoked_token_is_refused_right_after_it_was_used(accounts: Accounts):
    pair = accounts.login("ana", "ana-password")
    accounts.authenticate(pair.access_token)
    accounts.revoke(pair.refresh_token)
    assert accounts.cached(pair.access_token) is None
    with pytest.raises(Unauthorized):
        accounts.authenticate(pair.access_token)


def test_refreshing_stops_the_old_access_token_at_once(accounts: Accounts):
    old = accounts.login("ana", "ana-password")
    accounts.authenticate(old.access_token)
    new = accounts.refresh(old.refresh_token)
    with pytest.raises(Unauthorized):
        accounts.authenticate(old.access_token)
    assert accounts.authenticate(new.access_token).username == "ana"


def test_revoking_one_pair_leaves_the_users_other_tokens_working(accounts: Accounts):
    one, two = accounts.login("ana", "ana-password"), accounts.login("ana", "ana-password")
    accounts.authenticate(one.access_token)
    accounts.authenticate(two.access_token)
    accounts.revoke(one.refresh_token)
    assert accounts.authenticate(two.access_token).username == "ana"


def test_a_changed_role_takes_effect_on_the_next_request(accounts: Accounts):
    token = accounts.login("ana", "ana-password").access_token
    assert accounts.authenticate(token).role == "reader"
    accounts.set_role("ana", "contributor")
    assert accounts.authenticate(token).role == "contributor"
    assert accounts.authenticate(token).can_publish


def test_a_removed_users_token_is_refused_at_once(accounts: Accounts):
    token = accounts.login("ana", "ana-password").access_token
    accounts.authenticate(token)
    accounts.remove_user("ana")
    with pytest.raises(Unauthorized):
        accounts.authenticate(token)


def test_a_new_admin_password_refuses_the_admins_cached_tokens(store: Store, tmp_path: Path):
    accounts = Accounts(store, access_lifetime=3600, refresh_lifetime=7200)
    accounts.ensure_admin("first-password", tmp_path / "pw")
    token = accounts.login("admin", "first-password").access_token
    accounts.authenticate(token)
    store.revoke_pair(store.find_token(_digest(token), "access")[0].pair)  # type: ignore[index]
    # Revoked behind the cache's back (as another replica would): a new password drops it.
    accounts.ensure_admin("second-password", tmp_path / "pw")
    with pytest.raises(Unauthorized):
        accounts.authenticate(token)


def test_an_expired_token_is_refused_even_when_cached(store: Store):
    accounts = Accounts(store, access_lifetime=1, refresh_lifetime=7200)
    accounts.add_user("bo", "bo-password", "reader")
    token = accounts.login("bo", "bo-password").access_token
    accounts.authenticate(token)
    time.sleep(1.1)
    assert accounts.cached(token) is None
    with pytest.raises(Unauthorized):
        accounts.authenticate(token)


class RevokedWhileRead(Store):
    """A store in which a revoke commits while a token is being looked up."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.during_lookup: list[object] = []

    def find_token(self, token_hash: str, kind: str):  # type: ignore[no-untyped-def]
        found = super().find_token(token_hash, kind)
        while self.during_lookup:
            self.during_lookup.pop()()  # type: ignore[operator]
        return found


@pytest.fixture
def revoking(store: Store) -> Iterator[RevokedWhileRead]:
    """Such a store on the test's database."""
    found = RevokedWhileRead(store.url)
    yield found
    found.close()


def test_a_token_read_before_a_revoke_committed_is_not_kept(revoking: RevokedWhileRead):
    accounts = Accounts(revoking, access_lifetime=3600, refresh_lifetime=7200)
    accounts.add_user("cy", "cy-password", "reader")
    pair = accounts.login("cy", "cy-password")
    revoking.during_lookup.append(lambda: accounts.revoke(pair.refresh_token))
    # This lookup read the token as valid just before the revoke: it may answer, but not cache.
    accounts.authenticate(pair.access_token)
    assert accounts.cached(pair.access_token) is None
    with pytest.raises(Unauthorized):
        accounts.authenticate(pair.access_token)


def _digest(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()

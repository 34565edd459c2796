"""Accounts: usernames, passwords, deactivation, the last owner, and failed-login limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchserve.engine.auth import Accounts, Principal
from batchserve.engine.errors import BadRequest, Conflict, TooManyRequests, Unauthorized
from batchserve.engine.logins import PER_USER_FAILED, LoginThrottle
from batchserve.store import Store


@pytest.fixture
def accounts(store: Store, tmp_path: Path) -> Accounts:
    found = Accounts(store, access_lifetime=3600, refresh_lifetime=7200)
    found.ensure_admin("admin-password", tmp_path / "pw")
    return found


def _who(accounts: Accounts, username: str) -> Principal:
    user = accounts.store.get_user(username)
    assert user is not None
    return Principal(user.id, user.username, user.role)


# --- usernames -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, says",
    [
        (" alice", "spaces around it"),
        ("alice ", "spaces around it"),
        ("a/b", "not allowed"),
        ("", "not allowed"),
        ("x" * 65, "not allowed"),
        ("-alice", "not allowed"),
        ("al ice", "not allowed"),
        ("ålice", "not allowed"),
    ],
)
def test_a_username_outside_the_rules_is_refused_with_the_rules(
    accounts: Accounts, name: str, says: str
):
    with pytest.raises(BadRequest) as refused:
        accounts.add_user(name, "long-enough", "reader")
    assert says in refused.value.message
    assert "1 to 64 characters" in refused.value.message


def test_two_usernames_cannot_differ_only_in_case(accounts: Accounts):
    accounts.add_user("Alice", "alice-password", "reader")
    with pytest.raises(Conflict, match="'Alice' exists already"):
        accounts.add_user("alice", "other-password", "reader")


def test_a_login_ignores_the_case_of_the_username(accounts: Accounts):
    accounts.add_user("Alice", "alice-password", "reader")
    pair = accounts.login("ALICE", "alice-password", "10.0.0.1")
    assert accounts.authenticate(pair.access_token).username == "Alice"


# --- passwords -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password, says", [("short", "too short"), ("x" * 1025, "too long"), ("Bob-Smith", "username")]
)
def test_a_new_password_outside_the_rules_is_refused_with_the_rules(
    accounts: Accounts, password: str, says: str
):
    with pytest.raises(BadRequest) as refused:
        accounts.add_user("bob-smith", password, "reader")
    assert says in refused.value.message
    assert "8 to 1024 characters" in refused.value.message


def test_changing_a_password_stops_every_token_of_the_user(accounts: Accounts):
    accounts.add_user("cy", "cy-password", "reader")
    one, two = accounts.login("cy", "cy-password"), accounts.login("cy", "cy-password")
    accounts.authenticate(one.access_token)  # cached
    new = accounts.change_password(_who(accounts, "cy"), "cy-password", "cy-new-password")
    for old in (one, two):
        with pytest.raises(Unauthorized):
            accounts.authenticate(old.access_token)
        with pytest.raises(Unauthorized):
            accounts.refresh(old.refresh_token)
    assert accounts.authenticate(new.access_token).username == "cy"
    with pytest.raises(Unauthorized):
        accounts.login("cy", "cy-password")
    accounts.login("cy", "cy-new-password")


def test_wrong_current_passwords_change_nothing_and_are_throttled_apart_from_logins(
    accounts: Accounts,
):
    accounts.add_user("di", "di-password", "reader")
    token = accounts.login("di", "di-password", "c").access_token
    for _ in range(5):
        with pytest.raises(BadRequest, match="current password is not right"):
            accounts.change_password(_who(accounts, "di"), "guess", "di-new-password")
    with pytest.raises(TooManyRequests, match="wrong current passwords"):
        accounts.change_password(_who(accounts, "di"), "guess", "di-new-password")
    assert accounts.authenticate(token).username == "di"
    accounts.login("di", "di-password", "c")  # logging in is not held back


def test_an_owners_reset_stops_the_users_tokens(accounts: Accounts):
    accounts.add_user("ed", "ed-password", "reader")
    pair = accounts.login("ed", "ed-password")
    accounts.reset_password("ed", "ed-reset-password")
    with pytest.raises(Unauthorized):
        accounts.authenticate(pair.access_token)
    accounts.login("ed", "ed-reset-password")


def test_a_login_that_checked_the_old_password_gets_tokens_that_do_not_work(accounts: Accounts):
    accounts.add_user("fay", "fay-password", "reader")
    read_before = accounts.store.get_user("fay")
    assert read_before is not None
    accounts.reset_password("fay", "fay-new-password")
    # The tokens of a login that read the user just before the change committed.
    late = accounts._issue(read_before)
    with pytest.raises(Unauthorized):
        accounts.authenticate(late.access_token)


# --- deactivation, removal, the last owner ---------------------------------------------------


def test_a_user_with_work_is_deactivated_not_deleted_and_can_be_reactivated(
    accounts: Accounts, store: Store
):
    accounts.add_user("gus", "gus-password", "contributor")
    gus = store.get_user("gus")
    assert gus is not None
    store.add_service(
        name="s", version="v1", alias="s", inputs={}, outputs={}, artifacts=[],
        bundle_key="k", bundle_kind="callable", owner_id=gus.id,
    )  # fmt: skip
    token = accounts.login("gus", "gus-password").access_token
    accounts.authenticate(token)
    kept = accounts.remove_user("gus")
    assert kept is not None and not kept.active
    with pytest.raises(Unauthorized):
        accounts.authenticate(token)
    with pytest.raises(Unauthorized, match="Invalid username or password"):
        accounts.login("gus", "gus-password")
    assert store.find_service("s", "v1") is not None
    accounts.set_active("gus", True)
    accounts.login("gus", "gus-password")
    with pytest.raises(Unauthorized):
        accounts.authenticate(token)  # reactivating brings no old token back


def test_a_user_without_work_is_deleted(accounts: Accounts, store: Store):
    accounts.add_user("hal", "hal-password", "reader")
    assert accounts.remove_user("hal") is None
    assert store.get_user("hal") is None


def test_the_last_active_owner_cannot_be_demoted_deactivated_or_removed(accounts: Accounts):
    accounts.add_user("ida", "ida-password", "owner")
    accounts.set_role("admin", "reader")  # ida is still an owner
    with pytest.raises(Conflict, match="last active owner"):
        accounts.set_role("ida", "contributor")
    with pytest.raises(Conflict, match="last active owner"):
        accounts.set_active("ida", False)
    with pytest.raises(Conflict, match="last active owner"):
        accounts.remove_user("ida")
    accounts.set_role("admin", "owner")
    accounts.set_role("ida", "contributor")


def test_a_deactivated_owner_does_not_count_as_the_server_s_owner(accounts: Accounts):
    accounts.add_user("jo", "jo-password", "owner")
    accounts.set_active("jo", False)
    with pytest.raises(Conflict, match="last active owner"):
        accounts.set_role("admin", "reader")


def test_a_start_with_the_admin_password_makes_admin_an_active_owner_again(
    accounts: Accounts, tmp_path: Path
):
    accounts.add_user("kim", "kim-password", "owner")
    accounts.set_role("admin", "reader")
    accounts.set_active("admin", False)
    accounts.ensure_admin("admin-password", tmp_path / "pw")
    admin = accounts.store.get_user("admin")
    assert admin is not None and admin.role == "owner" and admin.active
    accounts.login("admin", "admin-password")


# --- failed-login limits ---------------------------------------------------------------------


def test_failures_of_one_client_for_one_user_make_it_wait_longer_each_step():
    throttle = LoginThrottle()
    for _ in range(5):
        throttle.check("10.0.0.1", "ann")
        throttle.failed("10.0.0.1", "ann")
    with pytest.raises(TooManyRequests) as first:
        throttle.check("10.0.0.1", "ann")
    assert 1 <= first.value.retry_after <= 15
    # Another client, and the same client for another user, may still try.
    throttle.check("10.0.0.2", "ann")
    throttle.check("10.0.0.1", "bob")


def test_a_success_forgets_the_clients_failures_for_that_user():
    throttle = LoginThrottle()
    for _ in range(4):
        throttle.failed("10.0.0.1", "ann")
    throttle.succeeded("10.0.0.1", "ann")
    for _ in range(4):
        throttle.failed("10.0.0.1", "ann")
    throttle.check("10.0.0.1", "ann")


def test_many_clients_failing_for_one_user_hold_back_a_clean_client_a_minute_at_most():
    throttle = LoginThrottle()
    for n in range(30):
        throttle.failed(f"10.0.1.{n}", "Ann")
    with pytest.raises(TooManyRequests) as held:
        throttle.check("10.0.0.9", "ann")
    assert held.value.retry_after <= 60


def test_past_the_hourly_limit_only_clients_that_failed_themselves_wait_for_an_hour():
    throttle = LoginThrottle()
    for _ in range(100):  # failures from anywhere, counted only by the hourly limit
        throttle._limiter.hit(PER_USER_FAILED[0], "user", "ann")
    throttle.failed("10.0.0.5", "ann")
    with pytest.raises(TooManyRequests) as held:
        throttle.check("10.0.0.5", "ann")
    assert held.value.retry_after > 60
    throttle.check("10.0.0.6", "ann")  # never failed for ann


def test_the_wait_is_answered_before_any_hashing(accounts: Accounts):
    for _ in range(5):
        with pytest.raises(Unauthorized):
            accounts.login("nobody", "wrong-password", "10.0.0.3")
    with pytest.raises(TooManyRequests, match="try again in"):
        accounts.check_login("10.0.0.3", "nobody")


def test_an_unknown_user_costs_one_password_check_like_a_known_one(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
):
    from batchserve.engine import auth

    accounts.add_user("known", "known-password", "reader")
    checks: list[str] = []
    verify = auth._verify_hash

    def counted(password_hash: str, password: str) -> bool:
        checks.append(password_hash)
        return verify(password_hash, password)

    monkeypatch.setattr(auth, "_verify_hash", counted)
    for n, name in enumerate(("known", "nobody-here")):
        with pytest.raises(Unauthorized) as failed:
            accounts.login(name, "wrong-guess", f"10.0.9.{n}")
        assert str(failed.value) == "Invalid username or password."
    # One argon2 check each, with the same parameters: the time does not tell them apart.
    assert len(checks) == 2
    assert checks[0].split("$")[1:4] == checks[1].split("$")[1:4]

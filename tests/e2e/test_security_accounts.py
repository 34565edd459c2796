"""Accounts and logins against a real server: login floods, throttling and its back-off,
equal failure times, password change and reset, deactivation, the last owner, usernames, and
where a generated admin password goes.

Clients that must be told apart by their address connect from other loopback addresses
(127.0.0.x): the limits of failed logins are counted per address, so the other tests, which
all connect from 127.0.0.1, are not held back by the floods here.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from batchserve import Client

from .cli_helpers import Cli
from .conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = pytest.mark.e2e

PASSWORD = "pw-accounts-1"


def from_address(server: ServerProcess, address: str, token: str | None = None) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (a loopback address)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=server.url,
        transport=httpx.HTTPTransport(local_address=address),
        headers=headers,
        timeout=60,
    )


def login(server: ServerProcess, username: str, password: str, address: str) -> httpx.Response:
    with from_address(server, address) as http:
        return http.post("/login", json={"username": username, "password": password})


@pytest.fixture
def admin_http(server: ServerProcess) -> Iterator[httpx.Client]:
    token = login(server, "admin", ADMIN_PASSWORD, "127.0.0.1").json()["access_token"]
    with from_address(server, "127.0.0.1", token) as http:
        yield http


@pytest.fixture
def user(admin_http: httpx.Client, unique_name: str) -> str:
    """A reader of the test's own, with password :data:`PASSWORD`."""
    name = f"u{unique_name}"
    created = admin_http.post(
        "/v1/users", json={"username": name, "password": PASSWORD, "role": "reader"}
    )
    assert created.status_code == 201, created.text
    return name


def assert_throttled(response: httpx.Response) -> int:
    """A 429 in the project's error shape; returns its Retry-After."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "too_many_requests"
    assert "try again in" in error["message"]
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    assert error["details"]["retry_after"] == retry_after
    return retry_after


def peak_memory_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


class Probe:
    """Polls /health and a status read (GET /v1/me) while something else runs; keeps the
    slowest answer of each."""

    def __init__(self, server: ServerProcess, token: str) -> None:
        self.server, self.token = server, token
        self.slowest = {"health": 0.0, "me": 0.0}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with from_address(self.server, "127.0.0.1", self.token) as http:
            while not self._stop.is_set():
                for name, path in (("health", "/health"), ("me", "/v1/me")):
                    started = time.monotonic()
                    try:
                        status = http.get(path, timeout=10).status_code
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{path}: {exc!r}")
                        continue
                    self.slowest[name] = max(self.slowest[name], time.monotonic() - started)
                    if status != 200:
                        self.failures.append(f"{path}: {status}")
                time.sleep(0.05)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def flood(server: ServerProcess, attempts: list[tuple[str, str]]) -> list[httpx.Response]:
    """All ``(address, username)`` wrong-password logins at once."""
    barrier = threading.Barrier(len(attempts))

    def one(attempt: tuple[str, str]) -> httpx.Response:
        address, username = attempt
        with from_address(server, address) as http:
            barrier.wait(30)
            return http.post("/login", json={"username": username, "password": "wrong-guess"})

    with ThreadPoolExecutor(len(attempts)) as pool:
        return list(pool.map(one, attempts))


# --- floods ----------------------------------------------------------------------------------


def test_a_login_flood_from_one_address_is_throttled_and_the_api_keeps_answering(
    server: ServerProcess, admin_http: httpx.Client, user: str
):
    token = admin_http.headers["Authorization"].split()[1]
    before = peak_memory_kib(server.process.pid)  # type: ignore[union-attr]
    with Probe(server, token) as probe:
        answers = flood(server, [("127.0.0.21", user)] * 40)
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {401, 429, 503}, statuses
    # Most were refused before any password was checked.
    assert statuses.count(429) >= 30, statuses
    for r in answers:
        if r.status_code == 429:
            assert_throttled(r)
    assert not probe.failures, probe.failures
    grown_mib = (peak_memory_kib(server.process.pid) - before) / 1024  # type: ignore[union-attr]
    assert grown_mib < 600, f"the server's peak memory grew by {grown_mib:.0f} MiB"


def test_a_flood_from_many_addresses_checks_few_passwords_at_once(
    server: ServerProcess, admin_http: httpx.Client, unique_name: str
):
    token = admin_http.headers["Authorization"].split()[1]
    attempts = [(f"127.0.1.{n % 10 + 1}", f"nobody{unique_name}{n % 10}") for n in range(40)]
    before = peak_memory_kib(server.process.pid)  # type: ignore[union-attr]
    with Probe(server, token) as probe:
        answers = flood(server, attempts)
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {401, 429, 503}, statuses
    for r in answers:
        assert r.json()["error"]["code"] in ("unauthorized", "too_many_requests", "unavailable")
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1
    assert not probe.failures, probe.failures
    grown_mib = (peak_memory_kib(server.process.pid) - before) / 1024  # type: ignore[union-attr]
    assert grown_mib < 600, f"the server's peak memory grew by {grown_mib:.0f} MiB"


# --- throttling and its back-off ---------------------------------------------------------------


def test_failures_make_that_client_wait_but_not_a_client_that_has_not_failed(
    server: ServerProcess, user: str
):
    for _ in range(5):
        assert login(server, user, "wrong-guess", "127.0.0.31").status_code == 401
    retry_after = assert_throttled(login(server, user, "wrong-guess", "127.0.0.31"))
    assert retry_after <= 15
    # Even the right password waits, from that address: it may be the guess that works.
    assert_throttled(login(server, user, PASSWORD, "127.0.0.31"))
    # The user, from where they have not failed, logs in at once, whatever the case they type.
    assert login(server, user.upper(), PASSWORD, "127.0.0.32").status_code == 200


def test_failures_from_many_addresses_hold_back_a_users_login_for_a_minute_at_most(
    server: ServerProcess, user: str
):
    for n in range(30):
        assert login(server, user, "wrong-guess", f"127.0.2.{n + 1}").status_code == 401
    retry_after = assert_throttled(login(server, user, PASSWORD, "127.0.0.33"))
    assert retry_after <= 60


def test_an_unknown_user_fails_alike_a_wrong_password(
    server: ServerProcess, user: str, unique_name: str
):
    bodies = set()
    for n, name in enumerate((user, f"ghost{unique_name}")):
        with from_address(server, f"127.0.3.{n + 1}") as http:
            r = http.post("/login", json={"username": name, "password": "wrong-guess"})
        assert r.status_code == 401
        bodies.add(json.dumps(r.json()))
    assert len(bodies) == 1, bodies  # one generic error; the equal work is a unit test


# --- passwords -------------------------------------------------------------------------------


def test_changing_my_password_stops_every_token_and_answers_a_new_pair(
    server: ServerProcess, user: str
):
    first = login(server, user, PASSWORD, "127.0.0.1").json()
    second = login(server, user, PASSWORD, "127.0.0.1").json()
    assert login(server, user, PASSWORD, "127.0.0.1").headers["Cache-Control"] == "no-store"
    with from_address(server, "127.0.0.1", first["access_token"]) as http:
        wrong = http.post(
            "/v1/me/password", json={"current_password": "nope", "new_password": "x" * 12}
        )
        assert wrong.status_code == 400
        assert "current password is not right" in wrong.json()["error"]["message"]
        short = http.post(
            "/v1/me/password", json={"current_password": PASSWORD, "new_password": "short"}
        )
        assert short.status_code == 400
        assert "8 to 1024 characters" in short.json()["error"]["message"]
        changed = http.post(
            "/v1/me/password",
            json={"current_password": PASSWORD, "new_password": "a-new-password"},
        )
        assert changed.status_code == 200, changed.text
        assert changed.headers["Cache-Control"] == "no-store"
        assert http.get("/v1/me").status_code == 401  # this request's own token too
    for old in (first, second):
        with from_address(server, "127.0.0.1", old["access_token"]) as http:
            assert http.get("/v1/me").status_code == 401
            renewed = http.post("/login/refreshToken", json={"refreshToken": old["refresh_token"]})
            assert renewed.status_code == 401
    new = changed.json()
    with from_address(server, "127.0.0.1", new["access_token"]) as http:
        assert http.get("/v1/me").json()["username"] == user
        renewed = http.post("/login/refreshToken", json={"refreshToken": new["refresh_token"]})
        assert renewed.status_code == 200
        assert renewed.headers["Cache-Control"] == "no-store"
    assert login(server, user, PASSWORD, "127.0.0.34").status_code == 401
    assert login(server, user, "a-new-password", "127.0.0.34").status_code == 200


def test_guessing_the_current_password_is_throttled_without_locking_the_user_out(
    server: ServerProcess, user: str
):
    token = login(server, user, PASSWORD, "127.0.0.1").json()["access_token"]
    guess = {"current_password": "wrong-guess", "new_password": "a-new-password"}
    with from_address(server, "127.0.0.1", token) as http:
        for _ in range(5):
            assert http.post("/v1/me/password", json=guess).status_code == 400
        assert_throttled(http.post("/v1/me/password", json=guess))
    assert login(server, user, PASSWORD, "127.0.0.1").status_code == 200


def test_an_owner_resets_a_password_and_the_users_tokens_stop(
    server: ServerProcess, admin_http: httpx.Client, user: str
):
    token = login(server, user, PASSWORD, "127.0.0.1").json()["access_token"]
    with from_address(server, "127.0.0.1", token) as as_user:
        refused = as_user.put(f"/v1/users/{user}/password", json={"new_password": "x" * 10})
        assert refused.status_code == 403
        reset = admin_http.put(f"/v1/users/{user}/password", json={"new_password": "reset-pw-1"})
        assert reset.status_code == 200, reset.text
        assert as_user.get("/v1/me").status_code == 401
    assert login(server, user, "reset-pw-1", "127.0.0.1").status_code == 200
    weak = admin_http.put(f"/v1/users/{user}/password", json={"new_password": user})
    assert weak.status_code == 400 and "is not the username" in weak.json()["error"]["message"]


# --- usernames -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [" padded", "padded ", "a/b", "", "x" * 65, "tab\there"])
def test_a_username_outside_the_rules_is_a_400_that_states_them(
    admin_http: httpx.Client, name: str
):
    body = {"username": name, "password": PASSWORD, "role": "reader"}
    r = admin_http.post("/v1/users", json=body)
    assert r.status_code == 400, r.text
    assert "A username is 1 to 64 characters" in r.json()["error"]["message"]


def test_usernames_that_differ_only_in_case_cannot_both_exist(admin_http: httpx.Client, user: str):
    r = admin_http.post(
        "/v1/users", json={"username": user.upper(), "password": PASSWORD, "role": "reader"}
    )
    assert r.status_code == 409
    assert "usernames ignore case" in r.json()["error"]["message"]
    upper = admin_http.post(
        "/v1/users", json={"username": "ADMIN", "password": PASSWORD, "role": "owner"}
    )
    assert upper.status_code == 409


# --- deactivation instead of a failing delete --------------------------------------------------


def double(n: int) -> int:
    return 2 * n


def test_removing_a_user_with_work_deactivates_them_and_keeps_their_work(
    server: ServerProcess, admin_http: httpx.Client, client: Client, unique_name: str
):
    name = f"c{unique_name}"
    admin_http.post(
        "/v1/users", json={"username": name, "password": PASSWORD, "role": "contributor"}
    ).raise_for_status()
    with Client(server.url, username=name, password=PASSWORD) as theirs:
        svc = theirs.publish_service(
            f"s{unique_name}", code=double, inputs={"n": int}, outputs={"y": int}, version="v1"
        )
        batch = svc.batch({"n": [1, 2]}).start()
        batch.wait(60)
        token = theirs.token

    removed = admin_http.delete(f"/v1/users/{name}")
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"username": name, "role": "contributor", "active": False}
    with from_address(server, "127.0.0.1", token) as as_them:
        assert as_them.get("/v1/me").status_code == 401
    assert login(server, name, PASSWORD, "127.0.0.35").status_code == 401
    listed = {u["username"]: u for u in admin_http.get("/v1/users").json()}
    assert listed[name]["active"] is False
    # Their service and batch stay, readable by owners.
    kept = client.get_service(f"s{unique_name}", version="v1").get_batch(batch.execution_id)
    assert kept.results().completed_item_count == 2

    back = admin_http.put(f"/v1/users/{name}/active", json={"active": True})
    assert back.status_code == 200 and back.json()["active"] is True
    assert login(server, name, PASSWORD, "127.0.0.35").status_code == 200


def test_removing_a_user_without_work_deletes_them(admin_http: httpx.Client, user: str):
    assert admin_http.delete(f"/v1/users/{user}").status_code == 204
    assert user not in {u["username"] for u in admin_http.get("/v1/users").json()}


# --- the last owner, the admin, a generated password ---------------------------------------------


def test_the_last_owner_stays_and_a_restart_with_the_admin_password_restores_admin(
    fresh_server: ServerProcess,
):
    fresh_server.start(admin_password=None)
    log = fresh_server.log.read_text()  # type: ignore[union-attr]
    password = (fresh_server.home / "admin-password").read_text().strip()
    assert password not in log
    assert str(fresh_server.home / "admin-password") in log

    admin_token = login(fresh_server, "admin", password, "127.0.0.1").json()["access_token"]
    with from_address(fresh_server, "127.0.0.1", admin_token) as admin:
        demoted = admin.put("/v1/users/admin/role", json={"role": "reader"})
        assert demoted.status_code == 409
        assert "last active owner" in demoted.json()["error"]["message"]
        assert admin.put("/v1/users/admin/active", json={"active": False}).status_code == 409
        admin.post(
            "/v1/users", json={"username": "olga", "password": PASSWORD, "role": "owner"}
        ).raise_for_status()
        admin.put("/v1/users/admin/role", json={"role": "reader"}).raise_for_status()

    olga_token = login(fresh_server, "olga", PASSWORD, "127.0.0.1").json()["access_token"]
    with from_address(fresh_server, "127.0.0.1", olga_token) as olga:
        for refused in (
            olga.put("/v1/users/olga/role", json={"role": "contributor"}),
            olga.put("/v1/users/olga/active", json={"active": False}),
            olga.delete("/v1/users/olga"),
        ):
            assert refused.status_code == 409, refused.text
            assert "last active owner" in refused.json()["error"]["message"]
        olga.put("/v1/users/admin/active", json={"active": False}).raise_for_status()

    fresh_server.stop()
    fresh_server.start(admin_password=ADMIN_PASSWORD)
    again = login(fresh_server, "admin", ADMIN_PASSWORD, "127.0.0.1")
    assert again.status_code == 200, again.text
    with from_address(fresh_server, "127.0.0.1", again.json()["access_token"]) as admin:
        assert admin.get("/v1/me").json() == {"username": "admin", "role": "owner"}


# --- the command line ------------------------------------------------------------------------


def test_the_command_line_changes_and_resets_passwords_and_deactivates_users(
    server: ServerProcess, admin_http: httpx.Client, user: str, tmp_path: Path
):
    admin = Cli(tmp_path / "admin" / "config.json", tmp_path)
    admin("login", server.url, "-u", "admin", "-p", ADMIN_PASSWORD)
    mine = Cli(tmp_path / "mine" / "config.json", tmp_path)
    mine("login", server.url, "-u", user, "-p", PASSWORD)
    elsewhere = Cli(tmp_path / "elsewhere" / "config.json", tmp_path)
    elsewhere("login", server.url, "-u", user, "-p", PASSWORD)

    assert "8 to 1024 characters" in mine.error(
        "password", "--current-password", PASSWORD, "--new-password", "short"
    )
    changed = mine("password", "--current-password", PASSWORD, "--new-password", "cli-new-pw")
    assert "Password changed" in changed.stdout
    assert user in mine("whoami").stdout  # this login got new tokens
    assert "Not logged in" in elsewhere.error("whoami")  # the other login's tokens stopped

    admin("users", "set-password", user, "--password", "cli-reset-pw")
    assert "Not logged in" in mine.error("whoami")
    mine("login", server.url, "-u", user, "-p", "cli-reset-pw")

    assert "Deactivated" in admin("users", "deactivate", user).stdout
    assert f"{user}\treader\tno" in admin("users", "list").stdout.splitlines()
    assert "Not logged in" in mine.error("whoami")
    assert "Reactivated" in admin("users", "reactivate", user).stdout
    assert "Removed" in admin("users", "remove", user).stdout

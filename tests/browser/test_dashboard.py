"""The dashboard in a real browser: signing in, live progress, a batch's failures and
artifacts, confirmed actions, what a reader sees, and forms without their CSRF token."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import ADMIN_PASSWORD, ServerProcess

from batchserve import Client

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

READER_PASSWORD = "reader-password-1"


def slow_square(x: int) -> int:
    """Sleeps a little per record (so a batch runs long enough to be watched), fails on
    x % 7 == 3, and writes a small PNG and a text file for each record it answers."""
    import struct
    import time
    import zlib

    time.sleep(0.15)
    if x % 7 == 3:
        print(f"refusing record {x}")
        raise ValueError(f"x={x} is not allowed")

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    pixels = b"".join(b"\x00" + bytes([x * 20 % 256, 80, 160]) * 16 for _ in range(16))
    header = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels))
    with open("square.png", "wb") as f:
        f.write(png + chunk(b"IEND", b""))
    with open("notes.txt", "w") as f:
        f.write(f"record {x}")
    return x * x


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url, username="admin", password=ADMIN_PASSWORD) as c:
        yield c


@pytest.fixture(scope="module")
def service(admin: Client) -> Any:
    name = f"uisquare{secrets.token_hex(3)}"
    return admin.publish_service(
        name,
        code=slow_square,
        inputs={"x": int},
        outputs={"answer": int},
        artifacts=["square.png", "notes.txt"],
        version="v1",
        description="Squares a number, slowly.",
    )


@pytest.fixture(scope="module")
def finished(service: Any) -> Any:
    """A finished batch of ten records, two of which failed."""
    batch = service.batch([{"x": i} for i in range(10)], parallel_count=2, display_name="small")
    batch.start().wait(timeout=120)
    return batch


@pytest.fixture(scope="module")
def reader(server: ServerProcess, admin: Client) -> str:
    """A user with the reader role, added through the API."""
    username = f"reader{secrets.token_hex(3)}"
    token = httpx.post(
        f"{server.url}/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["access_token"]
    answer = httpx.post(
        f"{server.url}/v1/users",
        json={"username": username, "password": READER_PASSWORD, "role": "reader"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 201, answer.text
    return username


def running_batch(service: Any, records: int = 200) -> Any:
    """A batch that runs for a while: one record at a time, a record per chunk."""
    batch = service.batch(
        [{"x": i} for i in range(records)], parallel_count=1, chunk_size=1, display_name="slow"
    )
    return batch.start()


def sign_in(context: Any, username: str = "admin", password: str = ADMIN_PASSWORD) -> Any:
    page = context.new_page()
    page.goto("/ui/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/batches")
    return page


def test_signing_in_with_the_api_accounts(context: Any, screenshots: Path) -> None:
    page = context.new_page()
    page.goto("/ui/batches")
    page.wait_for_url(re.compile(r"/ui/login\?next="))  # no session: to the sign-in page
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Invalid username or password."

    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/batches")
    assert page.get_by_role("heading", name="Batches").is_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "batchserve_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # no script reads the session

    page.keyboard.press("Tab")  # the first stop: past the navigation, to the content
    assert page.evaluate("document.activeElement.textContent") == "Skip to the content"

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/ui/login")
    page.goto("/ui/services")
    page.wait_for_url(re.compile(r"/ui/login"))


def test_a_running_batch_moves_without_a_reload(
    context: Any, service: Any, screenshots: Path
) -> None:
    batch = running_batch(service)
    try:
        page = sign_in(context)
        page.goto(f"/ui/batches?service={service.name}")
        bar = page.locator(f'.progress[data-batch="{batch.execution_id}"] progress')
        page.evaluate("window.notReloaded = true")
        first = int(bar.get_attribute("value") or 0)
        page.wait_for_function(
            "([id, first]) => Number(document.querySelector("
            "`.progress[data-batch='${id}'] progress`).value) > first",
            arg=[batch.execution_id, first],
        )
        assert page.evaluate("window.notReloaded") is True  # the same page, updated in place
        text = page.locator(f'.progress[data-batch="{batch.execution_id}"] [data-progress-text]')
        assert re.search(r"\d+ / 200 done", text.inner_text())
        row = page.locator(f'tr[data-batch-row="{batch.execution_id}"]')
        assert row.locator("[data-state]").inner_text() in ("pending", "running")
        page.screenshot(path=screenshots / "batches.png", full_page=True)
    finally:
        batch.cancel()


def test_a_batch_page_shows_failed_records_and_image_artifacts(
    context: Any, finished: Any, screenshots: Path
) -> None:
    page = sign_in(context)
    page.goto(f"/ui/batches/{finished.execution_id}")
    assert "completed" in page.locator("#summary [data-state]").inner_text()
    failed = page.locator('[data-failed-record="3"]')
    assert "x=3 is not allowed" in failed.inner_text()
    assert "refusing record 3" in failed.inner_text()  # its console output
    image = page.locator('tr[data-record="2"] img[alt^="square.png"]')
    image.scroll_into_view_if_needed()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth === 16", arg=image.element_handle()
    )
    download = page.locator('tr[data-record="2"] a[download]', has_text="notes.txt")
    assert download.count() == 1
    page.screenshot(path=screenshots / "batch.png", full_page=True)

    exports = {
        fmt: context.request.get(f"/ui/batches/{finished.execution_id}/export?format={fmt}")
        for fmt in ("csv", "jsonl", "parquet")
    }
    assert exports["csv"].text().startswith('"index","status","answer"')
    assert len(exports["jsonl"].text().splitlines()) == 10
    assert exports["parquet"].body().startswith(b"PAR1")

    # The results sort by a column header (a link), the whole batch.
    page.get_by_role("link", name=re.compile("^answer")).click()
    page.wait_for_url(re.compile("sort=output"))
    page.get_by_role("link", name=re.compile("^answer")).click()
    page.wait_for_url(re.compile("desc=1"))
    assert page.locator("tr[data-record]").first.get_attribute("data-record") == "9"


def test_cancelling_asks_for_confirmation(context: Any, service: Any) -> None:
    batch = running_batch(service)
    page = sign_in(context)
    page.goto(f"/ui/batches/{batch.execution_id}")
    page.get_by_role("link", name="Cancel…").click()
    assert page.get_by_role("heading", name=re.compile("^Cancel batch")).is_visible()
    assert batch.refresh().state.value in ("pending", "running")  # nothing happened yet
    page.get_by_role("button", name="Yes, cancel").click()
    page.wait_for_url(re.compile(r"done=cancel"))
    assert "being cancelled" in page.get_by_role("status").first.inner_text()
    assert page.locator("#summary [data-state]").inner_text() in ("cancelling", "cancelled")
    assert batch.wait(timeout=60).state.value == "cancelled"


def test_a_reader_sees_neither_others_batches_nor_their_buttons(
    context: Any, service: Any, reader: str, server: ServerProcess
) -> None:
    batch = running_batch(service)
    try:
        page = sign_in(context, reader, READER_PASSWORD)
        assert page.get_by_role("link", name="Users").count() == 0
        assert page.get_by_role("link", name="Nodes").count() == 0
        assert page.locator(f'[data-batch-row="{batch.execution_id}"]').count() == 0
        page.goto(f"/ui/batches/{batch.execution_id}")
        assert page.get_by_role("heading", name="Not found").is_visible()
        assert page.get_by_role("link", name="Cancel…").count() == 0
        page.goto("/ui/users")
        assert page.get_by_role("heading", name="Not allowed").is_visible()

        # Nor does the server do it when asked anyway (with the reader's own CSRF token).
        csrf = page.locator('input[name="csrf_token"]').first.get_attribute("value")
        answer = context.request.post(
            f"/ui/batches/{batch.execution_id}/cancel", form={"csrf_token": csrf or ""}
        )
        assert answer.status == 404
        assert batch.refresh().state.value in ("pending", "running")
    finally:
        batch.cancel()


def test_a_form_without_its_csrf_token_is_refused(context: Any, service: Any) -> None:
    batch = running_batch(service)
    try:
        sign_in(context)
        answer = context.request.post(f"/ui/batches/{batch.execution_id}/cancel", form={})
        assert answer.status == 403
        assert "security token" in answer.text()
        forged = context.request.post(
            f"/ui/batches/{batch.execution_id}/cancel", form={"csrf_token": "0" * 64}
        )
        assert forged.status == 403
        assert batch.refresh().state.value in ("pending", "running")
    finally:
        batch.cancel()


def test_services_nodes_and_users_pages(
    context: Any, service: Any, finished: Any, screenshots: Path
) -> None:
    page = sign_in(context)
    # Whatever the page's policy blocked (an inline style, a script from elsewhere) or failed
    # to load would be an error here.
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto("/ui/services")
    page.get_by_role("link", name=service.name).click()
    assert page.get_by_role("heading", name=re.compile(service.name)).is_visible()
    page.get_by_label("x").fill("4")
    page.get_by_role("button", name="Run").click()
    result = page.locator(".result")
    assert "succeeded" in result.inner_text() and "16" in result.inner_text()
    page.screenshot(path=screenshots / "services.png", full_page=True)

    page.get_by_role("link", name="Nodes").click()
    assert page.locator("table").first.get_by_text("(this one)").is_visible()
    page.screenshot(path=screenshots / "nodes.png", full_page=True)

    page.get_by_role("link", name="Users").click()
    username = f"added{secrets.token_hex(3)}"
    page.get_by_label("Username").fill(username)
    page.locator("#new-password").fill("a-long-password")
    page.get_by_role("button", name="Add user").click()
    assert f"{username} was added." in page.get_by_role("status").inner_text()
    assert page.locator(f'tr[data-user="{username}"]').count() == 1
    page.screenshot(path=screenshots / "users.png", full_page=True)

    # Changes that take access away are asked about first.
    row = page.locator(f'tr[data-user="{username}"]')
    row.get_by_label(f"Role of {username}").select_option("contributor")
    row.get_by_role("button", name="Change role…").click()
    assert page.get_by_role("heading", name=f"Change the role of {username}?").is_visible()
    page.get_by_role("button", name="Yes, change the role").click()
    assert f"The role of {username} was changed." in page.get_by_role("status").inner_text()
    assert row.get_by_label(f"Role of {username}").input_value() == "contributor"
    row.get_by_role("button", name="Deactivate…").click()
    page.get_by_role("link", name="No, go back").click()
    assert row.get_by_role("button", name="Deactivate…").is_visible()  # nothing happened
    row.get_by_role("button", name="Deactivate…").click()
    page.get_by_role("button", name="Yes, deactivate").click()
    assert f"{username} was deactivated" in page.get_by_role("status").inner_text()
    assert row.get_by_role("button", name="Reactivate").is_visible()
    assert errors == []


def test_the_listing_filters_by_state_service_and_metadata(
    context: Any, service: Any, finished: Any
) -> None:
    page = sign_in(context)
    page.get_by_label("State").select_option("completed")
    page.get_by_label("Service").fill(f"{service.name}/v1")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile("state=completed"))
    row = page.locator(f'tr[data-batch-row="{finished.execution_id}"]')
    assert row.get_by_role("link", name="small").is_visible()
    assert "completed" in row.locator("[data-state]").inner_text()

    page.get_by_label("Metadata").fill("team:nobody")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile("metadata=team"))
    assert "No batch matches these filters." in page.locator("#listing").inner_text()
    page.get_by_label("Metadata").fill("not a pair")
    page.get_by_role("button", name="Filter").click()
    assert page.get_by_role("alert").inner_text().startswith("The metadata filter")


def test_pausing_resuming_and_new_settings_each_ask_first(context: Any, service: Any) -> None:
    batch = running_batch(service)
    try:
        page = sign_in(context)
        page.goto(f"/ui/batches/{batch.execution_id}")
        page.get_by_label("Priority").fill("-5")
        page.get_by_label("Parallel count").fill("2")
        page.get_by_role("button", name="Change settings…").click()
        assert "Priority: 0 → -5" in page.locator("main").inner_text()
        page.get_by_role("button", name="Yes, change settings").click()
        page.wait_for_url(re.compile("done=update"))
        assert (batch.info().priority, batch.refresh().parallel_count) == (-5, 2)

        page.get_by_role("link", name="Pause…").click()
        page.get_by_label("Its running chunks").select_option("requeue")
        page.get_by_role("button", name="Yes, pause").click()
        page.wait_for_url(re.compile("done=disable"))
        for _ in range(50):  # pausing, then paused once its running chunk is put back
            if batch.refresh().state.value == "paused":
                break
            page.wait_for_timeout(100)
        page.reload()
        page.get_by_role("link", name="Resume…").click()
        page.get_by_role("button", name="Yes, resume").click()
        page.wait_for_url(re.compile("done=enable"))
        assert batch.refresh().state.value in ("enabling", "pending", "running")
    finally:
        batch.cancel()

"""The ``batchserve`` command line against a real server: logins and the token file, users,
publishing, services, calls, and the errors a user can cause.

Batches (``run``, ``batch ...``) and the live progress are in ``test_cli_batches.py``.
"""

from __future__ import annotations

import json
import os
import stat
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .cli_helpers import Cli, Terminal, cli_env
from .conftest import ADMIN_PASSWORD, ServerProcess, free_port

pytestmark = pytest.mark.e2e

MODEL = textwrap.dedent(
    """
    import pathlib

    SCALE = 2.0
    READY = []


    def setup():
        READY.append(True)


    def predict(hp: float, wt: float) -> float:
        if hp < 0:
            raise ValueError("hp must not be negative")
        pathlib.Path("note.txt").write_text(f"hp={hp}")
        print("predicting", hp)
        return hp * SCALE + wt + len(READY)


    def label(name: str, loud: bool, times: int) -> str:
        return (name.upper() if loud else name) * times
    """
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli")
    (path / "model.py").write_text(MODEL)
    return path


@pytest.fixture(scope="module")
def admin(server: ServerProcess, workdir: Path) -> Cli:
    """The command line, logged in as the admin once for the module (its own config file)."""
    cli = Cli(workdir / "admin" / "config.json", workdir)
    cli("login", server.url, "--username", "admin", "--password", ADMIN_PASSWORD)
    return cli


@pytest.fixture
def fresh(tmp_path: Path, workdir: Path) -> Cli:
    """The command line with a configuration file of its own, not logged in."""
    return Cli(tmp_path / "conf" / "config.json", workdir)


@pytest.fixture(scope="module")
def service(admin: Cli) -> str:
    """A published service ``NAME:v1`` (predict: hp, wt -> answer, artifact note.txt)."""
    name = "clipredict"
    admin(
        "publish", "model.py:predict", "--name", name, "--version", "v1",
        "--output", "answer=float", "--artifact", "note.txt", "--init", "setup",
    )  # fmt: skip
    return f"{name}:v1"


# -- login, logout, whoami, the token file ----------------------------------------------------


def test_login_keeps_the_token_in_a_file_only_its_owner_can_read(
    fresh: Cli, server: ServerProcess
) -> None:
    result = fresh("login", server.url, "-u", "admin", "-p", ADMIN_PASSWORD)
    assert f"Logged in to {server.url} as admin (owner)" in result.stdout
    assert stat.S_IMODE(fresh.config.stat().st_mode) == 0o600
    assert stat.S_IMODE(fresh.config.parent.stat().st_mode) == 0o700
    stored = json.loads(fresh.config.read_text())
    assert stored["default"] == server.url
    token = stored["servers"][server.url]["access_token"]
    me = httpx.get(f"{server.url}/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json() == {"username": "admin", "role": "owner"}


def test_logging_in_again_revokes_the_previous_token(fresh: Cli, server: ServerProcess) -> None:
    fresh("login", server.url, "-u", "admin", "-p", ADMIN_PASSWORD)
    first = json.loads(fresh.config.read_text())["servers"][server.url]["access_token"]
    fresh("login", server.url, "-u", "admin", "-p", ADMIN_PASSWORD)
    second = json.loads(fresh.config.read_text())["servers"][server.url]["access_token"]
    assert first != second
    old = httpx.get(f"{server.url}/v1/me", headers={"Authorization": f"Bearer {first}"})
    assert old.status_code == 401
    assert "admin" in fresh("whoami").stdout


def test_whoami_names_the_user_role_and_server(admin: Cli, server: ServerProcess) -> None:
    assert admin("whoami").stdout.splitlines() == [
        "username\tadmin",
        "role\towner",
        f"url\t{server.url}",
    ]
    assert json.loads(admin("whoami", "--json").stdout) == {
        "url": server.url,
        "username": "admin",
        "role": "owner",
    }


def test_login_asks_for_the_username_and_a_hidden_password_on_a_terminal(
    fresh: Cli, server: ServerProcess, workdir: Path
) -> None:
    term = Terminal(["login", server.url], fresh.env(), workdir)
    try:
        term.expect("Username:")
        term.send("admin\n")
        term.expect("Password:")
        term.wait_echo_off()
        term.send(ADMIN_PASSWORD + "\n")
        term.expect("Logged in to .* as admin")
        assert term.finish() == 0
    finally:
        term.close()
    assert ADMIN_PASSWORD not in term.text  # not echoed
    assert stat.S_IMODE(fresh.config.stat().st_mode) == 0o600


def test_logout_revokes_the_token_and_forgets_it(fresh: Cli, server: ServerProcess) -> None:
    fresh("login", server.url, "-u", "admin", "-p", ADMIN_PASSWORD)
    token = json.loads(fresh.config.read_text())["servers"][server.url]["access_token"]
    assert fresh("logout").stdout.strip() == f"Logged out of {server.url}."
    me = httpx.get(f"{server.url}/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 401
    assert json.loads(fresh.config.read_text())["servers"] == {}
    assert stat.S_IMODE(fresh.config.stat().st_mode) == 0o600
    assert "Not logged in" in fresh.error("whoami")


def test_logout_forgets_the_token_when_the_server_is_unreachable(
    fresh: Cli, server: ServerProcess
) -> None:
    fresh("login", server.url, "-u", "admin", "-p", ADMIN_PASSWORD)
    config = json.loads(fresh.config.read_text())
    gone = f"http://127.0.0.1:{free_port()}"
    config["servers"] = {gone: config["servers"][server.url]}
    config["default"] = gone
    fresh.config.write_text(json.dumps(config))
    result = fresh("logout")
    assert "did not revoke" in result.stderr
    assert json.loads(fresh.config.read_text())["servers"] == {}


def test_an_expired_access_token_is_renewed_and_saved(fresh: Cli, server: ServerProcess) -> None:
    fresh("login", server.url, "-u", "admin", "-p", ADMIN_PASSWORD)
    config = json.loads(fresh.config.read_text())
    old = config["servers"][server.url]
    config["servers"][server.url] = {**old, "expires_on": 0}
    fresh.config.write_text(json.dumps(config))
    assert "admin" in fresh("whoami").stdout
    new = json.loads(fresh.config.read_text())["servers"][server.url]
    assert new["access_token"] != old["access_token"]
    assert new["refresh_token"] != old["refresh_token"]
    assert new["expires_on"] > 0
    assert stat.S_IMODE(fresh.config.stat().st_mode) == 0o600


def test_batchserve_url_and_token_override_the_stored_login(
    fresh: Cli,
    server: ServerProcess,
    client,  # type: ignore[no-untyped-def]
) -> None:
    env = {"BATCHSERVE_URL": server.url, "BATCHSERVE_TOKEN": client.token}
    assert "admin" in fresh("whoami", env=env).stdout
    assert not fresh.config.exists()  # nothing written


# -- users --------------------------------------------------------------------------------------


def test_owners_add_list_change_and_remove_users(
    admin: Cli, fresh: Cli, server: ServerProcess, unique_name: str
) -> None:
    user = unique_name.lower()
    added = admin("users", "add", user, "--role", "reader", "--password", "pw-12345", "--json")
    assert json.loads(added.stdout) == {"username": user, "role": "reader", "active": True}
    listed = [json.loads(line) for line in admin("users", "list", "--json").stdout.splitlines()]
    assert {"username": user, "role": "reader", "active": True} in listed
    assert f"{user}\treader\tyes" in admin("users", "list").stdout.splitlines()

    # The new reader logs in with their own file; they may not manage users or publish.
    fresh("login", server.url, "-u", user, "-p", "pw-12345")
    assert "reader" in fresh("whoami").stdout
    assert "Only owners manage users" in fresh.error("users", "list")
    refused = fresh.error(
        "publish", "model.py:predict", "--name", f"{user}svc", "--output", "answer=float"
    )
    assert f"User {user!r} has the role 'reader'" in refused

    assert admin("users", "set-role", user, "contributor").stdout.strip() == (
        f"{user} is now contributor."
    )
    assert "contributor" in fresh("whoami").stdout
    admin("users", "remove", user)
    assert user not in admin("users", "list").stdout
    assert "No user named" in admin.error("users", "remove", user)
    assert "Unknown role" in admin.error("users", "set-role", "admin", "emperor")


# -- services and calls -------------------------------------------------------------------------


def test_publish_reads_the_function_inputs_from_its_annotations(
    admin: Cli, unique_name: str
) -> None:
    result = admin(
        "publish", "model.py:predict", "--name", unique_name, "--version", "v2",
        "--output", "answer=float", "--json",
    )  # fmt: skip
    info = json.loads(result.stdout)
    assert (info["name"], info["version"]) == (unique_name, "v2")
    assert info["inputs"] == {"hp": "float", "wt": "float"}
    assert info["outputs"] == {"answer": "float"}
    assert info["alias"] == "predict"


def test_publish_with_declared_inputs_and_a_vectorized_function(
    admin: Cli, unique_name: str, workdir: Path
) -> None:
    (workdir / "vector.py").write_text(
        "def double(df):\n    return {'twice': (df['x'] * 2).tolist()}\n"
    )
    result = admin(
        "publish", "vector.py:double", "--name", unique_name, "--input", "x=int",
        "--output", "twice=int", "--vectorized",
    )  # fmt: skip
    assert f"Published {unique_name}:" in result.stdout
    shown = json.loads(admin("services", "show", unique_name, "--json").stdout)
    assert shown["mode"] == "vectorized"
    assert admin("consume", unique_name, "x=21").stdout.strip() == "twice\t42"


def test_services_list_show_and_delete(admin: Cli, unique_name: str) -> None:
    for version in ("v1", "v2"):
        admin(
            "publish", "model.py:label", "--name", unique_name, "--version", version,
            "--output", "text=str",
        )  # fmt: skip
    lines = admin("services", "list", unique_name).stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["name", "version", "mode"]
    assert [line.split("\t")[:2] for line in lines[1:]] == [
        [unique_name, "v1"],
        [unique_name, "v2"],
    ]
    newest = dict(
        line.split("\t", 1) for line in admin("services", "show", unique_name).stdout.splitlines()
    )
    assert newest["version"] == "v2"
    assert newest["call"] == "label(name: str, loud: bool, times: int) -> text: str"

    assert admin("services", "delete", f"{unique_name}:v2").stdout.strip() == (
        f"Deleted {unique_name}:v2."
    )
    remaining = [
        json.loads(x) for x in admin("services", "list", unique_name, "--json").stdout.splitlines()
    ]
    assert [s["version"] for s in remaining] == ["v1"]
    assert "Say which version" in admin.error("services", "delete", unique_name)
    assert "v9" in admin.error("services", "show", f"{unique_name}:v9")


def test_consume_converts_inputs_to_the_declared_types(admin: Cli, unique_name: str) -> None:
    admin(
        "publish", "model.py:label", "--name", unique_name, "--output", "text=str",
    )  # fmt: skip
    result = admin("consume", unique_name, "name=ab", "loud=yes", "times=3")
    assert result.stdout.strip() == "text\tABABAB"
    raw = json.loads(
        admin("consume", unique_name, "name=x", "loud=false", "times=2", "--json").stdout
    )
    assert raw["outputs"] == {"text": "xx"}
    assert raw["status"] == "succeeded"


def test_consume_prints_outputs_and_saves_artifacts(
    admin: Cli, service: str, tmp_path: Path
) -> None:
    result = admin("consume", service, "hp=120", "wt=2.5", "--download", str(tmp_path / "files"))
    lines = result.stdout.splitlines()
    assert lines[0] == "answer\t243.5"
    assert "predicting 120.0" in result.stdout
    assert (tmp_path / "files" / "note.txt").read_text() == "hp=120.0"


def test_consume_errors_are_one_clear_line(admin: Cli, service: str) -> None:
    assert "hp must not be negative" in admin.error("consume", service, "hp=-1", "wt=1")
    assert "'abc' is not a valid float" in admin.error("consume", service, "hp=abc", "wt=1")
    missing = admin.error("consume", service, "hp=1")
    assert "missing input(s) wt" in missing
    unknown = admin.error("consume", service, "hp=1", "wt=2", "speed=3")
    assert "unknown input(s) speed" in unknown
    assert "INPUT=VALUE" in admin.error("consume", service, "hp")
    assert "No service" in admin.error("consume", "no-such-service", "hp=1")


def test_publish_errors_name_the_problem(admin: Cli, workdir: Path) -> None:
    assert "no Python file" in admin.error(
        "publish", "missing.py:f", "--name", "x", "--output", "y=int"
    )
    wrong = admin.error("publish", "model.py:nope", "--name", "x", "--output", "y=int")
    assert "has no function 'nope'" in wrong
    assert "predict" in wrong  # the functions it does have
    assert "FILE.py:FUNCTION" in admin.error(
        "publish", "model.py", "--name", "x", "--output", "y=int"
    )
    assert "NAME=TYPE" in admin.error(
        "publish", "model.py:predict", "--name", "x", "--output", "answer=decimal"
    )
    assert "--output" in admin.error("publish", "model.py:predict", "--name", "x")
    (workdir / "broken.py").write_text("x = 1\nraise RuntimeError('no model file')\n")
    broken = admin.error("publish", "broken.py:f", "--name", "x", "--output", "y=int")
    assert "line 2" in broken and "RuntimeError: no model file" in broken


def test_publishing_an_existing_version_again_is_refused(admin: Cli, service: str) -> None:
    name, version = service.split(":")
    message = admin.error(
        "publish", "model.py:predict", "--name", name, "--version", version,
        "--output", "answer=float",
    )  # fmt: skip
    assert "exists" in message


# -- errors: no login, unreachable server, bad token, unknown batch -----------------------------


def test_a_command_before_login_says_to_log_in(fresh: Cli) -> None:
    assert fresh.error("whoami") == (
        "error: Not logged in: run `batchserve login URL` (or set BATCHSERVE_URL and "
        "BATCHSERVE_TOKEN)."
    )


def test_an_unreachable_server_is_one_clear_line(fresh: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    message = fresh.error("services", "list", env={"BATCHSERVE_URL": url, "BATCHSERVE_TOKEN": "x"})
    assert message.startswith(f"error: Cannot reach the batchserve server at {url}")
    login = fresh.error("login", url, "-u", "admin", "-p", "pw")
    assert login.startswith(f"error: Cannot reach the batchserve server at {url}")
    assert not fresh.config.exists()


def test_a_bad_stored_token_says_to_log_in_again(fresh: Cli, server: ServerProcess) -> None:
    fresh("login", server.url, "-u", "admin", "-p", ADMIN_PASSWORD)
    config = json.loads(fresh.config.read_text())
    config["servers"][server.url].update(access_token="bogus", refresh_token="bogus")
    fresh.config.write_text(json.dumps(config))
    message = fresh.error("batch", "list")
    assert message == (
        f"error: Not logged in to {server.url}, or the login has expired: run "
        f"`batchserve login {server.url}`."
    )


def test_a_bad_token_in_the_environment_is_named(fresh: Cli, server: ServerProcess) -> None:
    env = {"BATCHSERVE_URL": server.url, "BATCHSERVE_TOKEN": "bogus"}
    assert "BATCHSERVE_TOKEN was refused" in fresh.error("whoami", env=env)


def test_wrong_credentials_are_refused_in_one_line(fresh: Cli, server: ServerProcess) -> None:
    message = fresh.error("login", server.url, "-u", "admin", "-p", "wrong")
    assert "Invalid username or password" in message
    assert not fresh.config.exists()


def test_an_unknown_batch_is_one_clear_line(admin: Cli) -> None:
    for command in ("show", "wait", "cancel", "results", "delete"):
        assert "No batch 'f00d'" in admin.error("batch", command, "f00d")
    assert "No batch 'f00d'" in admin.error("batch", "artifacts", "f00d", "0")


def test_a_damaged_config_file_says_what_to_do(fresh: Cli) -> None:
    fresh.config.parent.mkdir(parents=True)
    fresh.config.write_text("{not json")
    assert "is not valid; remove it" in fresh.error("whoami")


@pytest.fixture
def no_home_config(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment whose default configuration file is under a new XDG_CONFIG_HOME."""
    env = cli_env(tmp_path / "unused.json")
    del env["BATCHSERVE_CONFIG"]
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    yield env


def test_the_default_config_file_is_under_the_config_home(
    no_home_config: dict[str, str], server: ServerProcess, tmp_path: Path
) -> None:
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "batchserve", "login", server.url, "-u", "admin",
         "-p", ADMIN_PASSWORD],
        env=no_home_config, check=True, capture_output=True,
    )  # fmt: skip
    path = tmp_path / "xdg" / "batchserve" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.access(path, os.R_OK)

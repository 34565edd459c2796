"""``login``, ``logout``, ``whoami`` and, for owners, ``users add|list|remove|set-role``."""

from __future__ import annotations

import contextlib
import os
from typing import Annotated

import typer

from batchserve.cli.config import TOKEN_ENV, Login, load, normalise_url, save
from batchserve.cli.connection import CliError, chosen_url, connected
from batchserve.cli.output import JsonOption, Output, warn
from batchserve.client import Client, _ops
from batchserve.client._wire import Op, Request, call, q
from batchserve.errors import APIError, AuthenticationError, BatchserveError

ROLES = ("owner", "contributor", "reader")

users_app = typer.Typer(
    name="users", no_args_is_help=True, help="Manage users (owners only).", add_completion=False
)


def login(
    url: Annotated[str, typer.Argument(help="The server, like http://127.0.0.1:8000.")],
    username: Annotated[
        str | None, typer.Option("--username", "-u", help="Asked for when left out.")
    ] = None,
    password: Annotated[
        str | None,
        typer.Option("--password", "-p", help="Asked for (not echoed) when left out."),
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """Log in to a server and keep its token (the server becomes the default one)."""
    url = normalise_url(url)
    if username is None:
        username = typer.prompt("Username")
    if password is None:
        password = typer.prompt("Password", hide_input=True)
    with Client(url) as client:
        try:
            tokens = client._runner.run(_ops.login(username, password))
        except AuthenticationError as exc:
            raise CliError(f"Login to {url} refused: {exc.message}") from None
        client._session.access_token = tokens["access_token"]
        me = client.whoami()
        config = load()
        previous = config.servers.get(url)
        if previous is not None and previous.refresh_token:
            # Logging in again replaces the stored pair: the old one should not stay usable.
            with contextlib.suppress(BatchserveError):
                client._runner.run(_revoke(previous.refresh_token))
    config.servers[url] = Login(
        username=me.get("username", username),
        access_token=tokens["access_token"],
        refresh_token=tokens.get("refresh_token"),
        expires_on=tokens.get("expires_on"),
    )
    config.default = url
    path = save(config)
    out = Output(json_mode)
    if out.json:
        out.emit({"url": url, **me, "config": str(path)})
    else:
        out.say(f"Logged in to {url} as {me.get('username')} ({me.get('role')}).")
        out.say(f"The token is kept in {path}.")


def logout(
    url: Annotated[
        str | None, typer.Argument(help="The server to log out of (default: the default one).")
    ] = None,
) -> None:
    """Revoke the stored token on the server (when it can be reached) and forget it."""
    config = load()
    url = normalise_url(url) if url else chosen_url(config)
    login = config.servers.get(url) if url else None
    if url is None or login is None:
        raise CliError(f"Not logged in{f' to {url}' if url else ''}: nothing to log out of.")
    if login.refresh_token:
        try:
            with Client(url) as client:
                # Revoking the refresh token revokes its pair: the access token stops working too.
                client._runner.run(_revoke(login.refresh_token))
        except BatchserveError as exc:
            # An unreachable server, or a token it no longer knows: forgetting it is what matters.
            warn(f"The server did not revoke the token ({_short(exc)}); it is forgotten here.")
    del config.servers[url]
    if config.default == url:
        config.default = next(iter(config.servers), None)
    save(config)
    out = Output()
    out.say(f"Logged out of {url}.")
    if os.environ.get(TOKEN_ENV):
        warn(f"{TOKEN_ENV} is still set: commands keep using that token.")


def _revoke(refresh_token: str) -> Op[None]:
    yield from call(
        Request("DELETE", "/login/refreshToken", params={"refreshToken": refresh_token}, auth=False)
    )


def _short(exc: BatchserveError) -> str:
    return exc.message if isinstance(exc, APIError) else type(exc).__name__


def whoami(json_mode: JsonOption = False) -> None:
    """Show the logged-in user, their role and the server."""
    with connected() as conn:
        me = conn.client.whoami()
    out = Output(json_mode)
    if out.json:
        out.emit({"url": conn.url, **me})
    elif out.rich:
        out.say(f"{me['username']} ({me['role']}) at {conn.url}")
    else:
        out.fields({"username": me["username"], "role": me["role"], "url": conn.url})


def _role(role: str) -> str:
    if role not in ROLES:
        raise CliError(f"Unknown role {role!r}: use one of {', '.join(ROLES)}.")
    return role


@users_app.command("list")
def users_list(json_mode: JsonOption = False) -> None:
    """List the users and their roles."""
    with connected() as conn:
        users = conn.request("GET", "/v1/users")
    out = Output(json_mode)
    if out.json:
        out.emit_lines(users)
    else:
        out.table(["username", "role"], [[u["username"], u["role"]] for u in users])


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="The new user's name.")],
    role: Annotated[str, typer.Option("--role", "-r", help="owner, contributor or reader.")] = (
        "reader"
    ),
    password: Annotated[
        str | None, typer.Option("--password", "-p", help="Asked for twice when left out.")
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """Add a user."""
    _role(role)
    if password is None:
        password = typer.prompt(
            f"Password for {username}", hide_input=True, confirmation_prompt=True
        )
    with connected() as conn:
        user = conn.request(
            "POST", "/v1/users", json={"username": username, "password": password, "role": role}
        )
    out = Output(json_mode)
    if out.json:
        out.emit(user)
    else:
        out.say(f"Added {user['username']} ({user['role']}).")


@users_app.command("remove")
def users_remove(username: Annotated[str, typer.Argument(help="The user to remove.")]) -> None:
    """Remove a user."""
    with connected() as conn:
        conn.request("DELETE", f"/v1/users/{q(username)}")
    Output().say(f"Removed {username}.")


@users_app.command("set-role")
def users_set_role(
    username: Annotated[str, typer.Argument(help="The user.")],
    role: Annotated[str, typer.Argument(help="owner, contributor or reader.")],
    json_mode: JsonOption = False,
) -> None:
    """Change a user's role."""
    _role(role)
    with connected() as conn:
        user = conn.request(
            "PUT", f"/v1/users/{q(username)}/role", json={"username": username, "role": role}
        )
    out = Output(json_mode)
    if out.json:
        out.emit(user)
    else:
        out.say(f"{user['username']} is now {user['role']}.")

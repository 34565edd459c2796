"""``login``, ``logout``, ``whoami``, ``password`` and, for owners,
``users add|list|remove|set-role|set-password|deactivate|reactivate``."""

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


def password(
    current: Annotated[
        str | None,
        typer.Option("--current-password", help="Asked for (not echoed) when left out."),
    ] = None,
    new: Annotated[
        str | None,
        typer.Option("--new-password", help="Asked for twice (not echoed) when left out."),
    ] = None,
) -> None:
    """Change your own password. Every token of yours stops working; this login gets new ones."""
    if current is None:
        current = typer.prompt("Current password", hide_input=True)
    if new is None:
        new = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    with connected() as conn:
        tokens = conn.request(
            "POST", "/v1/me/password", json={"current_password": current, "new_password": new}
        )
        session = conn.client._session
        session.access_token = tokens["access_token"]
        session.refresh_token = tokens["refresh_token"]
        if conn.login is not None:
            conn.login.expires_on = tokens.get("expires_on")
    out = Output()
    out.say("Password changed; every other login of yours has to log in again.")
    if conn.login is None:
        warn(f"The token in {TOKEN_ENV} no longer works: log in again.")


@users_app.command("list")
def users_list(json_mode: JsonOption = False) -> None:
    """List the users, their roles and whether they are active."""
    with connected() as conn:
        users = conn.request("GET", "/v1/users")
    out = Output(json_mode)
    if out.json:
        out.emit_lines(users)
    else:
        out.table(
            ["username", "role", "active"],
            [[u["username"], u["role"], "yes" if u.get("active", True) else "no"] for u in users],
        )


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="The new user's name.")],
    role: Annotated[str, typer.Option("--role", "-r", help="owner, contributor or reader.")] = (
        "reader"
    ),
    password: Annotated[
        str | None,
        typer.Option(
            "--password", "-p", help="At least 8 characters; asked for twice when left out."
        ),
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """Add a user (usernames: letters, digits, '.', '_', '-', '@'; case is ignored)."""
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
    """Remove a user; one who has published or run anything is deactivated instead."""
    with connected() as conn:
        kept = conn.request("DELETE", f"/v1/users/{q(username)}")
    if kept is None:
        Output().say(f"Removed {username}.")
    else:
        name = kept["username"]
        Output().say(
            f"{name} has published services or run batches, so the account is deactivated "
            f"rather than removed: its work stays (`batchserve users reactivate {name}` "
            "undoes it)."
        )


@users_app.command("set-password")
def users_set_password(
    username: Annotated[str, typer.Argument(help="The user.")],
    password: Annotated[
        str | None,
        typer.Option("--password", "-p", help="Asked for twice (not echoed) when left out."),
    ] = None,
) -> None:
    """Set another user's password (for one who forgot theirs); their tokens stop working."""
    if password is None:
        password = typer.prompt(
            f"New password for {username}", hide_input=True, confirmation_prompt=True
        )
    with connected() as conn:
        user = conn.request(
            "PUT", f"/v1/users/{q(username)}/password", json={"new_password": password}
        )
    Output().say(f"Set the password of {user['username']}; their tokens no longer work.")


@users_app.command("deactivate")
def users_deactivate(username: Annotated[str, typer.Argument(help="The user.")]) -> None:
    """Deactivate a user: they cannot log in and their tokens stop; their work stays."""
    with connected() as conn:
        user = conn.request("PUT", f"/v1/users/{q(username)}/active", json={"active": False})
    Output().say(f"Deactivated {user['username']}.")


@users_app.command("reactivate")
def users_reactivate(username: Annotated[str, typer.Argument(help="The user.")]) -> None:
    """Reactivate a deactivated user: they can log in again."""
    with connected() as conn:
        user = conn.request("PUT", f"/v1/users/{q(username)}/active", json={"active": True})
    Output().say(f"Reactivated {user['username']} ({user['role']}).")


@users_app.command("set-role")
def users_set_role(
    username: Annotated[str, typer.Argument(help="The user.")],
    role: Annotated[str, typer.Argument(help="owner, contributor or reader.")],
    json_mode: JsonOption = False,
) -> None:
    """Change a user's role."""
    _role(role)
    with connected() as conn:
        user = conn.request("PUT", f"/v1/users/{q(username)}/role", json={"role": role})
    out = Output(json_mode)
    if out.json:
        out.emit(user)
    else:
        out.say(f"{user['username']} is now {user['role']}.")

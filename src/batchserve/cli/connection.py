"""The logged-in connection every command but ``serve`` and ``login`` works through.

It is the SDK's :class:`~batchserve.Client` made from the stored login (or ``BATCHSERVE_URL`` and
``BATCHSERVE_TOKEN``), plus the two things the command line adds: the access token is renewed with
the stored refresh token when it has expired, and renewed tokens are written back to the
configuration file when the command ends. Routes the SDK has no method for (users, nodes, revoking
a token) are sent through the same client, so they get the same authorisation, token renewal and
errors.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from batchserve.cli.config import TOKEN_ENV, URL_ENV, Config, Login, load, normalise_url, save
from batchserve.client import Client
from batchserve.client._wire import Op, Request, call
from batchserve.errors import AuthenticationError

T = TypeVar("T")

#: Renew the access token this many seconds before it expires, so it does not expire mid-command.
RENEW_MARGIN = 60


class CliError(Exception):
    """A user error the command line reports as one line on stderr, with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class NotLoggedIn(CliError):
    """No usable login for the server: the message says how to log in."""


@dataclass
class Connection:
    """A client on the chosen server, and the stored login it was made from (None when the token
    came from ``BATCHSERVE_TOKEN``)."""

    url: str
    client: Client
    login: Login | None

    def run(self, op: Op[T]) -> T:
        """Carry out one SDK operation (see ``client/_ops.py``)."""
        return self.client._runner.run(op)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        auth: bool = True,
    ) -> Any:
        """Send one REST request through the client; returns the decoded JSON body (None for an
        empty one). Error statuses raise the SDK's errors."""
        response = self.run(call(Request(method, path, params=params, json=json, auth=auth)))
        return response.json() if response.content else None

    def save_tokens(self) -> None:
        """Write tokens the client renewed back to the configuration file."""
        if self.login is None:
            return
        session = self.client._session
        if (session.access_token, session.refresh_token) == (
            self.login.access_token,
            self.login.refresh_token,
        ):
            return
        self.login.access_token = session.access_token
        self.login.refresh_token = session.refresh_token
        self.login.expires_on = None  # renewed by the SDK after a 401: the expiry is not known
        _store_login(self.url, self.login)

    def close(self) -> None:
        try:
            self.save_tokens()
        finally:
            self.client.close()


def _store_login(url: str, login: Login) -> None:
    # Read again before writing: another command may have logged in to another server meanwhile.
    config = load()
    config.servers[url] = login
    config.default = config.default or url
    save(config)


def chosen_url(config: Config) -> str | None:
    """The server the commands talk to: ``BATCHSERVE_URL``, else the default login's."""
    url = os.environ.get(URL_ENV)
    return normalise_url(url) if url else config.default


def connect() -> Connection:
    """A connection to the chosen server, logged in; :class:`NotLoggedIn` when there is none."""
    config = load()
    url = chosen_url(config)
    env_token = os.environ.get(TOKEN_ENV)
    if url is None:
        raise NotLoggedIn(
            "Not logged in: run `batchserve login URL` (or set BATCHSERVE_URL and "
            "BATCHSERVE_TOKEN)."
        )
    if env_token:
        return Connection(url, Client(url, token=env_token), None)
    login = config.servers.get(url)
    if login is None or not login.access_token:
        raise NotLoggedIn(f"Not logged in to {url}: run `batchserve login {url}`.")
    client = Client(url, token=login.access_token)
    # The SDK renews an access token refused with 401 when its session holds the refresh token.
    client._session.refresh_token = login.refresh_token
    connection = Connection(url, client, login)
    try:
        if login.expires_on is not None and login.expires_on - RENEW_MARGIN < time.time():
            _renew(connection)
    except BaseException:
        client.close()
        raise
    return connection


def _renew(connection: Connection) -> None:
    """Trade the stored refresh token for a new pair before the access token expires."""
    login = connection.login
    assert login is not None
    if not login.refresh_token:
        return  # the server will refuse the token, and the error says to log in again
    from batchserve.client import _ops

    try:
        tokens = connection.run(_ops.refresh_token(login.refresh_token))
    except AuthenticationError:
        raise NotLoggedIn(
            f"The login to {connection.url} has expired: run `batchserve login {connection.url}`."
        ) from None
    session = connection.client._session
    session.access_token = login.access_token = tokens["access_token"]
    session.refresh_token = login.refresh_token = tokens.get("refresh_token")
    login.expires_on = tokens.get("expires_on")
    _store_login(connection.url, login)


@contextlib.contextmanager
def connected() -> Iterator[Connection]:
    """``with connected() as conn:`` — a connection that is closed (and its tokens saved) after."""
    connection = connect()
    try:
        yield connection
    finally:
        connection.close()

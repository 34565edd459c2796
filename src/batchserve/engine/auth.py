"""Accounts, passwords and bearer tokens.

Passwords are argon2 hashes. Tokens are random strings handed out in pairs (access + refresh,
as ML Server does); only their SHA-256 is stored, so a copy of the database grants nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from batchserve.engine.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    check_text,
)
from batchserve.store import AlreadyExists, Store
from batchserve.store.models import User

log = logging.getLogger(__name__)

ROLES = ("owner", "contributor", "reader")
_hasher = PasswordHasher()


@dataclass(frozen=True)
class Principal:
    """Who is calling."""

    id: int
    username: str
    role: str

    @property
    def is_owner(self) -> bool:
        return self.role == "owner"

    @property
    def can_publish(self) -> bool:
        return self.role in ("owner", "contributor")


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    expires_on: int  # epoch seconds


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# How long a resolved access token is trusted without reading the store again. Every change
# made through this process (revoke, refresh, role change, removal, new password) drops the
# entries it concerns at once; this bound is for changes made elsewhere (another replica, the
# CLI on the same database).
TOKEN_CACHE_SECONDS = 5.0
TOKEN_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class _Resolved:
    principal: Principal
    pair: str
    expires_at: float  # the token's own expiry, epoch seconds
    fresh_until: float  # time.monotonic() after which the store is read again


class _TokenCache:
    """Access tokens resolved recently, by their SHA-256.

    A lookup is a dict read, cheap enough for the event loop. A generation counter closes the
    race in which a reader finds a token valid in the store, a revoke commits and drops the
    cache, and the reader then stores what it read: an entry read before an invalidation is
    never stored after it.
    """

    def __init__(self, seconds: float, size: int) -> None:
        self.seconds = seconds
        self.size = size
        self._entries: dict[str, _Resolved] = {}
        self._generation = 0
        self._lock = threading.Lock()

    @property
    def generation(self) -> int:
        return self._generation

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.fresh_until <= time.monotonic() or entry.expires_at <= time.time():
            self._entries.pop(digest, None)
            return None
        return entry.principal

    def put(self, digest: str, entry: _Resolved, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return  # something was invalidated while the token was read: read it again
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[digest] = entry

    def drop(self, *, pair: str | None = None, user_id: int | None = None) -> None:
        with self._lock:
            self._generation += 1
            self._entries = {
                d: e
                for d, e in self._entries.items()
                if e.pair != pair and e.principal.id != user_id
            }


class Accounts:
    def __init__(self, store: Store, access_lifetime: int, refresh_lifetime: int) -> None:
        self.store = store
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        self._tokens = _TokenCache(TOKEN_CACHE_SECONDS, TOKEN_CACHE_SIZE)

    def ensure_admin(self, password: str | None, password_file: Path) -> str | None:
        """Create the ``admin`` owner on first start. Returns a generated password, if any."""
        if self.store.get_user("admin") is not None:
            if password:  # BATCHSERVE_ADMIN_PASSWORD always wins
                user = self.store.get_user("admin")
                assert user is not None
                if not self._verify(user, password):
                    self.store.update_user(user.id, password_hash=_hasher.hash(password))
                    self._tokens.drop(user_id=user.id)
            return None
        generated = None if password else secrets.token_urlsafe(18)
        self.store.add_user("admin", _hasher.hash(password or generated or ""), "owner")
        if generated:
            password_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(generated + "\n")
            os.chmod(password_file, 0o600)
        return generated

    def add_user(self, username: str, password: str, role: str) -> User:
        if role not in ROLES:
            raise BadRequest(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")
        if not username or not password:
            raise BadRequest("A user needs a non-empty username and password.")
        check_text(username, "The username", max_length=200)
        try:
            return self.store.add_user(username, _hasher.hash(password), role)
        except AlreadyExists:
            raise Conflict(f"A user named {username!r} exists already.") from None

    def set_role(self, username: str, role: str) -> None:
        if role not in ROLES:
            raise BadRequest(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")
        user = self._user(username)
        self.store.update_user(user.id, role=role)
        self._tokens.drop(user_id=user.id)

    def remove_user(self, username: str) -> None:
        user = self._user(username)
        if user.username == "admin":
            raise Forbidden("The admin account cannot be removed.")
        self.store.delete_user(user.id)
        self._tokens.drop(user_id=user.id)

    def _user(self, username: str) -> User:
        user = self.store.get_user(username)
        if user is None:
            raise NotFound(f"No user named {username!r}.")
        return user

    @staticmethod
    def _verify(user: User, password: str) -> bool:
        try:
            return _hasher.verify(user.password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def login(self, username: str, password: str) -> TokenPair:
        user = self.store.get_user(username)
        if user is None or not self._verify(user, password):
            raise Unauthorized("Invalid username or password.")
        return self._issue(user.id)

    def _issue(self, user_id: int) -> TokenPair:
        now = datetime.now(UTC)
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        access_exp = now + timedelta(seconds=self.access_lifetime)
        self.store.add_tokens(
            user_id,
            secrets.token_hex(16),
            [
                ("access", _digest(access), access_exp),
                ("refresh", _digest(refresh), now + timedelta(seconds=self.refresh_lifetime)),
            ],
        )
        return TokenPair(access, refresh, self.access_lifetime, int(access_exp.timestamp()))

    def cached(self, token: str) -> Principal | None:
        """The caller of an access token resolved in the last few seconds, if it still holds;
        None means: call :meth:`authenticate`. Reads no store, so it may run on the event loop."""
        return self._tokens.get(_digest(token))

    def authenticate(self, token: str) -> Principal:
        digest = _digest(token)
        who = self._tokens.get(digest)
        if who is not None:
            return who
        generation = self._tokens.generation
        found = self.store.find_token(digest, "access")
        if found is None:
            raise Unauthorized("The bearer token is not valid; log in again (POST /login).")
        row, user = found
        if row.revoked or row.expires_at <= datetime.now(UTC):
            raise Unauthorized("The bearer token has expired or was revoked; log in again.")
        who = Principal(user.id, user.username, user.role)
        fresh_until = time.monotonic() + self._tokens.seconds
        resolved = _Resolved(who, row.pair, row.expires_at.timestamp(), fresh_until)
        self._tokens.put(digest, resolved, generation)
        return who

    def refresh(self, refresh_token: str) -> TokenPair:
        found = self.store.find_token(_digest(refresh_token), "refresh")
        if found is None or found[0].revoked or found[0].expires_at <= datetime.now(UTC):
            raise Unauthorized("The refresh token is not valid or has expired; log in again.")
        row, user = found
        self.store.revoke_pair(row.pair)  # the old pair stops working
        self._tokens.drop(pair=row.pair)
        return self._issue(user.id)

    def revoke(self, refresh_token: str) -> None:
        found = self.store.find_token(_digest(refresh_token), "refresh")
        if found is None:
            raise NotFound("No such refresh token.")
        self.store.revoke_pair(found[0].pair)
        self._tokens.drop(pair=found[0].pair)

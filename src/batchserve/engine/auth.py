"""Accounts, passwords and bearer tokens.

Passwords are argon2 hashes. Tokens are random strings handed out in pairs (access + refresh,
as ML Server does); only their SHA-256 is stored, so a copy of the database grants nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from batchserve.engine.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
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


class Accounts:
    def __init__(self, store: Store, access_lifetime: int, refresh_lifetime: int) -> None:
        self.store = store
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime

    def ensure_admin(self, password: str | None, password_file: Path) -> str | None:
        """Create the ``admin`` owner on first start. Returns a generated password, if any."""
        if self.store.get_user("admin") is not None:
            if password:  # BATCHSERVE_ADMIN_PASSWORD always wins
                user = self.store.get_user("admin")
                assert user is not None
                if not self._verify(user, password):
                    self.store.update_user(user.id, password_hash=_hasher.hash(password))
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
        try:
            return self.store.add_user(username, _hasher.hash(password), role)
        except AlreadyExists:
            raise Conflict(f"A user named {username!r} exists already.") from None

    def set_role(self, username: str, role: str) -> None:
        if role not in ROLES:
            raise BadRequest(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")
        user = self._user(username)
        self.store.update_user(user.id, role=role)

    def remove_user(self, username: str) -> None:
        user = self._user(username)
        if user.username == "admin":
            raise Forbidden("The admin account cannot be removed.")
        self.store.delete_user(user.id)

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

    def authenticate(self, token: str) -> Principal:
        found = self.store.find_token(_digest(token), "access")
        if found is None:
            raise Unauthorized("The bearer token is not valid; log in again (POST /login).")
        row, user = found
        if row.revoked or row.expires_at <= datetime.now(UTC):
            raise Unauthorized("The bearer token has expired or was revoked; log in again.")
        return Principal(user.id, user.username, user.role)

    def refresh(self, refresh_token: str) -> TokenPair:
        found = self.store.find_token(_digest(refresh_token), "refresh")
        if found is None or found[0].revoked or found[0].expires_at <= datetime.now(UTC):
            raise Unauthorized("The refresh token is not valid or has expired; log in again.")
        row, user = found
        self.store.revoke_pair(row.pair)  # the old pair stops working
        return self._issue(user.id)

    def revoke(self, refresh_token: str) -> None:
        found = self.store.find_token(_digest(refresh_token), "refresh")
        if found is None:
            raise NotFound("No such refresh token.")
        self.store.revoke_pair(found[0].pair)

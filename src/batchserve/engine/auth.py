"""Accounts, passwords and bearer tokens.

Passwords are argon2 hashes. Tokens are random strings handed out in pairs (access + refresh,
as ML Server does); only their SHA-256 is stored, so a copy of the database grants nothing.
A token is valid while its user is active and its generation is the user's: a new password, or
deactivating the user, bumps the generation and so stops every token the user had.

Logins answer alike, and take as long, whether the user exists or not: an unknown username is
checked against a dummy hash made with the same parameters. Failed logins are throttled (see
:mod:`batchserve.engine.logins`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
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
from batchserve.engine.logins import LoginThrottle
from batchserve.store import AlreadyExists, Store
from batchserve.store.base import LastOwner
from batchserve.store.models import User

log = logging.getLogger(__name__)

ROLES = ("owner", "contributor", "reader")
_hasher = PasswordHasher()

LOGIN_REFUSED = "Invalid username or password."

USERNAME_RULES = (
    "A username is 1 to 64 characters: letters (a-z, A-Z), digits, '.', '_', '-' and '@', "
    "starting with a letter or a digit; usernames ignore case."
)
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

MIN_PASSWORD, MAX_PASSWORD = 8, 1024
PASSWORD_RULES = (
    f"A password has {MIN_PASSWORD} to {MAX_PASSWORD} characters and is not the username."
)


def check_username(username: str) -> str:
    """``username`` if a new user may have it; else a 400 that says why and what is allowed."""
    if username != username.strip():
        raise BadRequest(f"The username {username!r} has spaces around it. {USERNAME_RULES}")
    if not _USERNAME.fullmatch(username):
        shown = username if len(username) <= 80 else username[:80] + "..."
        raise BadRequest(f"The username {shown!r} is not allowed. {USERNAME_RULES}")
    return username


def check_password(password: str, username: str) -> str:
    """``password`` if it follows the rules for new passwords; else a 400 that states them."""
    check_text(password, "The password")
    if len(password) < MIN_PASSWORD:
        raise BadRequest(f"The password is too short ({len(password)}). {PASSWORD_RULES}")
    if len(password) > MAX_PASSWORD:
        raise BadRequest(f"The password is too long ({len(password)}). {PASSWORD_RULES}")
    if password.lower() == username.lower():
        raise BadRequest(f"The password is the username. {PASSWORD_RULES}")
    return password


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
        self.throttle = LoginThrottle()
        self._tokens = _TokenCache(TOKEN_CACHE_SECONDS, TOKEN_CACHE_SIZE)
        self._dummy: str | None = None
        self._dummy_lock = threading.Lock()

    # --- the admin ------------------------------------------------------------------------

    def ensure_admin(self, password: str | None, password_file: Path) -> str | None:
        """Create the ``admin`` owner on first start. Returns a generated password, if any.

        With ``password`` (``BATCHSERVE_ADMIN_PASSWORD``) on a later start, ``admin`` gets that
        password and is made an active owner again, whatever was changed meanwhile: the way
        back in for an operator locked out of their own server."""
        self._dummy_hash()  # made now, so that the first failed login takes no longer
        if password and len(password) < MIN_PASSWORD:
            log.warning(
                "BATCHSERVE_ADMIN_PASSWORD has fewer than %d characters; choose a longer one",
                MIN_PASSWORD,
            )
        user = self.store.get_user("admin")
        if user is not None:
            if password:
                if user.role != "owner" or not user.active:
                    self.store.update_user(user.id, role="owner", active=True)
                    log.warning("the user 'admin' is an active owner again")
                if not self._verify(user, password):
                    self.store.set_password(user.id, _hasher.hash(password))
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

    # --- users (owners manage them) -------------------------------------------------------

    def add_user(self, username: str, password: str, role: str) -> User:
        _check_role(role)
        check_username(username)
        check_password(password, username)
        try:
            return self.store.add_user(username, _hasher.hash(password), role)
        except AlreadyExists:
            existing = self.store.get_user(username)
            name = existing.username if existing else username
            hint = ""
            if existing is not None and not existing.active:
                hint = (
                    f" It is deactivated: reactivate it with PUT /v1/users/{name}/active"
                    f" (batchserve users reactivate {name})."
                )
            raise Conflict(
                f"A user named {name!r} exists already (usernames ignore case).{hint}"
            ) from None

    def set_role(self, username: str, role: str) -> User:
        _check_role(role)
        user = self._user(username)
        try:
            self.store.change_user(user.id, role=role)
        except LastOwner:
            raise _last_owner(user.username, f"make it a {role}") from None
        self._tokens.drop(user_id=user.id)
        return self._user(user.username)

    def set_active(self, username: str, active: bool) -> User:
        """Deactivate a user (they can no longer log in, their tokens stop working, their
        services and batches stay) or reactivate one."""
        user = self._user(username)
        if active:
            self.store.update_user(user.id, active=True)
        else:
            try:
                self.store.change_user(user.id, active=False)
            except LastOwner:
                raise _last_owner(user.username, "deactivate it") from None
            self.store.revoke_user_tokens(user.id)
        self._tokens.drop(user_id=user.id)
        return self._user(user.username)

    def remove_user(self, username: str) -> User | None:
        """Delete a user who owns no service and no batch (None). One who does is deactivated
        instead, and returned: their work keeps its owner, and an owner can reactivate them."""
        user = self._user(username)
        if user.username == "admin":
            raise Forbidden(
                "The admin account cannot be removed; deactivate it instead "
                "(PUT /v1/users/admin/active) once another user is an owner."
            )
        try:
            deleted = self.store.remove_user(user.id)
        except LastOwner:
            raise _last_owner(user.username, "remove it") from None
        self._tokens.drop(user_id=user.id)
        return None if deleted else self._user(user.username)

    def reset_password(self, username: str, new_password: str) -> User:
        """An owner sets another user's password: every token of that user stops working."""
        user = self._user(username)
        check_password(new_password, user.username)
        self.store.set_password(user.id, _hasher.hash(new_password))
        self._tokens.drop(user_id=user.id)
        return user

    def _user(self, username: str) -> User:
        user = self.store.get_user(username)
        if user is None:
            raise NotFound(f"No user named {username!r}.")
        return user

    # --- passwords ------------------------------------------------------------------------

    @staticmethod
    def _verify(user: User, password: str) -> bool:
        return _verify_hash(user.password_hash, password)

    def _dummy_hash(self) -> str:
        """A hash of a random password, made with the same parameters as users' hashes: an
        unknown username is checked against it, so that it takes as long as a known one."""
        with self._dummy_lock:
            if self._dummy is None:
                self._dummy = _hasher.hash(secrets.token_urlsafe(24))
            return self._dummy

    def check_login(self, client: str, username: str) -> None:
        """Raise :class:`TooManyRequests` if ``client`` must wait before trying ``username``
        again. Reads only memory: the faces call it before they queue for a hash."""
        self.throttle.check(client, username)

    def check_password_change(self, username: str) -> None:
        """Raise :class:`TooManyRequests` if ``username`` must wait before trying to change
        their password again. Reads only memory."""
        self.throttle.check_change(username)

    def login(self, username: str, password: str, client: str = "") -> TokenPair:
        """A token pair for the right password. A wrong password, an unknown username and a
        deactivated user get the same answer after the same work; failures are throttled per
        ``client`` (its address) and per user."""
        self.throttle.check(client, username)
        user = self.store.get_user(username)
        if user is None:
            _verify_hash(self._dummy_hash(), password)
            accepted = False
        else:
            accepted = self._verify(user, password) and user.active
        if user is None or not accepted:
            self.throttle.failed(client, username)
            raise Unauthorized(LOGIN_REFUSED)
        self.throttle.succeeded(client, username)
        if _hasher.check_needs_rehash(user.password_hash):
            # Made with other parameters (another version): brought to the current ones, so
            # that logins take as long for every user.
            self.store.update_user(user.id, password_hash=_hasher.hash(password))
        return self._issue(user)

    def change_password(
        self, who: Principal, current_password: str, new_password: str
    ) -> TokenPair:
        """The caller changes their own password. Every token of theirs stops working, the
        caller's included; a new pair for the caller is returned. Wrong current passwords are
        throttled per user (apart from logins, which they do not hold back)."""
        self.throttle.check_change(who.username)
        user = self.store.get_user_by_id(who.id)
        if user is None or not user.active:
            raise Unauthorized("The bearer token has expired or was revoked; log in again.")
        if not self._verify(user, current_password):
            self.throttle.failed_change(who.username)
            raise BadRequest("The current password is not right; the password was not changed.")
        check_password(new_password, user.username)
        if new_password == current_password:
            raise BadRequest(f"The new password is the current one. {PASSWORD_RULES}")
        self.store.set_password(user.id, _hasher.hash(new_password))
        self._tokens.drop(user_id=user.id)
        changed = self.store.get_user_by_id(user.id)
        assert changed is not None
        return self._issue(changed)

    # --- tokens ---------------------------------------------------------------------------

    def _issue(self, user: User) -> TokenPair:
        now = datetime.now(UTC)
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        access_exp = now + timedelta(seconds=self.access_lifetime)
        self.store.add_tokens(
            user.id,
            secrets.token_hex(16),
            [
                ("access", _digest(access), access_exp),
                ("refresh", _digest(refresh), now + timedelta(seconds=self.refresh_lifetime)),
            ],
            generation=user.token_generation,
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
        if not _usable(row.revoked, row.expires_at, row.generation, user):
            raise Unauthorized("The bearer token has expired or was revoked; log in again.")
        who = Principal(user.id, user.username, user.role)
        fresh_until = time.monotonic() + self._tokens.seconds
        resolved = _Resolved(who, row.pair, row.expires_at.timestamp(), fresh_until)
        self._tokens.put(digest, resolved, generation)
        return who

    def refresh(self, refresh_token: str) -> TokenPair:
        found = self.store.find_token(_digest(refresh_token), "refresh")
        if found is None or not _usable(
            found[0].revoked, found[0].expires_at, found[0].generation, found[1]
        ):
            raise Unauthorized("The refresh token is not valid or has expired; log in again.")
        row, user = found
        self.store.revoke_pair(row.pair)  # the old pair stops working
        self._tokens.drop(pair=row.pair)
        return self._issue(user)

    def revoke(self, refresh_token: str) -> None:
        found = self.store.find_token(_digest(refresh_token), "refresh")
        if found is None:
            raise NotFound("No such refresh token.")
        self.store.revoke_pair(found[0].pair)
        self._tokens.drop(pair=found[0].pair)


def _usable(revoked: bool, expires_at: datetime, generation: int, user: User) -> bool:
    return (
        not revoked
        and expires_at > datetime.now(UTC)
        and user.active
        and generation == user.token_generation
    )


def _verify_hash(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise BadRequest(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")


def _last_owner(username: str, what: str) -> Conflict:
    return Conflict(
        f"{username!r} is the last active owner, and a server needs one: you cannot {what}. "
        "Make another user an owner first (PUT /v1/users/<name>/role, or "
        "`batchserve users set-role <name> owner`)."
    )

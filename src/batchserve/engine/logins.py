"""How often logins may fail: limits per client, per client and user, and per user.

Only failed logins count; a successful one forgets its client's failures for that user. The
limits are moving windows (the ``limits`` library, kept in memory: each server process counts
its own), laid out as ladders, so that the more a client fails the longer it waits: five
failures in a row for one user cost at most 15 seconds, ten at most 2 minutes, twenty at most
15 minutes, forty at most 2 hours.

Lockout must not become a way to keep a user out, so the limit counted per user (over every
client) is looser and comes in two parts: a short one (30 failures a minute) that holds for
every client and bounds how fast many addresses together may guess one password; and a long
one (100 an hour) that holds only for clients that have themselves failed for that user. A
client with no failures of its own for a user is therefore kept out by others' failures for a
minute at most.

Wrong current passwords given to change a password are counted apart, per user, on the same
ladder: the caller holds a token already, and their guesses must not lock the user out of
logging in.

A *client* is the peer address of the connection (behind a reverse proxy on the same machine,
the address that proxy forwards; see uvicorn's ``--forwarded-allow-ips``). Clients that share
an address (one machine, one NAT) share their limits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from batchserve.engine.errors import TooManyRequests


def _ladder(*steps: tuple[int, int]) -> tuple[RateLimitItem, ...]:
    """``(failures, seconds)`` steps: at most that many failures within that many seconds."""
    return tuple(RateLimitItemPerSecond(amount, seconds) for amount, seconds in steps)


# One client, one user (the username as typed, case aside).
PER_CLIENT_USER = _ladder((5, 15), (10, 120), (20, 900), (40, 7200))
# One client, every user: how many users one address may try passwords for.
PER_CLIENT = _ladder((60, 60), (600, 3600))
# One user, every client: the short part holds for everyone, the long part only for clients
# that have failed for this user themselves (see the module's docstring).
PER_USER_ALL = _ladder((30, 60))
PER_USER_FAILED = _ladder((100, 3600))
# Wrong current passwords when changing one, per user.
PER_CHANGE = PER_CLIENT_USER

# Longer usernames are cut to this many characters in the keys: nobody's name is longer, and a
# caller cannot make the counters' memory grow with the length of what it sends.
_KEY_LENGTH = 200

MESSAGE = (
    "Too many failed logins {whom}; try again in {seconds} second(s). "
    "A user who forgot their password can ask an owner to reset it."
)


class LoginThrottle:
    """Failed-login counters, and whether a client may try to log in as a user now."""

    def __init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def check(self, client: str, username: str) -> None:
        """Raise :class:`TooManyRequests` when ``client`` must wait before it tries to log in
        as ``username`` again. Costs a few dictionary reads: it runs before any hashing."""
        user = _user_key(username)
        waits = [
            (self._wait(PER_CLIENT_USER, "client-user", client, user), "for this user"),
            (self._wait(PER_CLIENT, "client", client), "from this address"),
            (self._wait(PER_USER_ALL, "user", user), "for this user"),
        ]
        if self._has_failed(client, user):
            waits.append((self._wait(PER_USER_FAILED, "user", user), "for this user"))
        seconds, whom = max(waits)
        if seconds > 0:
            raise TooManyRequests(MESSAGE.format(whom=whom, seconds=seconds), retry_after=seconds)

    def failed(self, client: str, username: str) -> None:
        user = _user_key(username)
        for item in PER_CLIENT_USER:
            self._limiter.hit(item, "client-user", client, user)
        for item in PER_CLIENT:
            self._limiter.hit(item, "client", client)
        for item in (*PER_USER_ALL, *PER_USER_FAILED):
            self._limiter.hit(item, "user", user)

    def succeeded(self, client: str, username: str) -> None:
        """The client knew the password: its own failures for this user are forgotten."""
        user = _user_key(username)
        for item in PER_CLIENT_USER:
            self._limiter.clear(item, "client-user", client, user)

    def check_change(self, username: str) -> None:
        """Raise :class:`TooManyRequests` when ``username`` gave too many wrong current
        passwords to change their password lately."""
        seconds = self._wait(PER_CHANGE, "change", _user_key(username))
        if seconds > 0:
            raise TooManyRequests(
                f"Too many wrong current passwords; try again in {seconds} second(s).",
                retry_after=seconds,
            )

    def failed_change(self, username: str) -> None:
        for item in PER_CHANGE:
            self._limiter.hit(item, "change", _user_key(username))

    def _wait(self, items: Sequence[RateLimitItem], *key: str) -> int:
        """Whole seconds until each of ``items`` allows one more failure (0: now)."""
        now = time.time()
        wait = 0.0
        for item in items:
            if not self._limiter.test(item, *key):
                reset = self._limiter.get_window_stats(item, *key).reset_time
                wait = max(wait, reset - now, 1.0)
        return math.ceil(wait)

    def _has_failed(self, client: str, user: str) -> bool:
        longest = PER_CLIENT_USER[-1]
        return (
            self._limiter.get_window_stats(longest, "client-user", client, user).remaining
            < longest.amount
        )


def _user_key(username: str) -> str:
    return username[:_KEY_LENGTH].lower()

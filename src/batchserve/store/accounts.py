"""Users and their tokens in the store. Mixed into :class:`~batchserve.store.Store`; every
method is one short transaction."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Engine,
    delete,
    exists,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from batchserve.store.base import AlreadyExists, LastOwner, storable
from batchserve.store.models import (
    Batch,
    Service,
    Token,
    User,
)


class AccountQueries:
    engine: Engine
    _sqlite: bool

    if TYPE_CHECKING:

        def session(self, *, locked: bool = False) -> AbstractContextManager[Session]: ...

        def notify(self, *payloads: str) -> None: ...

    # --- users and tokens -------------------------------------------------------------------

    def add_user(self, username: str, password_hash: str, role: str) -> User:
        user = User(
            username=username,
            username_key=username.lower(),
            password_hash=password_hash,
            role=role,
            active=True,
            token_generation=0,
        )
        try:
            with self.session() as s:
                s.add(user)
        except IntegrityError:
            raise AlreadyExists(f"user {username!r}") from None
        return user

    def get_user(self, username: str) -> User | None:
        """The user of that name, its case aside (an exact match first: users of an earlier
        version that differ only in case keep their own names)."""
        if not storable(username):
            return None
        with self.session() as s:
            found = s.scalar(select(User).where(User.username == username))
            if found is None:
                found = s.scalar(select(User).where(User.username_key == username.lower()))
            return found

    def get_user_by_id(self, user_id: int) -> User | None:
        with self.session() as s:
            return s.get(User, user_id)

    def update_user(self, user_id: int, **fields: Any) -> None:
        with self.session() as s:
            s.execute(update(User).where(User.id == user_id).values(**fields))

    def change_user(self, user_id: int, **fields: Any) -> None:
        """Update a user, refusing (:class:`LastOwner`) a change that would leave no active
        owner. The check and the change are one locked transaction, so two owners demoting
        each other at once cannot both succeed."""
        with self.session(locked=True) as s:
            user = s.get(User, user_id)
            if user is None:
                return
            stays_owner = fields.get("role", user.role) == "owner" and fields.get(
                "active", user.active
            )
            if not stays_owner:
                self._keep_an_owner(s, user)
            s.execute(update(User).where(User.id == user_id).values(**fields))

    def set_password(self, user_id: int, password_hash: str) -> None:
        """A new password: every token of the user stops working."""
        with self.session() as s:
            s.execute(
                update(User)
                .where(User.id == user_id)
                .values(password_hash=password_hash, token_generation=User.token_generation + 1)
            )
            s.execute(update(Token).where(Token.user_id == user_id).values(revoked=True))

    def remove_user(self, user_id: int) -> bool:
        """Delete a user who owns no service and no batch, and return True. A user who does
        (or whom another row refers to) is deactivated instead, and False is returned: their
        work keeps its owner. Refuses (:class:`LastOwner`) to remove the last active owner."""
        try:
            with self.session(locked=True) as s:
                user = s.get(User, user_id)
                if user is None:
                    return True
                self._keep_an_owner(s, user)
                owns = s.scalar(
                    select(
                        exists().where(Service.owner_id == user_id)
                        | exists().where(Batch.owner_id == user_id)
                    )
                )
                if not owns:
                    s.execute(delete(User).where(User.id == user_id))
                    return True
        except IntegrityError:
            pass  # a row of another kind refers to the user: deactivate them
        self.change_user(user_id, active=False)
        self.revoke_user_tokens(user_id)
        return False

    def revoke_user_tokens(self, user_id: int) -> None:
        """Stop every token of a user (bumps their token generation)."""
        with self.session() as s:
            s.execute(
                update(User)
                .where(User.id == user_id)
                .values(token_generation=User.token_generation + 1)
            )
            s.execute(update(Token).where(Token.user_id == user_id).values(revoked=True))

    @staticmethod
    def _keep_an_owner(s: Session, user: User) -> None:
        """Raise :class:`LastOwner` when ``user`` is the only active owner. The other owners'
        rows are locked (PostgreSQL) until the caller's transaction ends."""
        if user.role != "owner" or not user.active:
            return
        others = s.scalars(
            select(User.id)
            .where(User.role == "owner", User.active.is_(True), User.id != user.id)
            .with_for_update()
        ).all()
        if not others:
            raise LastOwner(user.username)

    def list_users(self) -> list[User]:
        with self.session() as s:
            return list(s.scalars(select(User).order_by(User.id)))

    def add_tokens(
        self,
        user_id: int,
        pair: str,
        tokens: Sequence[tuple[str, str, datetime]],
        generation: int = 0,
    ) -> None:
        """Store ``(kind, token_hash, expires_at)`` rows issued together as ``pair``, under
        the user's token ``generation`` read before the password was checked."""
        with self.session() as s:
            for kind, token_hash, expires_at in tokens:
                s.add(
                    Token(
                        user_id=user_id,
                        kind=kind,
                        pair=pair,
                        token_hash=token_hash,
                        expires_at=expires_at,
                        generation=generation,
                    )
                )

    def find_token(self, token_hash: str, kind: str) -> tuple[Token, User] | None:
        with self.session() as s:
            row = s.execute(
                select(Token, User)
                .join(User, User.id == Token.user_id)
                .where(Token.token_hash == token_hash, Token.kind == kind)
            ).first()
            return (row[0], row[1]) if row else None

    def revoke_pair(self, pair: str) -> None:
        with self.session() as s:
            s.execute(update(Token).where(Token.pair == pair).values(revoked=True))

    def touch_token(self, token_id: int, expires_at: datetime) -> None:
        with self.session() as s:
            s.execute(update(Token).where(Token.id == token_id).values(expires_at=expires_at))

"""Services, their names and who may publish under them, in the store. Mixed into
:class:`~batchserve.store.Store`; every method is one short transaction."""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Engine,
    Select,
    bindparam,
    delete,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from batchserve.store.base import AlreadyExists, storable
from batchserve.store.models import (
    Batch,
    Service,
    ServiceName,
    ServicePublisher,
    User,
    utcnow,
)


@dataclass(frozen=True)
class ServiceBatch:
    """A batch of a service, as much as deciding whether the service may be deleted needs."""

    id: str
    owner_id: int
    owner: str | None  # the owner's username
    state: str
    sealed: bool  # its upload has finished
    deleting: bool  # its deletion was asked for


class ServiceQueries:
    engine: Engine
    _sqlite: bool

    if TYPE_CHECKING:

        def session(self, *, locked: bool = False) -> AbstractContextManager[Session]: ...

        def notify(self, *payloads: str) -> None: ...

    # --- services ---------------------------------------------------------------------------

    def add_service(self, **fields: Any) -> Service:
        svc = Service(**fields)
        try:
            with self.session() as s:
                s.add(svc)
        except IntegrityError:
            raise AlreadyExists(f"service {fields['name']} {fields['version']}") from None
        return svc

    def get_service(self, name: str, version: str | None) -> Service | None:
        """One version, or the newest when ``version`` is None or ``latest``."""
        if not storable(name, version):
            return None
        with self.session() as s:
            q = select(Service).where(Service.name == name)
            if version in (None, "latest"):
                q = q.order_by(Service.created_at.desc(), Service.id.desc()).limit(1)
            else:
                q = q.where(Service.version == version)
            return s.scalar(q)

    def find_service(self, name: str, version: str | None) -> Service | None:
        """What :meth:`get_service` returns, read the cheap way for request-response calls:
        a prebuilt statement on a plain connection, no ORM session."""
        if not storable(name, version):
            return None
        newest = version in (None, "latest")
        with self.engine.connect() as conn:
            row = conn.execute(
                _service_query(newest), {"name": name, "version": None if newest else version}
            ).first()
        if row is None:
            return None
        return Service(**{c.key: v for c, v in zip(Service.__table__.columns, row, strict=True)})

    def get_service_by_id(self, service_id: int) -> Service | None:
        with self.session() as s:
            return s.get(Service, service_id)

    def list_services(self, name: str | None = None) -> list[Service]:
        if not storable(name):
            return []
        with self.session() as s:
            q = select(Service).order_by(Service.created_at, Service.id)
            if name is not None:
                q = q.where(Service.name == name)
            return list(s.scalars(q))

    def update_service(self, service_id: int, **fields: Any) -> None:
        with self.session() as s:
            s.execute(update(Service).where(Service.id == service_id).values(**fields))

    def delete_service(self, service_id: int) -> None:
        with self.session() as s:
            s.execute(delete(Service).where(Service.id == service_id))

    def service_batches(self, service_id: int) -> list[ServiceBatch]:
        """Every batch of a service version, uploads under way and batches being deleted
        included, with its owner's username: what deleting the service would take with it."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    Batch.id,
                    Batch.owner_id,
                    User.username,
                    Batch.state,
                    Batch.sealed,
                    Batch.deleting_since.is_not(None),
                )
                .select_from(Batch)
                .outerjoin(User, User.id == Batch.owner_id)
                .where(Batch.service_id == service_id)
                .order_by(Batch.creation_time, Batch.id)
            )
            return [ServiceBatch(*row) for row in rows]

    # --- service names ----------------------------------------------------------------------

    def get_service_name(self, name: str) -> ServiceName | None:
        if not storable(name):
            return None
        with self.session() as s:
            return s.get(ServiceName, name)

    def claim_service_name(self, name: str, user_id: int) -> ServiceName:
        """The name's row; made with ``user_id`` as the name's owner when it has none yet."""
        found = self.get_service_name(name)
        if found is not None:
            return found
        row = ServiceName(name=name, owner_id=user_id, created_at=utcnow())
        try:
            with self.session() as s:
                s.add(row)
        except IntegrityError:
            found = self.get_service_name(name)  # another publisher claimed it first
            if found is None:
                raise
            return found
        return row

    def may_publish(self, name: str, user_id: int) -> bool:
        """True when ``user_id`` was granted the service name ``name``."""
        with self.session() as s:
            return s.get(ServicePublisher, (name, user_id)) is not None

    def grant_publisher(self, name: str, user_id: int, granted_by: int) -> bool:
        """Let ``user_id`` publish under ``name``; False when it could already."""
        try:
            with self.session() as s:
                if s.get(ServicePublisher, (name, user_id)) is not None:
                    return False
                s.add(
                    ServicePublisher(
                        name=name, user_id=user_id, granted_by=granted_by, created_at=utcnow()
                    )
                )
        except IntegrityError:  # granted by someone else at the same moment
            return False
        return True

    def revoke_publisher(self, name: str, user_id: int) -> bool:
        """Take back a grant; False when there was none."""
        with self.session() as s:
            res = s.execute(
                delete(ServicePublisher).where(
                    ServicePublisher.name == name, ServicePublisher.user_id == user_id
                )
            )
            return res.rowcount == 1  # type: ignore[attr-defined]

    def service_publishers(self, name: str) -> list[tuple[ServicePublisher, str, str | None]]:
        """The grants of a service name, oldest first: each with the grantee's username and
        the username of who granted it (None once that user is removed)."""
        granter = aliased(User)
        with self.session() as s:
            rows = s.execute(
                select(ServicePublisher, User.username, granter.username)
                .join(User, User.id == ServicePublisher.user_id)
                .outerjoin(granter, granter.id == ServicePublisher.granted_by)
                .where(ServicePublisher.name == name)
                .order_by(ServicePublisher.created_at, User.username)
            )
            return [(row[0], row[1], row[2]) for row in rows]


@functools.cache
def _service_query(newest: bool) -> Select[Any]:
    services = Service.__table__
    query = select(services).where(services.c.name == bindparam("name"))
    if newest:
        return query.order_by(services.c.created_at.desc(), services.c.id.desc()).limit(1)
    return query.where(services.c.version == bindparam("version"))

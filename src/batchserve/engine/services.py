"""Service operations: publish, look up, list, delete, consume."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batchserve.blobs import BlobStore, keys
from batchserve.engine.auth import Principal
from batchserve.engine.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unavailable,
    check_text,
)
from batchserve.engine.scheduler import Scheduler, WarmService, service_spec
from batchserve.resources import ResourceError, normalize_resources, shown
from batchserve.schema import SchemaError, normalize_schema
from batchserve.states import BatchState
from batchserve.store import AlreadyExists, ServiceBatch, Store
from batchserve.store.models import Service, ServiceName, User

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
MODES = ("row", "vectorized")
# Words a version may not be: 'latest' names the newest version, and 'publishers' is the path
# of a name's grants (/v1/services/{name}/publishers).
RESERVED_VERSIONS = ("latest", "publishers")


def _check_name(value: str, what: str, reserved: tuple[str, ...] = ("latest",)) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or value in reserved:
        raise BadRequest(
            f"{what} {value!r} is not allowed: use 1-200 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
            + (f" ({value!r} is reserved)" if value in reserved else "")
            + "."
        )
    return value


@dataclass(frozen=True)
class Grant:
    """A user allowed to publish under a service name that is not theirs."""

    username: str
    granted_by: str | None  # None once that user is removed
    granted_at: datetime


@dataclass(frozen=True)
class NamePublishers:
    """Who may add versions under a service name: its owner, and the users granted it (owners
    may too, always)."""

    name: str
    owner: str | None  # None once that user is removed: then only owners publish under it
    granted: list[Grant]


def _check_artifacts(names: list[str]) -> list[str]:
    for a in names:
        if not isinstance(a, str) or not a or a in (".", "..") or any(c in a for c in "/\\\x00"):
            raise BadRequest(f"Artifact name {a!r} is not a plain file name.")
    return list(names)


def _check_alias(alias: str) -> str:
    if not alias.isidentifier():
        raise BadRequest(f"The alias {alias!r} must be a Python identifier.")
    return check_text(alias, "The alias", max_length=200)


def _check_bundle_kind(kind: str) -> str:
    if kind not in ("callable", "code"):
        raise BadRequest("bundle_kind must be 'callable' or 'code'.")
    return kind


def _schemas(**schemas: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """The given schemas, normalized (None ones left out)."""
    try:
        return {k: normalize_schema(v, k) for k, v in schemas.items() if v is not None}
    except SchemaError as exc:
        raise BadRequest(str(exc)) from None


class InvalidResources(BadRequest):
    """Resources a service asks for that are malformed, or that no worker could be given."""

    code = "validation_error"


class ServiceOps:
    """Service operations. ``check_resources`` tells why the workers cannot be given what a
    service asks for (a message), or None when they can: a service nothing could run is refused
    at publish rather than left waiting for a worker forever."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        scheduler: Scheduler,
        consume_timeout: float = 600.0,
        *,
        check_resources: Callable[[dict[str, Any]], str | None] | None = None,
        remote: bool = False,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.scheduler = scheduler
        self.consume_timeout = consume_timeout
        self.check_resources = check_resources
        # No workers here (an API node): one-record requests wait in the store for a compute
        # node, and the answer comes back through it.
        self.remote = remote
        self._answers: dict[str, threading.Event] = {}
        self._answers_lock = threading.Lock()

    def _resources(self, value: Any) -> dict[str, Any]:
        try:
            resources = normalize_resources(value)
        except ResourceError as exc:
            raise InvalidResources(str(exc), **exc.details) from None
        problem = self.check_resources(resources) if self.check_resources else None
        if problem:
            raise InvalidResources(
                f"The resources asked for cannot be given: {problem}", resources=resources
            )
        return resources

    def publish(
        self,
        who: Principal,
        *,
        name: str,
        version: str | None,
        bundle: bytes,
        bundle_kind: str,
        inputs: dict[str, Any] | None,
        outputs: dict[str, Any] | None,
        artifacts: list[str] | None = None,
        description: str = "",
        alias: str | None = None,
        mode: str = "row",
        extra: dict[str, Any] | None = None,
        resources: dict[str, Any] | None = None,
    ) -> Service:
        """Publish a new version. ``resources`` is what each worker of it needs (see
        :func:`~batchserve.resources.normalize_resources`); left out, the defaults."""
        if not who.can_publish:
            raise Forbidden(
                f"User {who.username!r} has the role '{who.role}', which may list and "
                "consume services but not publish them; ask an owner for the "
                "contributor role."
            )
        _check_name(name, "The service name")
        version = (
            _check_name(version, "The version", RESERVED_VERSIONS) if version else uuid.uuid4().hex
        )
        if mode not in MODES:
            raise BadRequest(f"Unknown service mode {mode!r}; use one of {', '.join(MODES)}.")
        if mode == "vectorized" and bundle_kind != "callable":
            raise BadRequest("A vectorized service must be a function called with a DataFrame.")
        _check_bundle_kind(bundle_kind)
        schemas = _schemas(inputs=inputs or {}, outputs=outputs or {})
        ins, outs = schemas["inputs"], schemas["outputs"]
        names = _check_artifacts(list(artifacts or []))
        alias = _check_alias(alias or "consume")
        check_text(description or "", "The description")
        needs = self._resources(resources)
        self._claim_name(who, name)
        if self.store.get_service(name, version) is not None:
            raise Conflict(
                f"Service {name} version {version} exists already; publish a new version instead."
            )
        key = keys.bundle_key(name, version, uuid.uuid4().hex)
        self.blobs.write_bytes(key, bundle)
        try:
            service = self.store.add_service(
                name=name,
                version=version,
                description=description or "",
                alias=alias,
                mode=mode,
                inputs=ins,
                outputs=outs,
                artifacts=names,
                bundle_key=key,
                bundle_kind=bundle_kind,
                extra=extra or {},
                resources=needs,
                owner_id=who.id,
            )
        except AlreadyExists:
            self.blobs.delete(key)
            raise Conflict(f"Service {name} version {version} exists already.") from None
        self.scheduler.post(WarmService(service_spec(service)))
        return service

    def get(self, name: str, version: str | None) -> Service:
        svc = self.store.get_service(name, version)
        if svc is None:
            if version in (None, "latest"):
                raise NotFound(f"No service named {name!r} exists.")
            known = [s.version for s in self.store.list_services(name)]
            hint = f" Its versions are: {', '.join(known)}." if known else ""
            raise NotFound(f"No service {name!r} with version {version!r} exists.{hint}")
        return svc

    def list_services(self, name: str | None = None) -> list[Service]:
        return self.store.list_services(name)

    def _changeable(
        self, who: Principal, name: str, version: str, verb: str
    ) -> tuple[Service, list[ServiceBatch]]:
        """The service and its batches, if ``who`` may ``verb`` it and no batch of it is
        unfinished.

        Its publisher may delete it, and so may the owner of its name; its publisher changes
        its code only while they may still publish under the name (a revoked grant ends that:
        else they could put new code behind "latest" of a name that is no longer theirs)."""
        svc = self.get(name, version)
        if not who.is_owner:
            taken = self._name(name)
            publisher = who.can_publish and svc.owner_id == who.id
            name_owner = who.can_publish and taken.owner_id == who.id
            if verb == "delete" and not (publisher or name_owner):
                raise Forbidden(
                    f"User {who.username!r} may not delete service {name} {version}: only its "
                    "publisher or an owner may, besides the owner of its name."
                )
            if verb != "delete" and not publisher:
                raise Forbidden(
                    f"User {who.username!r} may not {verb} service {name} {version}: "
                    "only its publisher or an owner may."
                )
            if verb != "delete" and not name_owner and not self.store.may_publish(name, who.id):
                holder = self._username(taken.owner_id) or "a removed user"
                raise Forbidden(
                    f"User {who.username!r} may no longer {verb} service {name} {version}: the "
                    f"name {name!r} belongs to {holder!r}, who no longer grants it to them. Ask "
                    "them or an owner to grant it again.",
                    name=name,
                    owner=holder,
                )
        # A batch runs one bundle from its first record to its last.
        batches = self.store.service_batches(svc.id)
        deleting = [b.id for b in batches if b.deleting]
        active = [
            b.id
            for b in batches
            if not b.deleting and (not b.sealed or not BatchState(b.state).is_final)
        ]
        if active:
            raise Conflict(
                f"Service {name} {version} has unfinished batches "
                f"({', '.join(active[:5])}); let them finish or cancel them first."
            )
        if deleting:
            # Gone for users, but their workers may still be stopping: the bundle must outlive them.
            raise Conflict(
                f"Service {name} {version} has deleted batches whose removal is not finished "
                f"({', '.join(deleting[:5])}); try again in a moment."
            )
        return svc, batches

    def delete(self, who: Principal, name: str, version: str, *, force: bool = False) -> None:
        """Delete a service version with its batches. Batches of other users than ``who`` are
        theirs: while any exists the delete is refused, unless an owner ``force``s it."""
        if force and not who.is_owner:
            raise Forbidden(
                f"User {who.username!r} is a {who.role}: only owners may force the deletion of "
                "a service whose batches belong to other users. Leave force out."
            )
        svc, batches = self._changeable(who, name, version, "delete")
        others = Counter(b.owner or f"user {b.owner_id}" for b in batches if b.owner_id != who.id)
        if others and not force:
            whose = ", ".join(f"{user}: {n}" for user, n in sorted(others.items()))
            total = sum(others.values())
            raise Conflict(
                f"Service {name} {version} has {total} batch{'es' if total > 1 else ''} of other "
                f"users ({whose}), which deleting it would delete with their results. Ask them "
                "to delete their batches first, or have an owner delete the service anyway "
                "with force=true.",
                batches=dict(others),
            )
        for b in batches:
            self.store.delete_batch(b.id)
            self.blobs.delete_prefix(keys.batch_prefix(b.id))
        self.store.delete_service(svc.id)
        self.blobs.delete(svc.bundle_key)

    def update(
        self,
        who: Principal,
        name: str,
        version: str,
        *,
        bundle: bytes | None = None,
        bundle_kind: str | None = None,
        inputs: dict[str, Any] | None = None,
        outputs: dict[str, Any] | None = None,
        artifacts: list[str] | None = None,
        description: str | None = None,
        alias: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Service:
        """Change a published version in place (ML Server's redeploy); None keeps a field."""
        svc, _ = self._changeable(who, name, version, "change")
        fields: dict[str, Any] = dict(_schemas(inputs=inputs, outputs=outputs))
        if artifacts is not None:
            fields["artifacts"] = _check_artifacts(artifacts)
        if description is not None:
            fields["description"] = description
        if alias is not None:
            fields["alias"] = _check_alias(alias)
        if extra is not None:
            fields["extra"] = extra
        if bundle_kind is not None:
            fields["bundle_kind"] = _check_bundle_kind(bundle_kind)
        old_key = svc.bundle_key
        if bundle is not None:
            # A new key: workers cache loaded bundles by key, so none keeps running the old one.
            fields["bundle_key"] = keys.bundle_key(name, svc.version, uuid.uuid4().hex)
            self.blobs.write_bytes(fields["bundle_key"], bundle)
            # New code costs what it costs: the old code's measures would only mislead.
            fields.update(record_seconds=None, call_seconds=None, chunk_seconds=None)
        if fields:
            self.store.update_service(svc.id, **fields)
        if bundle is not None:
            self.blobs.delete(old_key)
        updated = self.get(name, svc.version)
        if bundle is not None:
            self.scheduler.post(WarmService(service_spec(updated)))
        return updated

    # --- who may publish under a name --------------------------------------------------------

    def _claim_name(self, who: Principal, name: str) -> None:
        """Let ``who`` add a version under ``name`` if it is new (they become its owner), theirs,
        granted to them, or if they are an owner; else a 403 naming the name's owner."""
        taken = self._name(name, claim_for=who.id)
        if who.is_owner or taken.owner_id == who.id or self.store.may_publish(name, who.id):
            return
        holder = self._username(taken.owner_id)
        if holder is None:
            raise Forbidden(
                f"The service name {name!r} belongs to a user who was removed: only owners may "
                "publish under it or grant it. Ask an owner, or publish under another name.",
                name=name,
            )
        raise Forbidden(
            f"The service name {name!r} belongs to {holder!r}, who published under it first: "
            f"only they, the users they grant it to, and owners may add versions to it. Ask "
            f"{holder!r} or an owner to grant it to you, or publish under another name.",
            name=name,
            owner=holder,
        )

    def _username(self, user_id: int | None) -> str | None:
        user = self.store.get_user_by_id(user_id) if user_id is not None else None
        return user.username if user else None

    def _name(self, name: str, claim_for: int | None = None) -> ServiceName:
        """The name's row. A name nobody published under yet is claimed for ``claim_for`` (else
        not found); one whose versions were stored without it (by hand, say) for the first
        publisher of those."""
        taken = self.store.get_service_name(name)
        if taken is not None:
            return taken
        versions = self.store.list_services(name)
        if versions:
            return self.store.claim_service_name(name, versions[0].owner_id)
        if claim_for is None:
            raise NotFound(f"No service named {name!r} exists.")
        return self.store.claim_service_name(name, claim_for)

    def publishers(self, name: str) -> NamePublishers:
        """Who may add versions under ``name``."""
        taken = self._name(name)
        return NamePublishers(
            name=name,
            owner=self._username(taken.owner_id),
            granted=[
                Grant(username, granter, grant.created_at)
                for grant, username, granter in self.store.service_publishers(name)
            ],
        )

    def _grantable(
        self, who: Principal, name: str, username: str, verb: str
    ) -> tuple[ServiceName, User]:
        """The name's row and the user, if ``who`` may ``verb`` grants of the name."""
        taken = self._name(name)
        if not who.is_owner and taken.owner_id != who.id:
            holder = self._username(taken.owner_id)
            owned = f"belongs to {holder!r}" if holder else "belongs to a removed user"
            raise Forbidden(
                f"User {who.username!r} may not {verb} the service name {name!r}: it {owned}, "
                "and only the name's owner or an owner may.",
                name=name,
                owner=holder,
            )
        user = self.store.get_user(username)
        if user is None:
            raise NotFound(f"No user named {username!r} exists.")
        return taken, user

    def grant(self, who: Principal, name: str, username: str) -> NamePublishers:
        """Let ``username`` add versions under ``name``; granting twice changes nothing."""
        taken, user = self._grantable(who, name, username, "grant")
        if user.role not in ("owner", "contributor"):
            raise BadRequest(
                f"User {username!r} is a {user.role}, who may not publish at all; an owner can "
                "give them the contributor role first."
            )
        if user.id != taken.owner_id:
            self.store.grant_publisher(name, user.id, who.id)
        return self.publishers(name)

    def revoke(self, who: Principal, name: str, username: str) -> NamePublishers:
        """Take back a grant: ``username`` adds no more versions under ``name``. Those they
        published stay: theirs to delete, no longer to change."""
        taken, user = self._grantable(who, name, username, "revoke grants of")
        if user.id == taken.owner_id:
            raise BadRequest(
                f"User {username!r} owns the service name {name!r}; only grants to other users "
                "can be taken back."
            )
        if not self.store.revoke_publisher(name, user.id):
            raise NotFound(f"User {username!r} was not granted the service name {name!r}.")
        return self.publishers(name)

    def consume(
        self,
        name: str,
        version: str | None,
        inputs: dict[str, Any],
        gone: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Run one record on a worker and return its result, artifacts inline. The record is
        stopped when it takes longer than the consume timeout, or when ``gone`` is set (the
        client went away)."""
        svc = self.store.find_service(name, version) or self.get(name, version)
        if not isinstance(inputs, dict):
            raise BadRequest("inputs must be an object mapping input names to values.")
        unknown = [k for k in inputs if k not in svc.inputs]
        if unknown:
            raise BadRequest(
                f"Service {name} {svc.version} has no input named "
                f"{', '.join(map(shown, unknown))}; its inputs are "
                f"{', '.join(svc.inputs) or '(none)'}."
            )
        if self.remote:
            return self._consume_remote(svc, inputs, gone)
        future = self.scheduler.consume(service_spec(svc), inputs)
        deadline = time.monotonic() + self.consume_timeout
        try:
            while True:
                # In slices, to notice a caller that went away: its request is stopped then.
                left = deadline - time.monotonic()
                if left <= 0 or (gone is not None and gone.is_set()):
                    raise FutureTimeout
                try:
                    return future.result(timeout=min(left, 0.25))
                except FutureTimeout:
                    continue
        except FutureTimeout:
            self.scheduler.abandon(future)
            if gone is not None and gone.is_set():
                raise Unavailable("The client went away; the request was stopped.") from None
            raise Unavailable(
                f"The service did not answer within {self.consume_timeout:g} s; the request "
                "was stopped. Run long work as a batch instead."
            ) from None
        except RuntimeError as exc:
            raise Unavailable(f"The worker running the request failed: {exc}.") from None

    def answered(self, consume_id: str) -> None:
        """A compute node answered a request of this node (a notification says so)."""
        with self._answers_lock:
            event = self._answers.get(consume_id)
        if event is not None:
            event.set()

    def _consume_remote(
        self, svc: Service, inputs: dict[str, Any], gone: threading.Event | None
    ) -> dict[str, Any]:
        """Run one record on a compute node: the request waits in the store for one, and its
        answer comes back through it (woken by a notification, else looked at every 0.25 s)."""
        if not self.store.compute_nodes():
            raise Unavailable(
                "No compute node is running, so nothing can run the service; start one with "
                "batchserve worker, sharing this server's database and blob store."
            )
        consume_id = uuid.uuid4().hex
        answer = threading.Event()
        with self._answers_lock:
            self._answers[consume_id] = answer
        deadline = time.monotonic() + self.consume_timeout
        try:
            self.store.add_consume(consume_id, svc.id, inputs)
            while True:
                request = self.store.get_consume(consume_id)
                if request is not None and request.state == "done":
                    if request.error is not None:
                        raise Unavailable(
                            f"The worker running the request failed: {request.error}."
                        )
                    return dict(request.result or {})
                left = deadline - time.monotonic()
                if left <= 0 or (gone is not None and gone.is_set()):
                    self.store.abandon_consume(consume_id)
                    if gone is not None and gone.is_set():
                        raise Unavailable("The client went away; the request was stopped.")
                    raise Unavailable(
                        f"The service did not answer within {self.consume_timeout:g} s; the "
                        "request was stopped. Run long work as a batch instead."
                    )
                answer.wait(min(left, 0.25))
                answer.clear()
        finally:
            with self._answers_lock:
                self._answers.pop(consume_id, None)

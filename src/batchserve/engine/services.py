"""Service operations: publish, look up, list, delete, consume."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import TimeoutError as FutureTimeout
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
from batchserve.schema import SchemaError, normalize_schema
from batchserve.states import BatchState
from batchserve.store import AlreadyExists, Store
from batchserve.store.models import Service

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
MODES = ("row", "vectorized")


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or value == "latest":
        raise BadRequest(
            f"{what} {value!r} is not allowed: use 1-200 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
            + (" ('latest' is reserved)" if value == "latest" else "")
            + "."
        )
    return value


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


class ServiceOps:
    def __init__(
        self, store: Store, blobs: BlobStore, scheduler: Scheduler, consume_timeout: float = 600.0
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.scheduler = scheduler
        self.consume_timeout = consume_timeout

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
    ) -> Service:
        if not who.can_publish:
            raise Forbidden(
                f"User {who.username!r} has the role '{who.role}', which may list and "
                "consume services but not publish them; ask an owner for the "
                "contributor role."
            )
        _check_name(name, "The service name")
        version = _check_name(version, "The version") if version else uuid.uuid4().hex
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

    def _changeable(self, who: Principal, name: str, version: str, verb: str) -> Service:
        """The service, if ``who`` may change it and no batch of it is unfinished."""
        svc = self.get(name, version)
        if not who.is_owner and (not who.can_publish or svc.owner_id != who.id):
            raise Forbidden(
                f"User {who.username!r} may not {verb} service {name} {version}: "
                "only its publisher or an owner may."
            )
        # A batch runs one bundle from its first record to its last.
        batches = self.store.list_batches(
            service_ids=[svc.id], limit=100_000, include_deleting=True
        )
        deleting = [b.id for b in batches if b.deleting_since is not None]
        active = [
            b.id for b in batches if b.deleting_since is None and not BatchState(b.state).is_final
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
        return svc

    def delete(self, who: Principal, name: str, version: str) -> None:
        svc = self._changeable(who, name, version, "delete")
        for b in self.store.list_batches(
            service_ids=[svc.id], limit=100_000, include_deleting=True
        ):
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
        svc = self._changeable(who, name, version, "change")
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

    def consume(self, name: str, version: str | None, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run one record on a worker and return its result, artifacts inline."""
        svc = self.store.find_service(name, version) or self.get(name, version)
        if not isinstance(inputs, dict):
            raise BadRequest("inputs must be an object mapping input names to values.")
        unknown = [k for k in inputs if k not in svc.inputs]
        if unknown:
            raise BadRequest(
                f"Service {name} {svc.version} has no input named "
                f"{', '.join(map(repr, unknown))}; its inputs are "
                f"{', '.join(svc.inputs) or '(none)'}."
            )
        future = self.scheduler.consume(service_spec(svc), inputs)
        try:
            return future.result(timeout=self.consume_timeout)
        except FutureTimeout:
            raise Unavailable("The service did not answer in time.") from None
        except RuntimeError as exc:
            raise Unavailable(f"The worker running the request failed: {exc}.") from None

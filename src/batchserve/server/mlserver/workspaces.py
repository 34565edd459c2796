"""Authoring sessions and snapshots, kept in the blob store.

ML Server's clients publish in steps: open a session, upload each model and object into its
workspace (dill-serialized), take a snapshot, publish naming the snapshot, then close the session
and delete the snapshot. Here a session is a folder of opaque byte strings; a snapshot is a copy
of it. Nothing is ever unpickled in the API process: the bytes go into the service bundle as
they are and are opened by the workers (see ``batchserve.worker.bundles``).

Layout: ``mlserver/sessions/<id>/session.json`` + ``workspace/<name>``, and the same under
``mlserver/snapshots/<id>/`` with ``snapshot.json``.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from batchserve.blobs import BlobNotFound, BlobStore
from batchserve.engine.auth import Principal
from batchserve.engine.errors import BadRequest, Forbidden, NotFound

SESSIONS = "mlserver/sessions"
SNAPSHOTS = "mlserver/snapshots"


def _check_id(value: str, what: str) -> str:
    # Ids are generated hex strings; anything else cannot name one (and must not reach a key).
    if not (len(value) == 32 and all(c in "0123456789abcdef" for c in value)):
        raise NotFound(f"No {what} {value!r} exists.")
    return value


class Workspaces:
    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    # --- sessions ---------------------------------------------------------------------------

    def create_session(self, who: Principal, runtime_type: str) -> str:
        if not who.can_publish:
            raise Forbidden(
                f"User {who.username!r} has the role '{who.role}'; sessions are for publishing "
                "services, which needs the contributor or owner role."
            )
        if runtime_type.lower() != "python":
            raise BadRequest(f"The runtimeType {runtime_type!r} is not supported; use 'Python'.")
        session_id = uuid.uuid4().hex
        self._write_meta(f"{SESSIONS}/{session_id}/session.json", who)
        return session_id

    def put_object(self, who: Principal, session_id: str, name: str, data: bytes) -> None:
        prefix = self._session(who, session_id)
        if not name.isidentifier():
            raise BadRequest(
                f"The workspace object name {name!r} is not a Python identifier; the service "
                "code sees each object as a variable of that name."
            )
        self.blobs.write_bytes(f"{prefix}/workspace/{name}", data)

    def close_session(self, who: Principal, session_id: str) -> None:
        self.blobs.delete_prefix(self._session(who, session_id))

    def snapshot(self, who: Principal, session_id: str) -> str:
        source = self._session(who, session_id)
        snapshot_id = uuid.uuid4().hex
        target = f"{SNAPSHOTS}/{snapshot_id}"
        for key in self.blobs.list(f"{source}/workspace"):
            name = key.rsplit("/", 1)[-1]
            self.blobs.write_bytes(f"{target}/workspace/{name}", self.blobs.read_bytes(key))
        self._write_meta(f"{target}/snapshot.json", who, session=session_id)
        return snapshot_id

    # --- snapshots --------------------------------------------------------------------------

    def snapshot_objects(self, who: Principal, snapshot_id: str) -> dict[str, bytes]:
        """The snapshot's workspace objects by name, still serialized."""
        prefix = self._snapshot(who, snapshot_id)
        return {
            key.rsplit("/", 1)[-1]: self.blobs.read_bytes(key)
            for key in self.blobs.list(f"{prefix}/workspace")
        }

    def delete_snapshot(self, who: Principal, snapshot_id: str) -> None:
        self.blobs.delete_prefix(self._snapshot(who, snapshot_id))

    # --- helpers ----------------------------------------------------------------------------

    def _write_meta(self, key: str, who: Principal, **more: Any) -> None:
        meta = {"owner_id": who.id, "created": datetime.now(UTC).isoformat(), **more}
        self.blobs.write_bytes(key, json.dumps(meta).encode())

    def _owned(self, who: Principal, prefix: str, meta_key: str, what: str, ident: str) -> str:
        try:
            meta = json.loads(self.blobs.read_bytes(f"{prefix}/{meta_key}"))
        except BlobNotFound:
            raise NotFound(f"No {what} {ident!r} exists.") from None
        if meta.get("owner_id") != who.id and not who.is_owner:
            raise NotFound(f"No {what} {ident!r} exists (or it is not yours).")
        return prefix

    def _session(self, who: Principal, session_id: str) -> str:
        _check_id(session_id, "session")
        return self._owned(who, f"{SESSIONS}/{session_id}", "session.json", "session", session_id)

    def _snapshot(self, who: Principal, snapshot_id: str) -> str:
        _check_id(snapshot_id, "snapshot")
        return self._owned(
            who, f"{SNAPSHOTS}/{snapshot_id}", "snapshot.json", "snapshot", snapshot_id
        )

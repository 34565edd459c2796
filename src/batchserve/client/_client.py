"""The client: log in, publish, find and delete services.

Every operation is a method of :class:`ClientBase`, written once over a runner; :class:`Client`
only chooses the blocking runner and owns its ``httpx.Client``. An asyncio client is the same base
with :class:`~batchserve.client._runner.AsyncRunner` and an ``httpx.AsyncClient``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

from batchserve._version import __version__
from batchserve.client import _ops
from batchserve.client._batch import Batch
from batchserve.client._batchtasks import BatchTasks
from batchserve.client._publish import prepare_publication
from batchserve.client._runner import Runner, Session, SyncRunner
from batchserve.client._service import (
    Service,
    batch_from_info,
    listing_filters,
    paged,
    service_from_info,
)
from batchserve.client._wire import Op
from batchserve.errors import UsageError

DEFAULT_TIMEOUT = 60.0
USER_AGENT = f"batchserve-python/{__version__}"


class ClientBase:
    """The client's operations; subclasses provide ``self._runner``."""

    _runner: Runner

    def publish_service(
        self,
        name: str,
        code: Any,
        *,
        init: Any = None,
        models: Mapping[str, Any] | None = None,
        objects: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
        artifacts: list[str] | None = None,
        version: str | None = None,
        description: str = "",
        alias: str | None = None,
        vectorized: bool = False,
        resources: Mapping[str, Any] | None = None,
    ) -> Service:
        """Publish ``code`` as the web service ``name`` and return it.

        ``code`` is a function or a string of Python code; ``init`` (optional) runs once per worker
        before it. ``models`` and ``objects`` are named values the code can use. ``inputs`` and
        ``outputs`` map names to ``int``, ``float``, ``str`` or ``bool``; ``inputs`` may be left out
        for a function whose parameters are all annotated with those types. ``artifacts`` names the
        files the code writes that are returned with each result. Without ``version`` the server
        generates one. ``alias`` names the service object's call method (default: the function's
        name, or ``consume``). With ``vectorized=True`` the function is called once per chunk with
        a pandas DataFrame of the inputs and returns one row per input row (a DataFrame, a
        Series, a NumPy array or a dict of columns); a failing call is split until only the
        failing records fail. ``resources`` is what each worker running the service needs:
        ``{"num_cpus": 2, "num_gpus": 0.5, "memory": "4GiB"}`` (CPUs and GPUs may be fractions;
        memory is bytes or a size string); left out, one CPU, no GPU and no memory reserved. The
        server refuses resources none of its workers can have.
        """
        return self._runner.run(
            self._publish(
                name,
                code,
                init=init,
                models=models,
                objects=objects,
                inputs=inputs,
                outputs=outputs,
                artifacts=artifacts,
                version=version,
                description=description,
                alias=alias,
                vectorized=vectorized,
                resources=resources,
            )
        )

    def _publish(self, name: str, code: Any, **options: Any) -> Op[Service]:
        publication = prepare_publication(name, code, **options)
        info = yield from _ops.publish_service(json.dumps(publication.metadata), publication.bundle)
        return service_from_info(info, self._runner)

    def get_service(self, name: str, version: str | None = None) -> Service:
        """The service ``name`` at ``version``, or its newest version when ``version`` is None."""
        return self._runner.run(self._get_service(name, version))

    def _get_service(self, name: str, version: str | None) -> Op[Service]:
        info = yield from _ops.get_service(name, version)
        return service_from_info(info, self._runner)

    def list_services(self, name: str | None = None) -> list[Service]:
        """Every service version, or every version of ``name``, oldest first."""
        return self._runner.run(self._list_services(name))

    def _list_services(self, name: str | None) -> Op[list[Service]]:
        infos = yield from _ops.list_services(name)
        return [service_from_info(info, self._runner) for info in infos]

    def delete_service(self, name: str, version: str, *, force: bool = False) -> None:
        """Delete one version of a service, with its batches.

        The server refuses (:class:`~batchserve.errors.ConflictError`) while other users have
        batches of it; an owner may delete it anyway with ``force=True``, their batches too.
        """
        return self._runner.run(self._delete_service(name, version, force))

    def _delete_service(self, name: str, version: str, force: bool) -> Op[None]:
        if not version:
            raise UsageError("delete_service() needs the version to delete, e.g. version='v1.0.0'.")
        yield from _ops.delete_service(name, version, force)

    def service_publishers(self, name: str) -> dict[str, Any]:
        """Who may add versions under the service name ``name``: ``{"name", "owner",
        "granted": [{"username", "granted_by", "granted_at"}, ...]}``. The owner is the name's
        first publisher; users with the owner role may always publish too."""
        return self._runner.run(_ops.service_publishers(name))

    def grant_publisher(self, name: str, username: str) -> dict[str, Any]:
        """Let ``username`` add versions under the service name ``name`` (the name's owner, or
        an owner, may); returns what :meth:`service_publishers` returns."""
        return self._runner.run(_ops.grant_publisher(name, username))

    def revoke_publisher(self, name: str, username: str) -> dict[str, Any]:
        """Take back the grant of ``name`` to ``username``: the versions they published stay;
        returns what :meth:`service_publishers` returns."""
        return self._runner.run(_ops.revoke_publisher(name, username))

    def list_batches(
        self,
        *,
        state: str | Iterable[str] | None = None,
        service: str | None = None,
        version: str | None = None,
        metadata: Mapping[str, str] | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int = _ops.BATCHES_PAGE_SIZE,
    ) -> Iterator[Batch]:
        """The batches you may see (every batch, for an owner), newest first, read a page at a
        time as the iteration goes on.

        ``state`` keeps batches in that state (or any of several); ``service`` (and ``version``)
        keeps one service's batches; ``metadata`` keeps those whose metadata has every one of
        these pairs; ``created_after`` / ``created_before`` bound the creation time.
        ``page_size`` (1 to 1000) is the number of batches per request.
        """
        if version is not None and service is None:
            raise UsageError("version= needs service=, the name of the service it belongs to.")
        filters = listing_filters(state, metadata, created_after, created_before, page_size)
        if service is not None:
            filters["service"] = service
            if version is not None:
                filters["version"] = version
        services: dict[tuple[str, str], Service] = {}  # each service is read once per listing
        for info in paged(
            self._runner, lambda cursor: _ops.list_batches(filters, cursor, page_size)
        ):
            ref = info.get("service") or {}
            key = (str(ref.get("name")), str(ref.get("version")))
            if key not in services:
                services[key] = self.get_service(*key)
            yield batch_from_info(services[key], info)

    def whoami(self) -> dict[str, Any]:
        """The logged-in user: ``{"username": ..., "role": ...}``."""
        return self._runner.run(_ops.me())


class Client(ClientBase):
    """A blocking client of a batchserve server.

    Log in with ``username`` and ``password`` (the password is sent once and not kept), or give an
    access ``token`` to use as it is. ``timeout`` is in seconds per network operation (None: no
    limit). ``transport`` is an ``httpx`` transport to use instead of the network (tests, an app
    served in-process).
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        session = _session(url, username, password, token)
        self.url = str(url).rstrip("/")
        self._session = session
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )
        self._runner = SyncRunner(session, self._http)
        #: The batch domain: ``client.batch.get(id)``, ``client.batch.list_info()``.
        self.batch = BatchTasks(self._runner)
        if session.has_credentials:
            try:
                self._runner.run(session.login())
            except BaseException:
                self._http.close()
                raise

    @property
    def token(self) -> str | None:
        """The access token in use (it changes when it is refreshed)."""
        return self._session.access_token

    def close(self) -> None:
        """Close the client's connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.url}>"


def _session(url: str, username: str | None, password: str | None, token: str | None) -> Session:
    """Check the connection arguments shared by every client and build its session."""
    try:
        parsed = httpx.URL(str(url))
    except (httpx.InvalidURL, TypeError) as exc:
        raise UsageError(f"{url!r} is not a server URL like 'http://127.0.0.1:8000'.") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"{url!r} is not a server URL like 'http://127.0.0.1:8000'.")
    if token is not None and username is not None:
        raise UsageError("Give either token= or username= and password=, not both.")
    if username is not None and password is None:
        raise UsageError(f"A password is needed to log in as {username!r}.")
    if password is not None and username is None:
        raise UsageError("A username is needed along with the password.")
    return Session(username=username, password=password, token=token)

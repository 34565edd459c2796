"""Server settings, read from ``BATCHSERVE_*`` environment variables and the command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_home() -> Path:
    return Path(os.path.expanduser("~")) / ".batchserve"


def with_driver(url: str) -> str:
    """A database URL that names its driver: a plain PostgreSQL URL gets psycopg 3, the driver
    batchserve installs (SQLAlchemy's default for ``postgresql://`` is psycopg2, and it does not
    know ``postgres://`` at all). Other URLs, and URLs that name a driver, are kept as given."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(text: str) -> int | None:
    """``2GiB``, ``512MB``, ``1000000`` as bytes; ``""`` or ``none`` as None."""
    value = text.strip().lower().replace(" ", "")
    if value in ("", "none"):
        return None
    number = value.rstrip("kmgtib")
    unit = value[len(number) :]
    if unit not in _UNITS or not number:
        raise ValueError(f"{text!r} is not a size; write it like 2GiB, 512MB or 1000000.")
    return int(float(number) * _UNITS[unit])


class Settings(BaseSettings):
    """Everything the embedded server needs to know; every field is ``BATCHSERVE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="BATCHSERVE_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="data directory")
    host: str = "127.0.0.1"
    port: int = 8000
    # Worker processes of the local executor; on Ray, the actors run at once (default: as many
    # as the cluster has CPUs). 0: an API node, which runs no service code (compute nodes
    # sharing its PostgreSQL store do).
    workers: int | None = Field(None, ge=0)
    # Seconds a node's lease lasts without a heartbeat (one a second): a node silent for longer
    # is dead, and its chunks run again elsewhere.
    node_lease: float = Field(10.0, ge=2.0)
    # Default: SQLite in the data directory. PostgreSQL: postgresql://user:password@host/db.
    database_url: str | None = None
    # Where upload parts, results, artifacts and bundles live. Default: the blobs folder of the
    # data directory; file:///path for another folder (a shared one, for several nodes), or
    # s3://bucket/prefix for an S3-compatible store (configured by the AWS_* variables).
    blob_url: str | None = None
    # Where chunks run: "local", the server's own pool of worker processes, or "ray", actors on
    # the Ray cluster at ray_address (a head node's host:port, or "auto" for the cluster this
    # machine belongs to; the ray extra must be installed).
    executor: str = Field("local", pattern="^(local|ray)$")
    ray_address: str = "auto"
    admin_password: str | None = None  # set the admin password instead of generating one
    access_token_lifetime: int = 3600  # seconds, as ML Server
    refresh_token_lifetime: int = 336 * 3600  # seconds of inactivity, as ML Server
    # Passwords checked at once (argon2: about 64 MiB and 0.1 s each). Further logins wait up
    # to login_wait seconds for their turn, then get 503 with Retry-After.
    login_concurrency: int = Field(2, ge=1)
    login_wait: float = Field(2.0, ge=0)
    max_upload_bytes: int = 20 * 1024**3
    # The longest line of uploaded CSV, TSV or JSON Lines records: a line is held whole while
    # it is parsed, and one longer is refused (413) once this much of it has arrived.
    max_line_bytes: int = Field(64 * 1024**2, ge=1024**2)
    # Results the ML Server face's GET /api/{name}/{version}/batch/{id} returns at most at once;
    # its start and limit parameters page through more (see "Coming from Machine Learning
    # Server" in the README).
    mlserver_results_limit: int = Field(10_000, ge=1)
    # The HTTP transport (see batchserve.server.limits and batchserve.server.protocol). Every
    # request body has a size limit, checked against Content-Length and again as it arrives:
    # records uploaded to a batch max_upload_bytes; a service bundle, or an object uploaded to
    # an ML Server session, max_bundle_bytes; the JSON array of an ML Server batch
    # max_json_batch_bytes; any other JSON body max_json_bytes; the bodies of the routes that
    # need no token (log-in, refresh) max_login_bytes.
    max_bundle_bytes: int = Field(2 * 1024**3, ge=1)
    max_json_batch_bytes: int = Field(64 * 1024**2, ge=1)
    max_json_bytes: int = Field(16 * 1024**2, ge=1)
    max_login_bytes: int = Field(64 * 1024, ge=1)
    # Seconds a client may take to send a request's headers (from its first byte, or from the
    # connection's opening), and may stay silent while sending its body.
    header_timeout: float = Field(30.0, gt=0)
    body_timeout: float = Field(60.0, gt=0)
    # Uploads (batch records, bundles, session objects) one user may send at once; the next
    # gets 429 with Retry-After.
    max_uploads_per_user: int = Field(4, ge=1)
    # Threads for reading uploads and for waiting on consumes, apart from the 40 threads that
    # serve every other route (health, log-in, status): neither can take those.
    upload_threads: int = Field(16, ge=1)
    consume_threads: int = Field(16, ge=1)
    # Seconds a stopping server waits for the requests in progress before it cancels them.
    shutdown_timeout: float = Field(10.0, ge=0)
    # Chunks are cut as they are handed out, from what the service's chunks cost (see
    # batchserve.engine.costs): at most this many records, and, while much of a batch is left,
    # at most about this many seconds of work.
    max_chunk_size: int = Field(1_000_000, ge=1)
    target_chunk_seconds: float = Field(0.5, gt=0)
    max_worker_loss_retries: int = 3  # a chunk whose worker dies is retried this many times
    # A consume (request-response) is stopped after this many seconds, and when its client goes
    # away. At most consume_workers workers run consumes at once (default: half, at least one),
    # so requests cannot take every worker from batches; a waiting consume takes the next free
    # worker before any chunk.
    consume_timeout: float = Field(600.0, gt=0)
    consume_workers: int | None = Field(None, ge=1)
    # The worker boundary (see batchserve.worker.sandbox). sandbox: "auto" sandboxes the workers
    # with bubblewrap where it runs (Linux) and warns where it does not; "bwrap" refuses to
    # start without it; "off" runs service code with the server's rights (trusted users only).
    sandbox: str = Field("auto", pattern="^(auto|bwrap|off)$")
    # "none": sandboxed workers have no network (not even the host's loopback, where the
    # database may listen); "host": they share the host's.
    worker_network: str = Field("none", pattern="^(none|host)$")
    # A server running as root runs each worker slot under its own uid: this one, plus the slot.
    worker_uid_base: int = Field(64000, ge=1000, le=2**31 - 2**16)
    # Memory (address space) one worker may take, in bytes (or with a unit: 2GiB, 512MB); a
    # record that needs more fails with a MemoryError saying so. None: no limit.
    worker_memory: int | None = None
    progress_interval: float = 0.25  # seconds between progress reports from a worker
    # The highest batch priority a contributor or reader may set (owners: up to 1000). At 0,
    # the default priority, users may lower their own batches below others' but never put them
    # ahead: a higher ceiling lets every user claim it, and the priority means nothing again.
    max_user_priority: int = Field(0, ge=-1000, le=1000)
    # Environment variables refused to batches by default (LD_PRELOAD, PYTHONPATH, ...; see
    # batchserve.engine.environment) that every user may set anyway: names, comma-separated.
    allowed_environment: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # GET /metrics (Prometheus) answers owners' access tokens, and this token: a long-lived
    # secret for the scraper ("authorization: credentials" in its configuration), which grants
    # nothing else. A compute node has no HTTP face: with metrics_port it serves its own figures
    # there, without a token, on metrics_host (default: only this machine).
    metrics_token: str | None = Field(None, min_length=16)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("allowed_environment", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value

    @field_validator("worker_memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> object:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("blob_url")
    @classmethod
    def _blob_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("file:///", "s3://")):
            raise ValueError(
                f"{url!r} is not a blob store this server can use; give a folder as "
                "file:///absolute/path, or an S3 bucket as s3://bucket/prefix."
            )
        return url

    @field_validator("database_url")
    @classmethod
    def _database_driver(cls, url: str | None) -> str | None:
        return with_driver(url) if url else None

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'batchserve.db'}"

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def blob_store_url(self) -> str:
        return self.blob_url or f"file://{self.blobs_dir}"

    @property
    def admin_password_file(self) -> Path:
        return self.home / "admin-password"

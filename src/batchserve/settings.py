"""Server settings, read from ``BATCHSERVE_*`` environment variables and the command line."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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


class Settings(BaseSettings):
    """Everything the embedded server needs to know; every field is ``BATCHSERVE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="BATCHSERVE_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="data directory")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    # Default: SQLite in the data directory. PostgreSQL: postgresql://user:password@host/db.
    database_url: str | None = None
    admin_password: str | None = None  # set the admin password instead of generating one
    access_token_lifetime: int = 3600  # seconds, as ML Server
    refresh_token_lifetime: int = 336 * 3600  # seconds of inactivity, as ML Server
    max_upload_bytes: int = 20 * 1024**3
    # Chunks are cut as they are handed out, from what the service's chunks cost (see
    # batchserve.engine.costs): at most this many records, and, while much of a batch is left,
    # at most about this many seconds of work.
    max_chunk_size: int = Field(1_000_000, ge=1)
    target_chunk_seconds: float = Field(0.5, gt=0)
    max_worker_loss_retries: int = 3  # a chunk whose worker dies is retried this many times
    progress_interval: float = 0.25  # seconds between progress reports from a worker

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
    def admin_password_file(self) -> Path:
        return self.home / "admin-password"

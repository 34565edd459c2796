"""Server settings, read from ``BATCHSERVE_*`` environment variables and the command line."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(os.path.expanduser("~")) / ".batchserve"


class Settings(BaseSettings):
    """Everything the embedded server needs to know; every field is ``BATCHSERVE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="BATCHSERVE_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="data directory")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    database_url: str | None = None  # default: SQLite in the data directory
    admin_password: str | None = None  # set the admin password instead of generating one
    access_token_lifetime: int = 3600  # seconds, as ML Server
    refresh_token_lifetime: int = 336 * 3600  # seconds of inactivity, as ML Server
    max_upload_bytes: int = 20 * 1024**3
    default_chunk_size: int = 1000  # records per chunk when neither count nor speed is known
    max_chunk_size: int = 100_000
    # Chunks are sized to take about this long, once a service's time per record is measured.
    target_chunk_seconds: float = Field(0.5, gt=0)
    max_worker_loss_retries: int = 3  # a chunk whose worker dies is retried this many times
    progress_interval: float = 0.25  # seconds between progress reports from a worker

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'batchserve.db'}"

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def admin_password_file(self) -> Path:
        return self.home / "admin-password"

"""Server settings: the database URL names the driver batchserve installs."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchserve.settings import Settings


@pytest.mark.parametrize(
    ("given", "used"),
    [
        (
            "postgresql://ann:pw@db.example:5432/batchserve",
            "postgresql+psycopg://ann:pw@db.example:5432/batchserve",
        ),
        ("postgres://ann@db.example/batchserve", "postgresql+psycopg://ann@db.example/batchserve"),
        (
            "postgresql+psycopg://ann@db.example/batchserve",
            "postgresql+psycopg://ann@db.example/batchserve",
        ),
        (
            "postgresql+psycopg2://ann@db.example/batchserve",
            "postgresql+psycopg2://ann@db.example/batchserve",
        ),
        ("sqlite:////var/lib/batchserve/meta.db", "sqlite:////var/lib/batchserve/meta.db"),
    ],
)
def test_a_plain_postgresql_url_uses_psycopg_3(given: str, used: str):
    assert Settings(database_url=given).db_url == used


def test_the_database_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BATCHSERVE_DATABASE_URL", "postgres://ann@db.example/batchserve")
    assert Settings().db_url == "postgresql+psycopg://ann@db.example/batchserve"


def test_without_a_database_url_the_store_is_sqlite_in_the_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("BATCHSERVE_DATABASE_URL", raising=False)
    assert Settings(home=tmp_path).db_url == f"sqlite:///{tmp_path / 'batchserve.db'}"


def test_the_blob_store_is_the_data_directorys_folder_unless_given(tmp_path):
    from batchserve.settings import Settings

    assert Settings(home=tmp_path).blob_store_url == f"file://{tmp_path / 'blobs'}"
    other = Settings(home=tmp_path, blob_url=f"file://{tmp_path / 'shared'}")
    assert other.blob_store_url == f"file://{tmp_path / 'shared'}"
    s3 = Settings(home=tmp_path, blob_url="s3://bucket/prefix")
    assert s3.blob_store_url == "s3://bucket/prefix"
    with pytest.raises(ValueError, match=r"file:///absolute/path.*s3://bucket/prefix"):
        Settings(home=tmp_path, blob_url="gs://bucket/prefix")


def test_the_executor_is_local_unless_ray_is_chosen(tmp_path):
    from batchserve.settings import Settings

    assert Settings(home=tmp_path).executor == "local"
    assert Settings(home=tmp_path, executor="ray").executor == "ray"
    with pytest.raises(ValueError, match=r"local|ray"):
        Settings(home=tmp_path, executor="kubernetes")

"""The blob store: where upload parts, result files, artifacts and service bundles live."""

from batchserve.blobs.base import BlobNotFound, BlobStore, blob_store_from_url
from batchserve.blobs.local import LocalBlobStore

__all__ = ["BlobNotFound", "BlobStore", "LocalBlobStore", "blob_store_from_url"]

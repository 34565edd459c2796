"""The blob store: where upload parts, result files, artifacts and service bundles live."""

from batchserve.blobs.base import (
    BlobNotFound,
    BlobStore,
    BlobStoreUnavailable,
    blob_store_from_url,
)
from batchserve.blobs.local import LocalBlobStore

# The S3 store (batchserve.blobs.s3) is not imported here: it needs obstore (the s3 extra), which
# a server on a folder never needs; blob_store_from_url imports it for s3:// URLs.
__all__ = [
    "BlobNotFound",
    "BlobStore",
    "BlobStoreUnavailable",
    "LocalBlobStore",
    "blob_store_from_url",
]

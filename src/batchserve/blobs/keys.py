"""Where everything lives in the blob store: the one key layout.

```
batches/<batch id>/                          everything of one batch (removed with it)
    inputs/<part>.arrow                      an upload part: Arrow IPC file of the records
    results/<chunk seq>.a<attempt>.arrows    one try of a chunk: Arrow IPC stream of results
    results/<chunk seq>.a<attempt>/<segment>  the same, as segments, on a store without append
    artifacts/<record index>/a<attempt>/<file name>  a record's artifact files, by the try of
                                             its chunk that wrote them
    tasks/<preparation|release>.bundle       the batch's job preparation and release code
services/<name>/<version>/<uuid>.bundle      a published service's bundle
```
"""

from __future__ import annotations

BATCHES = "batches"


def batch_prefix(batch_id: str) -> str:
    return f"{BATCHES}/{batch_id}"


def part_key(batch_id: str, seq: int) -> str:
    return f"{BATCHES}/{batch_id}/inputs/{seq:06d}.arrow"


def added_part_key(batch_id: str, addition: str, seq: int) -> str:
    """A part of records added to an open batch: ``addition`` names the addition (several may
    arrive at once; their parts get their numbers only once each is stored)."""
    return f"{BATCHES}/{batch_id}/inputs/{addition}-{seq:06d}.arrow"


def result_key(batch_id: str, seq: int, attempt: int, *, segmented: bool = False) -> str:
    """Where one try of a chunk writes its results: a file appended to, or, on a store that
    cannot append, a folder of segments (:mod:`batchserve.blobs.segments`; the key ends in /)."""
    if segmented:
        return f"{BATCHES}/{batch_id}/results/{seq:06d}.a{attempt}/"
    return f"{BATCHES}/{batch_id}/results/{seq:06d}.a{attempt}.arrows"


def artifact_key(batch_id: str, index: int, name: str, attempt: int) -> str:
    """Where a record's artifact goes, under the try of its chunk that writes it: a try whose
    node lost its claim writes beside the try that owns the chunk now, never over it (the
    chunk's attempt, like its result key, is the claim's fencing token)."""
    return f"{BATCHES}/{batch_id}/artifacts/{index}/a{attempt}/{name}"


def unfenced_artifact_key(batch_id: str, index: int, name: str) -> str:
    """Where artifacts went before they were kept by try: still read for batches of then."""
    return f"{BATCHES}/{batch_id}/artifacts/{index}/{name}"


#: The kinds of code a batch may carry besides its service's: run on each worker before its first
#: chunk of the batch, and after the batch ends.
JOB_TASKS = ("preparation", "release")


def job_task_key(batch_id: str, kind: str) -> str:
    """Where a batch's job preparation or release code is kept (``kind`` from JOB_TASKS)."""
    if kind not in JOB_TASKS:
        raise ValueError(f"unknown job task {kind!r}")
    return f"{BATCHES}/{batch_id}/tasks/{kind}.bundle"


def bundle_key(name: str, version: str, unique: str) -> str:
    return f"services/{name}/{version}/{unique}.bundle"

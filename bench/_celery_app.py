"""The Celery application of ``row_mode_peers.py``: the benchmark's function as Celery tasks.

``row_mode_peers.py`` starts a worker on it (``celery -A _celery_app worker -c 2 --pool prefork``,
run from bench/) and sends it records, one task per record or per list of records. The broker and
the result backend are the local Redis (``BENCH_CELERY_REDIS``, default db 14, so as not to mix
with other users of the server) and the queue is the benchmark's own (``BENCH_CELERY_QUEUE``).
"""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ.get("BENCH_CELERY_REDIS", "redis://127.0.0.1:6379/14")
QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "batchserve-bench")

app = Celery("batchserve_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


def _ratio(hp: float, wt: float) -> float:
    return hp / wt


@app.task
def ratio(hp: float, wt: float) -> float:
    return _ratio(hp, wt)


@app.task
def ratio_each(hps: list[float], wts: list[float]) -> list[float]:
    return [_ratio(h, w) for h, w in zip(hps, wts, strict=True)]

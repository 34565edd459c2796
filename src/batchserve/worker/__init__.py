"""The worker boundary: what runs beside service code, in the worker processes.

Service code is untrusted with respect to the server. A worker process gets a scrubbed
environment, runs (on Linux) in a sandbox where the database, the server's secrets and other
batches' files are out of reach (:mod:`~batchserve.worker.sandbox`), reads and writes only the
files the server opened for its task (:mod:`~batchserve.worker.grants`), and talks to the server
in a data-only format, never pickles (:mod:`~batchserve.worker.channel`).

What runs service code lives here and nowhere else: loading bundles (:mod:`.bundles`), the
runtime of a task (:mod:`.runtime`), the row and vectorized loops (:mod:`.rows`,
:mod:`.frames`), retries and timeouts (:mod:`.tries`), and the worker process itself
(:mod:`.main`). Executors (the local pool, later Ray) start workers that run it.
"""

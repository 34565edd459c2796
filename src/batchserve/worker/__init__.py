"""The worker boundary: what runs beside service code, in the worker processes.

Service code is untrusted with respect to the server. A worker process gets a scrubbed
environment, runs (on Linux) in a sandbox where the database, the server's secrets and other
batches' files are out of reach (:mod:`~batchserve.worker.sandbox`), reads and writes only the
files the server opened for its task (:mod:`~batchserve.worker.grants`), and talks to the server
in a data-only format, never pickles (:mod:`~batchserve.worker.channel`).
"""

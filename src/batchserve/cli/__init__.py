"""The ``batchserve`` command line."""

"""The engine: batch operations, the scheduler, the executors and the worker runtime."""

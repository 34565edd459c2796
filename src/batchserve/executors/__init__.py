"""Executors run tasks on workers: a supervised local process pool (the default), or Ray
actors (`batchserve.executors.ray`, with the `ray` extra)."""

from batchserve.executors.base import Executor
from batchserve.executors.process import ProcessExecutor

__all__ = ["Executor", "ProcessExecutor"]

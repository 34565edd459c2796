"""Executors run tasks on workers: a supervised local process pool (default)."""

from batchserve.engine.executors.base import Executor
from batchserve.engine.executors.process import ProcessExecutor

__all__ = ["Executor", "ProcessExecutor"]

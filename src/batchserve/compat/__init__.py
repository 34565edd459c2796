"""Opt-in fixes that let other clients talk to batchserve unchanged.

Nothing here is imported by batchserve itself: import the module of the client you use, once,
before using that client (``import batchserve.compat.azureml``).
"""

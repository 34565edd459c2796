"""The engine (the control plane): batch and service operations, scheduling and the composition
root. Service code runs elsewhere: in `batchserve.worker`, on the workers of an executor."""

"""The scheduler: which workers are resident under the memory budget, the queue and batching."""

"""The worker runtime: one child process holds one model; the IPC protocol; memory measurement.

Nothing here imports the workflow, the server or the benchmarks.
"""

"""The benchmarks: isolation, runtime overhead, startup, pipeline, server and Ray."""

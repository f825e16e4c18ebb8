"""Benchmarks: trioflow against dask.distributed (``python -m benchmarks``)
and comm throughput (``python -m benchmarks.comm``)."""

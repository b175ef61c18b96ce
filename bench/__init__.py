"""Benchmarks: `make bench`, `make bench-resolution` and the scripts named in docs/."""

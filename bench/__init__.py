"""Benchmarks, run from the checkout as modules: `python -m bench.NAME --help`. Shared pieces: `bench.common`."""

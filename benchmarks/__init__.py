"""Benchmarks: `python -m benchmarks` runs them all, `python -m benchmarks.<name>` one.

Each prints its figures beside a baseline."""

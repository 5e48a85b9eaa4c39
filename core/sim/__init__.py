"""Trace-driven discrete-event simulator of a GPU cluster running notebook kernels."""

"""Benchmarks of kernels and training steps; each prints a table and writes JSON (scripts/__init__.py)."""

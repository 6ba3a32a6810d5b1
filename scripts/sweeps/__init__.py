"""Sweeps in three parts: the spec and its grid of runs (spec.py), the runner that executes them
over GPUs with resume and retries (runner.py), and the results table and figures (results.py).
The command line is scripts/sweep.py."""

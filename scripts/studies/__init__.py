"""Studies made of many runs: the spec and its grid of runs (spec.py), the runner that executes them over
GPUs with resume and retries (runner.py), the results table and figures (results.py); the command lines
are sweep.py (width x learning rate), benchmark.py (steps to target) and lipschitz_plot.py."""

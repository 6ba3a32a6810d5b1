"""Command-line tools, grouped by purpose; each runs as a module from the repository root
(`python -m scripts.bench.step --config ...`) and imports the packages, never another tool's private names.

    bench/     kernels and steps: newton_schulz, step, comm, optimizers, constraints (timing.py: shared timers)
    studies/   sweeps of runs: sweep (width x lr), benchmark (steps to target on any text), lipschitz_plot;
               spec.py, runner.py, results.py are their library (a spec, its runs over GPUs, the tables)
    records.py curated logged runs: add, table, check, plot
    gpu/       the GPU check (check.py, first_run.sh: the prepared run on a borrowed GPU) and the record's
               script side by side (side_by_side.py); running.py: stages with time budgets
"""

"""What only a GPU can tell: the prepared check (check.py, first_run.sh) and the record side by side."""

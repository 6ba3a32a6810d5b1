# The repository root is on sys.path for the tests (pytest imports this file first).

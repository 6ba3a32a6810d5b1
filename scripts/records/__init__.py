"""Records: logged runs kept in the repository. book.py is the library (add, table, t-test), cli.py the
command line (`python -m scripts.records add|add-study|table|check|plot`)."""

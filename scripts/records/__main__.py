"""`python -m scripts.records ...`: scripts/records/cli.py."""

import sys

from scripts.records.cli import main

sys.exit(main())

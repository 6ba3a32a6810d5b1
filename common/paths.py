"""Where the repository is: relative paths in configs and commands (data/..., configs/..., runs/) are tried
from the working folder first, then from here."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

"""The key tables of docs/configuration.md, generated from the config dataclasses' own comments (every key,
its default, the comment on its line), so that the docs cannot drift from the code.

    python -m scripts.config_keys                                   # print the tables
    python -m scripts.config_keys --write docs/configuration.md     # replace them between the markers

tests/test_docs.py fails when the committed tables differ from what this prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config_io import key_rows
from optimizers.registry import OPTIMIZERS
from training.config import Config

BEGIN, END = "<!-- config keys: begin (python -m scripts.config_keys --write docs/configuration.md) -->", \
    "<!-- config keys: end -->"


def table(rows: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, note in rows:
        lines.append(f"| `{key}` | `{default}` | {note.replace('|', '/')} |")
    return lines


def tables() -> str:
    """The run's keys, then one table per optimizer's [optim.<name>] settings (the roles as sub-tables)."""
    out = ["### The run", "", *table(key_rows(Config())), "", "### `[optim]`", "",
           *table([("optim.name", '"muon"', f"the optimizer: {', '.join(OPTIMIZERS)}"),
                   ("optim.lr", "the optimizer's", "the main learning rate (roles without their own lr follow it)"),
                   ("optim.lr_scale", "1.0", "every role's peak lr (its own or optim.lr) times this: one knob that "
                                             "moves all learning rates together (the benchmark's search.roles = \"all\")")])]
    for name, spec in OPTIMIZERS.items():
        out += ["", f"#### `[optim.{name}]`: {spec.about}", "", *table(key_rows(spec.settings(), f"optim.{name}."))]
    return "\n".join(out) + "\n"


def rewrite(path: Path) -> bool:
    """Put the tables between the markers of `path`; True when the file changed."""
    text = path.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    if not rest or END not in rest:
        raise SystemExit(f"{path}: no '{BEGIN}' ... '{END}' markers")
    new = f"{head}{BEGIN}\n\n{tables()}\n{END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, help="the markdown file whose tables to replace")
    args = parser.parse_args(argv)
    if args.write:
        print(f"{args.write}: {'updated' if rewrite(args.write) else 'already current'}")
    else:
        sys.stdout.write(tables())
    return 0


if __name__ == "__main__":
    sys.exit(main())

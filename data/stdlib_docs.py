"""A second real text that every machine already has: the documentation inside Python's standard library
(the docstrings of its modules, classes and functions, and pydoc's help topics), about 2 million characters
of technical English, as character shards beside the Shakespeare ones. It answers "does a ranking found on
Shakespeare hold on other text?" without a download (docs/benchmarks.md).

    python -m data.stdlib_docs                 # data/cache/stdlib_docs.txt, then data/stdlib_docs_char/

Each module is one document (its dotted name on the first line, then its docstrings in source order), each
help topic another; the modules of tests, idlelib and site-packages are left out. The text is written as
data/shakespeare.py's `--text` input (documents separated by a line holding only <|endoftext|>) and that
script makes the shards, so this is exactly the "your own text" route. The text depends on the Python
version, which the command prints.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import sysconfig
from pathlib import Path

from common.atomic import atomic_write_text
from data import shakespeare

REPO = Path(__file__).resolve().parents[1]
SKIP = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"}


def module_text(path: Path, root: Path) -> str:
    """The module's dotted name, then every docstring of the module, its classes and functions in source order
    ("" when it has none or does not parse)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return ""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    nodes = sorted((n for n in ast.walk(tree) if isinstance(n, kinds)), key=lambda n: getattr(n, "lineno", 0))
    docs = [ast.get_docstring(node) for node in nodes]
    docs = [d.strip() for d in docs if d and d.strip()]
    if not docs:
        return ""
    name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
    return "\n\n".join([name, *docs])


def documents(stdlib: Path) -> list[str]:
    """Every module's text (sorted by path), then pydoc's help topics (sorted by name)."""
    texts = [module_text(p, stdlib) for p in sorted(stdlib.rglob("*.py"))
             if not SKIP & set(p.relative_to(stdlib).parts)]
    try:
        from pydoc_data.topics import topics
    except ImportError:
        topics = {}
    texts += [f"{name}\n\n{topics[name].strip()}" for name in sorted(topics)]
    return [t for t in texts if t]


def write_text(out: Path, stdlib: Path) -> int:
    """Write the documents as one --text file; return how many."""
    docs = documents(stdlib)
    if not docs:
        raise SystemExit(f"no documentation found under {stdlib}")
    atomic_write_text(out, f"\n{shakespeare.SEPARATOR_LINE}\n".join(docs) + "\n")
    return len(docs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                        help="the standard library to read (default: this Python's)")
    parser.add_argument("--text", type=Path, default=REPO / "data/cache/stdlib_docs.txt", help="the text written")
    parser.add_argument("--out", type=Path, default=REPO / "data/stdlib_docs_char", help="the shards' folder")
    args = parser.parse_args(argv)
    os.makedirs(args.text.parent, exist_ok=True)
    count = write_text(args.text, args.stdlib)
    version = ".".join(map(str, sys.version_info[:3]))
    print(f"wrote {args.text}: {count} documents of Python {version}'s standard library documentation")
    return shakespeare.main(["--text", str(args.text), "--out", str(args.out)])


if __name__ == "__main__":
    main()

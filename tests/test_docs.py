"""The README and docs/ say what exists: every shell command they show runs a file or module that exists with
flags it accepts and config keys that exist, their links point at files, and the configuration page's key
tables are the ones the code generates."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from common.config_io import key_rows
from optimizers.registry import OPTIMIZERS
from scripts import config_keys
from training.config import Config

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"```bash\n(.*?)```", re.S)
PLACEHOLDER = re.compile(r"[<>$*]|OUT|LOG|SPEC|HOST|my_corpus|mychange|runs/|sweeps/|curves\.png")
OUTPUTS = ("--out", "--out-dir", "--write", "--archive", "-d")  # what follows is written, not read


def config_keys_valid() -> set[str]:
    keys = {key for key, _, _ in key_rows(Config())} | {"optim.name", "optim.lr"}
    for name, spec in OPTIMIZERS.items():
        keys |= {key for key, _, _ in key_rows(spec.settings(), f"optim.{name}.")}
    return keys


KEYS = config_keys_valid()


def commands(page: Path) -> list[list[str]]:
    """Each command of the page's bash blocks as words (continuations joined, comments and env vars dropped,
    `for ...; do X; done` reduced to X)."""
    out = []
    for block in BLOCK.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r";|&&", line):
                words = shlex.split(part, comments=True)
                while words and re.match(r"^[A-Z_]+=", words[0]):  # OMP_NUM_THREADS=1 ...
                    words = words[1:]
                if words and words[0] not in ("for", "do", "done"):
                    out.append(words)
    return out


def python_target(words: list[str]) -> tuple[str, Path | None, list[str]]:
    """(module name or "", the file it runs, its arguments) of a python/torchrun command."""
    args = words[1:]
    if words[0] == "torchrun":
        args = [a for a in args if not a.startswith("--") and not a.startswith("-")]
        return "", REPO / args[0], words[words.index(args[0]) + 1:]
    if args[:1] == ["-m"]:
        spec = importlib.util.find_spec(args[1])
        assert spec is not None, f"no module {args[1]}"
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            origin = origin.with_name("__main__.py")
        return args[1], origin, args[2:]
    return "", REPO / args[0], args[1:]


def check_python(words: list[str], problems: list[str]) -> None:
    module, path, args = python_target(words)
    if not path.exists():
        problems.append(f"{' '.join(words)}: {path} does not exist")
        return
    source = path.read_text() + "".join(p.read_text() for p in path.parent.glob("cli.py"))
    for i, arg in enumerate(args):
        flag = arg.split("=", 1)[0]
        if i and args[i - 1] in OUTPUTS:
            continue
        if not flag.startswith("--"):
            if re.match(r"^(configs|scripts|data|records|docs)/", arg) and not PLACEHOLDER.search(arg):
                if not (REPO / arg).exists():
                    problems.append(f"{' '.join(words)}: {arg} does not exist")
            continue
        if "." in flag and path.name == "train_gpt.py":
            if flag[2:] not in KEYS:
                problems.append(f"{' '.join(words)}: no config key {flag[2:]}")
        elif f'"{flag}"' not in source:
            problems.append(f"{' '.join(words)}: {module or path.name} has no flag {flag}")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_commands_name_files_flags_and_keys_that_exist(page):
    problems = []
    for words in commands(page):
        if words[0] in ("python", "python3", "torchrun"):
            check_python(words, problems)
        elif words[0] == "bash":
            if not (REPO / words[1]).exists():
                problems.append(f"{' '.join(words)}: {words[1]} does not exist")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_point_at_files(page):
    missing = []
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
        if not target.startswith("http") and not (page.parent / target).exists():
            missing.append(target)
    assert not missing, missing


def test_the_configuration_page_lists_every_key_as_the_code_does():
    text = (REPO / "docs/configuration.md").read_text()
    between = text.split(config_keys.BEGIN)[1].split(config_keys.END)[0]
    assert between.strip() == config_keys.tables().strip(), (
        "docs/configuration.md is behind the code: python -m scripts.config_keys --write docs/configuration.md")
    assert all(f"| `{key}` |" in between for key in KEYS)

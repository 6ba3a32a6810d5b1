"""The layout holds: no module imports a module that imports it back, the packages import only downward
(LAYERS), no function of the project is longer than 60 lines and no file longer than 450, no sys.path
edit anywhere, scripts never import the entry point nor another script, and configs import no other
package inside a function."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "data", "model", "optimizers", "distributed", "training", "scripts")
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 450
# Who may import whom: a module imports its own package and packages of lower layers only (data and model
# sit side by side and import neither each other); the entry point and scripts sit on top.
LAYERS = {"common": 0, "data": 1, "model": 1, "optimizers": 2, "distributed": 3, "training": 4, "scripts": 5,
          "train_gpt": 6}


def project_files() -> list[Path]:
    files = [REPO / "train_gpt.py"]
    for package in PACKAGES:
        files += sorted((REPO / package).rglob("*.py"))
    return files


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """Project modules that `path` imports anywhere (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known}
    return found


def test_no_import_cycles():
    files = project_files()
    known = {module_name(f) for f in files}
    graph = {module_name(f): imports(f, known) - {module_name(f)} for f in files}
    # a package's __init__ re-exporting its modules is not a cycle of the modules themselves
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_scripts_never_import_the_entry_point():
    for path in sorted((REPO / "scripts").rglob("*.py")):
        assert "train_gpt" not in imports(path, {"train_gpt"}), path


def test_no_function_longer_than_the_limit():
    long = []
    for path in project_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_packages_import_only_downward():
    files = project_files()
    known = {module_name(f) for f in files}
    wrong = []
    for path in files:
        mine = module_name(path).split(".")[0]
        for dep in imports(path, known):
            theirs = dep.split(".")[0]
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{path.relative_to(REPO)} imports {dep}")
    assert not wrong, wrong


def test_no_file_longer_than_the_limit():
    long = [f"{p.relative_to(REPO)} ({n} lines)" for p in project_files()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not long, long


def test_no_sys_path_edits():
    """Everything imports as an installed package (pip install -e .; scripts run as modules)."""
    files = project_files() + sorted((REPO / "tests").rglob("*.py")) + [REPO / "conftest.py"]
    edit = re.compile(r"sys\.path\.(insert|append)\(")
    edits = [str(p.relative_to(REPO)) for p in files if p != Path(__file__) and edit.search(p.read_text())]
    assert not edits, edits


def _is_script(path: Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text() or path.name == "__main__.py"


def test_scripts_import_library_modules_only():
    """A script (a module with a __main__ block) imports packages and library modules, never another script."""
    scripts = {module_name(p) for p in (REPO / "scripts").rglob("*.py") if _is_script(p)}
    wrong = []
    for path in sorted((REPO / "scripts").rglob("*.py")):
        for dep in imports(path, scripts):
            if dep != module_name(path) and not (path.name == "__main__.py" and dep.endswith(".cli")):
                wrong.append(f"{path.relative_to(REPO)} imports the script {dep}")
    assert not wrong, wrong


def test_configs_import_nothing_inside_functions():
    """Each package's config module imports what it checks at the top: no function-level import of another
    package (the configs assemble; they do not reach into other packages at run time)."""
    configs = [REPO / f"{p}/config.py" for p in ("model", "data", "optimizers", "training")] + [
        REPO / "common/config_io.py"]
    lazy = []
    for path in configs:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lazy += [f"{path.relative_to(REPO)}:{n.lineno}" for n in ast.walk(node)
                         if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not lazy, lazy

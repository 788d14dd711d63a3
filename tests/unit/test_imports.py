"""The package's import structure: no cycles between finetune modules, and a light CLI start.

Which imports count: every `import finetune.x` / `from finetune.x import y` / `from finetune import x`
anywhere in a module, at the top AND inside functions. A function-level import is still a
dependency (it only moves the cost to call time), and hiding a cycle inside a function is the
usual way such cycles start. Imports under `if TYPE_CHECKING:` are not counted: they never run.
A package's `__init__` is counted as the package itself (`finetune.compare`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "finetune"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, module: str, modules: set[str], is_package: bool) -> set[str]:
    """The finetune modules a module imports (a name imported from a package counts when it is a module)."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules and name != module}


def import_graph() -> dict[str, set[str]]:
    """Module -> the finetune modules it imports, for every .py file in the package."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {
        name: _imported(ast.parse(path.read_text(encoding="utf-8")), name, modules, path.name == "__init__.py")
        for name, path in files.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of modules larger than one (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def _a_path(graph: dict[str, set[str]], group: list[str]) -> str:
    """The shortest loop through the group's first module, for the failure message: a -> b -> a."""
    start, members = group[0], set(group)
    previous: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return " -> ".join([start, *reversed(path[:-1]), start]) if len(path) > 1 else f"{start} -> {start}"
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return " -> ".join(group)


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_function_level_and_relative_imports(tmp_path):
    source = "def f():\n    from finetune import train\n    from .b import x\n"
    tree = ast.parse(source)
    modules = {"finetune.train", "finetune.pkg.b", "finetune.pkg.a"}
    assert _imported(tree, "finetune.pkg.a", modules, False) == {"finetune.train", "finetune.pkg.b"}
    typed = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from finetune import train\n")
    assert _imported(typed, "finetune.pkg.a", modules, False) == set()


def test_no_import_cycle_inside_finetune():
    graph = import_graph()
    assert "finetune.cli" in graph and graph["finetune.cli"], "the graph should see the package's imports"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles inside finetune/:\n" + "\n".join(_a_path(graph, c) for c in cycles)


def test_train_help_imports_no_web_or_model_library():
    """Building the CLI for `finetune train --help` must not import fastapi, torch or transformers."""
    code = (
        "import sys\n"
        "from finetune.cli import main\n"
        "sys.argv = ['finetune', 'train', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'fastapi', 'starlette', 'uvicorn', 'torch', 'transformers', 'peft'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr[-2000:]


def test_every_feature_command_loads_and_shows_help():
    """A registration line that points at a moved module fails here, not in a user's hands."""
    from typer.testing import CliRunner

    from finetune.cli import FEATURE_COMMANDS, app

    runner = CliRunner()
    for name in FEATURE_COMMANDS:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output[-1000:], result.exception)
    listing = runner.invoke(app, ["--help"]).output
    for name in ["train", "runs", "show", "recipe", "data", *FEATURE_COMMANDS]:
        assert name in listing, name


LEAVES = {"finetune.errors", "finetune.paths", "finetune.atomic", "finetune.console"}
CLI_MODULES = {"finetune.cli", "finetune.export_cli", "finetune.chat_cli"}


def _is_cli(module: str) -> bool:
    return module in CLI_MODULES or module.endswith(".cli") or module.endswith("__main__")


def test_the_layers_docs_architecture_describes():
    """The rules docs/architecture.md states that a reader relies on most, checked on the real graph."""
    graph = import_graph()
    inside = {m: {n for n in deps if n != "finetune"} for m, deps in graph.items()}
    for leaf in LEAVES:
        assert not inside[leaf], f"{leaf} is a leaf and may import nothing from finetune: {inside[leaf]}"
    for module, deps in inside.items():
        if not _is_cli(module):
            assert not {d for d in deps if _is_cli(d)}, f"{module} imports a cli module: only cli layers may"
    for module, deps in inside.items():
        if module.startswith("finetune.arena") and module != "finetune.arena.__main__":  # compare only via files
            other = {d for d in deps if not d.startswith("finetune.arena")} - LEAVES
            assert not other, f"{module} imports {other}; the arena may import only layer 0"
        if module.startswith("finetune.compare"):
            banned = {d for d in deps if d.split(".")[1] in {"train", "trainer", "estimate", "launch", "rank"}}
            assert not banned, f"{module} imports {banned}; compare never reaches into training or the estimate"

"""The import graph of the shared core has no cycles, counting imports inside functions too:
a back-reference (report -> sweep for a file name, data <-> methods) is how a layout starts to rot."""

import ast
from pathlib import Path

import safebasin

PACKAGE = Path(safebasin.__file__).parent


def import_graph() -> dict[str, set[str]]:
    modules = {p.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        pkg = name.rsplit(".", 1)[0] if path.name != "__init__.py" and "." in name else (name if path.name == "__init__.py" else "")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg.split(".") if pkg else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, node.module] if node.module else base)
                for alias in node.names:
                    full = f"{target}.{alias.name}" if target else alias.name
                    deps.add(full if full in modules else target)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = node.module if isinstance(node, ast.ImportFrom) else None
                for n in ([mod] if mod else [a.name for a in node.names]):
                    if n.startswith("safebasin."):
                        deps.add(n.removeprefix("safebasin."))
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*path, node, dep])
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_store_owns_its_file_name_and_data_does_not_know_methods():
    graph = import_graph()
    assert "sweep" not in graph["report"] and "methods" not in graph["data"]

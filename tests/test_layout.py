"""The layout tells the architecture (docs/architecture.md), and these checks keep it so:

- the library (rgd_core) never imports the benchmarks (rgd_bench) nor a UI (ComfyUI, A1111/Forge, gradio, the tab's
  rgd_ui); the one exception is the `rgd` command (rgd_core/cli.py), a host that reaches rgd_bench for `rgd demo` /
  `rgd bench` and rgd_ui for `rgd ui`, inside those commands only;
- no import circles between the package's modules;
- the package's own modules are imported at the top of a module, where a reader looks for them.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = sorted((ROOT / "rgd_core").rglob("*.py"))
BENCH = sorted((ROOT / "rgd_bench").rglob("*.py"))
TAB = sorted((ROOT / "rgd_ui").rglob("*.py"))
UI_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "modules", "gradio",
              "rgd_bench", "rgd_ui")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, inside_functions: bool | None = None) -> list[tuple[str, int]]:
    """(imported module, line) of every import in ``path``; ``inside_functions`` True/False filters by place."""
    tree = ast.parse(path.read_text())
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested |= {id(sub) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        if inside_functions is None or (id(node) in nested) == inside_functions:
            found += [(name, node.lineno) for name in names]
    return found


def test_the_library_imports_no_ui_and_no_benchmark_code():
    for path in LIBRARY:
        for name, line in imports(path):
            top = name.split(".")[0]
            if top not in UI_MODULES:
                continue
            allowed = path.name == "cli.py" and top in ("rgd_bench", "rgd_ui") and (name, line) in imports(path, True)
            assert allowed, f"{path.relative_to(ROOT)}:{line} imports {name}"


def test_importing_every_library_module_loads_neither_benchmarks_nor_comfyui():
    modules = [module_name(p) for p in LIBRARY]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules) +
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rgd_bench', 'rgd_ui', 'comfy', 'comfy_api', "
            "'folder_paths', 'gradio'))\nprint(bad)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_own_package_imports_are_at_the_top():
    for path in LIBRARY + BENCH + TAB:
        for name, line in imports(path, inside_functions=True):
            top = name.split(".")[0]
            host_import = top in ("rgd_bench", "rgd_ui") and path.name == "cli.py" and path.parent.name == "rgd_core"
            if top in ("rgd_core", "rgd_ui", "rgd_bench") and not host_import:
                raise AssertionError(f"{path.relative_to(ROOT)}:{line} imports {name} inside a function")


def test_no_import_circles():
    own = {module_name(p): p for p in LIBRARY + BENCH + TAB}
    graph = {}
    for module, path in own.items():
        targets = set()
        for name, _ in imports(path, inside_functions=False):
            while name and name not in own:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    # a module's package __init__ runs first: importing a.b imports a; that is not a circle
    done, on_path = set(), []

    def visit(module):
        if module in on_path:
            cycle = on_path[on_path.index(module):] + [module]
            if not all(m == cycle[0] or cycle[0].startswith(m + ".") or m.startswith(cycle[0] + ".")
                       for m in cycle):
                raise AssertionError("import circle: " + " -> ".join(cycle))
            return
        if module in done:
            return
        on_path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        on_path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert "rgd_core.method.unlearner" in graph  # the graph was really built

"""The shape of the code: layers, private modules, cycles, deferred imports, public names.

The import-linter contracts in ``pyproject.toml`` (``[tool.importlinter]``) state the layer
rule of issue 19: each package imports only lower layers, ``fergi.study``'s rooms import only
lower rooms, a private module (``_name``) is imported only from inside its own package, and
sibling packages never import each other in a circle. The tests here run each contract, then
add what import-linter cannot say: no cycle between *modules* (function-level imports
included, since a late import hides a cycle without removing it), no function-level import of
a fergi module unless it defers a heavy dependency and says which, the study's web routers
independent of each other, and every public name of ``tests/data/public_api.txt`` still
importable from where it was.

Each rule is also shown to fail: a copy of ``src/fergi`` with one bad import added must be
reported.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

import fergi
from tests.helpers.paths import REPO_ROOT, TEST_DATA

PYPROJECT = REPO_ROOT / "pyproject.toml"
CONTRACTS = [
    contract["id"]
    for contract in tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"][
        "contracts"
    ]
]
# The fergi these tests look at: the one this process imports (the checkout's src/).
FERGI_DIR = Path(fergi.__file__).resolve().parent
PUBLIC_API = TEST_DATA / "public_api.txt"

# A function-level import of a fergi module must carry this comment, on its line or the
# line above, naming the heavy package(s) it keeps out of import time:
#     from fergi.au import create_au_estimator  # deferred: torch
DEFERRED = re.compile(r"#\s*deferred:\s*([A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*)")


# --------------------------------------------------------------------------- helpers


def _copy_of_fergi(tmp_path: Path) -> Path:
    """A copy of fergi's Python files under ``tmp_path/src`` (its ``PYTHONPATH`` entry)."""
    root = tmp_path / "src"
    shutil.copytree(
        FERGI_DIR,
        root / "fergi",
        ignore=lambda folder, names: [
            n for n in names if not n.endswith(".py") and not (Path(folder) / n).is_dir()
        ]
        + ["__pycache__"],
    )
    return root


def _add_line(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n" + line + "\n", encoding="utf-8")


def _lint(contract: str, pythonpath: Path) -> subprocess.CompletedProcess:
    """Run one import-linter contract over the fergi found on ``pythonpath``."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run(
        [sys.executable, "-c", code, str(PYPROJECT), "--contract", contract, "--no-cache",
         "--no-logo"],
        cwd=pythonpath, env=env, capture_output=True, text=True, timeout=300,
    )


def _import_graph(pythonpath: Path) -> dict[tuple[str, str], list[int]]:
    """fergi's module import graph as grimp sees it: ``(importer, imported) -> lines``.

    grimp records every import statement, function-level ones included. It is built in a
    subprocess so that a copy of fergi on ``pythonpath`` is read, not the imported one.
    """
    code = textwrap.dedent("""
        import json, grimp
        g = grimp.build_graph("fergi", include_external_packages=False, cache_dir=None)
        edges = []
        for a in sorted(g.modules):
            for b in sorted(g.find_modules_directly_imported_by(a)):
                details = g.get_import_details(importer=a, imported=b)
                edges.append([a, b, sorted({d["line_number"] for d in details})])
        print(json.dumps(edges))
    """)
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    return {(a, b): lines for a, b, lines in json.loads(done.stdout)}


def _hop(edges, a: str, b: str) -> str:
    lines = ", ".join(str(n) for n in edges[a, b])
    return f"{a} (l.{lines})"


def find_cycles(edges: dict[tuple[str, str], list[int]]) -> list[str]:
    """One shortest cycle per strongly connected group of modules, as ``a (l.N) -> b ...``."""
    successors: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        if a != b:
            successors.setdefault(a, []).append(b)
            successors.setdefault(b, [])
    # Tarjan's strongly connected components, iteratively (no recursion limit to hit).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    for start in sorted(successors):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            nexts = successors[node]
            if i < len(nexts):
                work.append((node, i + 1))
                nxt = nexts[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    cycles = []
    for group in sorted(groups):
        members = set(group)
        first = group[0]
        # Breadth-first from the first module until one of its importers is reached.
        came_from: dict[str, str | None] = {first: None}
        queue = deque([first])
        while True:
            node = queue.popleft()
            if first in successors[node]:
                break
            for nxt in successors[node]:
                if nxt in members and nxt not in came_from:
                    came_from[nxt] = node
                    queue.append(nxt)
        path = [node]
        while came_from[path[-1]] is not None:
            path.append(came_from[path[-1]])
        path.reverse()
        hops = [_hop(edges, a, b) for a, b in zip(path, path[1:] + [first], strict=True)]
        knot = f" (one cycle of a knot of {', '.join(group)})" if len(group) > len(path) else ""
        cycles.append(" -> ".join(hops) + f" -> {first}{knot}")
    return cycles


def _routers(modules) -> list[str]:
    """The web study's router modules, whichever of the two layouts the rooms use.

    ``fergi.study[.web]._routes_<resource>`` or ``fergi.study.web.routes.<resource>``.
    """
    found = []
    for name in modules:
        parts = name.split(".")
        if parts[:2] != ["fergi", "study"]:
            continue
        if parts[-1].startswith("_routes_") or (
            len(parts) > 3 and parts[-2] in ("routes", "_routes") and parts[-1] != "__init__"
        ):
            found.append(name)
    return sorted(found)


def router_chains(edges: dict[tuple[str, str], list[int]]) -> tuple[list[str], list[str]]:
    """The routers found, and every import chain from one router to another."""
    routers = _routers({m for edge in edges for m in edge})
    chains = []
    for a in routers:
        for b in routers:
            if a != b and (chain := _chain(edges, a, b)):
                chains.append(" -> ".join(chain))
    return routers, chains


def _chain(edges, source: str, target: str) -> list[str] | None:
    """The shortest import chain from ``source`` to ``target``, or None."""
    successors: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        successors.setdefault(a, []).append(b)
    came_from = {source: None}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        if node == target:
            path = [node]
            while came_from[path[-1]] is not None:
                path.append(came_from[path[-1]])
            return path[::-1]
        for nxt in successors.get(node, ()):
            if nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    return None


# ----------------------------------------------------------- function-level imports


@dataclass
class _Import:
    line: int
    end_line: int
    fergi_targets: list[str]
    external: list[str]
    in_function: bool
    type_checking: bool


def _module_name(package_dir: Path, path: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports_of(package_dir: Path, path: Path, modules: set[str]) -> list[_Import]:
    name = _module_name(package_dir, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = package_dir.name
    found: list[_Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if isinstance(child, ast.Import):
                    bases = [alias.name for alias in child.names]
                    targets = bases
                else:
                    if child.level:
                        up = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join(up + ([child.module] if child.module else []))
                    else:
                        base = child.module or ""
                    bases = [base]
                    # `from fergi.study import _queue` imports the module fergi.study.jobs._queue.
                    targets = [
                        f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                        for alias in child.names
                    ]
                ours = [t for t in targets if t == top or t.startswith(top + ".")]
                external = [b.split(".")[0] for b in bases if b and b.split(".")[0] != top]
                found.append(_Import(child.lineno, child.end_lineno or child.lineno,
                                     sorted(set(ours)), external, in_function, type_checking))
                continue
            guarded = type_checking or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            )
            visit(child, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)), guarded)

    visit(ast.parse(path.read_text(encoding="utf-8")), False, False)
    return found


def _load_time_packages(package_dir: Path) -> tuple[dict, dict, dict]:
    """Each module's imports, and the outside packages importing it loads (transitively).

    Importing ``fergi.a.b`` also runs ``fergi/__init__.py`` and ``fergi/a/__init__.py``;
    imports inside functions and under ``if TYPE_CHECKING:`` do not run at import time.
    """
    paths = {_module_name(package_dir, p): p for p in sorted(package_dir.rglob("*.py"))}
    imports = {m: _imports_of(package_dir, p, set(paths)) for m, p in paths.items()}
    loads: dict[str, set[str]] = {}
    for module in paths:
        seen, todo, outside = set(), [module], set()
        while todo:
            m = todo.pop()
            if m in seen or m not in paths:
                continue
            seen.add(m)
            parts = m.split(".")
            todo += [".".join(parts[:i]) for i in range(1, len(parts))]
            for imp in imports[m]:
                if not imp.in_function and not imp.type_checking:
                    todo += imp.fergi_targets
                    outside.update(imp.external)
        loads[module] = outside - set(sys.stdlib_module_names) - {"__future__"}
    return paths, imports, loads


def function_level_import_problems(package_dir: Path) -> list[str]:
    """Function-level imports of fergi modules without an honest ``# deferred:`` comment.

    The comment must name a package that importing the target loads and that the importing
    module does not load already; otherwise the late import defers nothing and only hides
    a cycle (or nothing at all), and belongs at the top of the module.
    """
    paths, imports, loads = _load_time_packages(package_dir)
    problems = []
    for module, found in sorted(imports.items()):
        path = paths[module]
        lines = path.read_text(encoding="utf-8").splitlines()
        where = path.relative_to(package_dir.parent).as_posix()
        for imp in found:
            if not imp.in_function or not imp.fergi_targets:
                continue
            target = ", ".join(imp.fergi_targets)
            target_loads = set().union(*(loads.get(t, set()) for t in imp.fergi_targets))
            would_defer = sorted(target_loads - loads[module])
            # The statement's own lines, and the line above when it is a comment alone.
            said = lines[imp.line - 1: imp.end_line]
            if imp.line > 1 and lines[imp.line - 2].lstrip().startswith("#"):
                said.append(lines[imp.line - 2])
            marker = DEFERRED.search("\n".join(said))
            if marker is None:
                hint = (f"it would defer {', '.join(would_defer)}: say which with "
                        "'# deferred: <package>'" if would_defer
                        else "it defers nothing: move it to the top of the module")
                problems.append(f"{where}:{imp.line}: import of {target} inside a function; "
                                f"{hint}")
                continue
            for named in (n.strip().split(".")[0] for n in marker.group(1).split(",")):
                if named not in target_loads:
                    problems.append(f"{where}:{imp.line}: '# deferred: {named}', but importing "
                                    f"{target} does not load {named}")
                elif named in loads[module]:
                    problems.append(f"{where}:{imp.line}: '# deferred: {named}', but {module} "
                                    f"loads {named} already")
    return problems


# ------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def import_graph():
    return _import_graph(FERGI_DIR.parent)


@pytest.mark.parametrize("contract", CONTRACTS)
def test_import_contract_holds(contract):
    """Each import-linter contract of pyproject.toml is kept by today's code."""
    done = _lint(contract, FERGI_DIR.parent)
    if done.returncode != 0:
        # import-linter's own report: each broken rule with its importer, lines and chain.
        output = done.stdout + done.stderr
        report = output.partition("Broken contracts")[2] or output
        pytest.fail(f"import-linter contract {contract!r} is broken:{report.rstrip()}",
                    pytrace=False)


def test_no_import_cycle_between_modules(import_graph):
    """No module imports itself through others, counting imports inside functions."""
    cycles = find_cycles(import_graph)
    if cycles:
        pytest.fail(f"{len(cycles)} import cycle(s), `a (l.N) -> b`: line N of a imports b\n"
                    + "\n".join(cycles), pytrace=False)


def test_function_level_imports_say_what_they_defer():
    """A late import of a fergi module names the heavy package it keeps out of import time."""
    problems = function_level_import_problems(FERGI_DIR)
    if problems:
        pytest.fail(f"{len(problems)} function-level import(s) of fergi modules without an "
                    "honest '# deferred: <package>' comment:\n" + "\n".join(problems),
                    pytrace=False)


def test_web_routers_never_import_each_other(import_graph):
    """Each router of the web study stands alone: shared code lives outside the routers."""
    routers, chains = router_chains(import_graph)
    assert len(routers) >= 2, f"no web study routers found (looked under fergi.study): {routers}"
    if chains:
        pytest.fail("routers importing other routers:\n" + "\n".join(chains), pytrace=False)


def _public_api() -> dict[str, list[str]]:
    listed: dict[str, list[str]] = {}
    for line in PUBLIC_API.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            module, _, name = line.partition(":")
            listed.setdefault(module, []).append(name)
    return listed


@pytest.mark.parametrize("module", sorted(_public_api()))
def test_public_names_still_importable(module):
    """Every public name listed before the moves of issue 19 is importable from the same place."""
    names = _public_api()[module]
    try:
        imported = importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} no longer imports ({exc}); it had {len(names)} public names")
    missing = [name for name in names if not hasattr(imported, name)]
    if missing:
        pytest.fail(f"public names gone from {module}: {', '.join(missing)}", pytrace=False)


# ------------------------------------------------- the checks fail where they should


def test_layer_contract_reports_an_upward_import(tmp_path):
    """An import from a lower layer of a higher one (video -> study) breaks the contract."""
    src = _copy_of_fergi(tmp_path)
    _add_line(src / "fergi" / "video" / "__init__.py", "import fergi.study  # an upward import")
    done = _lint("layers", src)
    assert done.returncode != 0
    assert "fergi.video is not allowed to import fergi.study" in done.stdout, done.stdout
    assert "fergi.video -> fergi.study" in done.stdout, done.stdout


def test_rooms_contract_reports_an_upward_room_import(tmp_path):
    """The store importing the web room breaks the study's room order."""
    src = _copy_of_fergi(tmp_path)
    study = src / "fergi" / "study"
    # The rooms are made where the copy lacks them, so the check runs before and after the move.
    for room in ("web", "jobs", "processing", "content", "protocol", "store"):
        (study / room).mkdir(exist_ok=True)
        (study / room / "__init__.py").touch()
    _add_line(study / "store" / "__init__.py", "import fergi.study.web  # an upward import")
    done = _lint("study-rooms", src)
    assert done.returncode != 0
    assert "fergi.study.store is not allowed to import fergi.study.web" in done.stdout, done.stdout


def test_private_module_contract_reports_a_private_import(tmp_path):
    """Importing another package's private module (fergi.features._activation) is reported."""
    src = _copy_of_fergi(tmp_path)
    _add_line(src / "fergi" / "stats" / "__init__.py",
              "from fergi.features._activation import compute_activation_values  # private")
    done = _lint("private-modules", src)
    assert done.returncode != 0
    assert "fergi.stats -> fergi.features._activation" in done.stdout, done.stdout


def test_cycle_check_sees_a_cycle_hidden_in_a_function(tmp_path):
    """A cycle closed by a function-level import is still a cycle (printed with its lines)."""
    src = _copy_of_fergi(tmp_path)
    _add_line(src / "fergi" / "_errors.py",
              "def _late():\n    from fergi._atomic import publish  # closes a cycle\n")
    cycles = find_cycles(_import_graph(src))
    assert any(
        c.startswith("fergi._atomic (l.") and "-> fergi._errors (l." in c
        and c.endswith("-> fergi._atomic") for c in cycles
    ), cycles


def _tiny_package(tmp_path: Path, files: dict[str, str]) -> Path:
    """A package ``fergi`` under ``tmp_path`` with the given modules (paths and sources)."""
    package = tmp_path / "fergi"
    for name, source in {"__init__.py": "", **files}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(textwrap.dedent(source), encoding="utf-8")
    return package


def _problems_of(package: Path, module_file: str) -> list[str]:
    return [p for p in function_level_import_problems(package)
            if p.startswith(f"fergi/{module_file}:")]


@pytest.mark.parametrize(("comment", "expected"), [
    ("", "fergi/_late.py:3: import of fergi.schema inside a function; it defers nothing"),
    ("  # deferred: torch", "but importing fergi.schema does not load torch"),
    ("  # deferred: json", "but importing fergi.schema does not load json"),
])
def test_deferred_comment_must_name_what_the_import_loads(tmp_path, comment, expected):
    """No comment, or one naming a package the import does not load, is reported."""
    package = _tiny_package(tmp_path, {
        "schema.py": "import json\n\nAU_NAMES = ()\n",
        "_late.py": f"def f():\n    # a fergi module that loads no outside package\n"
                    f"    from fergi.schema import AU_NAMES{comment}\n",
    })
    problems = _problems_of(package, "_late.py")
    assert len(problems) == 1 and expected in problems[0], problems


def test_deferred_comment_accepted_when_true(tmp_path):
    """A late import that keeps a package out of import time, and says so, is accepted."""
    heavy = {"_heavy.py": "import numpy\n", "models/__init__.py": "from fergi._heavy import numpy\n"}
    honest = """
        def f():
            # deferred: numpy (the models need it; `fergi --help` does not)
            from fergi.models import numpy
            from fergi._heavy import (  # deferred: numpy
                numpy,
            )
    """
    package = _tiny_package(tmp_path, {**heavy, "_light.py": honest})
    assert _problems_of(package, "_light.py") == []
    # The same comment in a module that loads numpy already defers nothing.
    package = _tiny_package(tmp_path / "again", {**heavy, "_light.py": "import numpy\n" + textwrap.dedent(honest)})
    problems = _problems_of(package, "_light.py")
    assert len(problems) == 2 and all("fergi._light loads numpy already" in p for p in problems)
    # A comment two lines up, or on the line above that is code, covers nothing.
    package = _tiny_package(tmp_path / "third", {**heavy, "_light.py": """
        def f():
            # deferred: numpy
            x = 1
            from fergi._heavy import numpy
            from fergi.models import numpy  # deferred: numpy
            from fergi._heavy import numpy
    """})
    problems = _problems_of(package, "_light.py")
    assert [p.split(":")[1] for p in problems] == ["5", "7"], problems


def test_router_check_reports_one_router_importing_another():
    """Routers are found in either layout, and a chain between two of them is reported."""
    edges = {
        ("fergi.study.web.routes.answers", "fergi.study.web._shared"): [3],
        ("fergi.study.web._shared", "fergi.study.web.routes.prompts"): [7],
        ("fergi.study.web._routes_admin", "fergi.study.store"): [2],
        ("fergi.study.web.routes.prompts", "fergi.study.store"): [2],
    }
    routers, chains = router_chains(edges)
    assert routers == ["fergi.study.web._routes_admin", "fergi.study.web.routes.answers",
                       "fergi.study.web.routes.prompts"]
    assert chains == ["fergi.study.web.routes.answers -> fergi.study.web._shared -> "
                      "fergi.study.web.routes.prompts"]

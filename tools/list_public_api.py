"""Write the list of fergi's public names, one ``module:name`` a line.

A public module is one with no ``_``-prefixed part in its dotted name (``fergi``,
``fergi.au.train``, ``fergi.schema``, ``fergi.cli.serve``, ...). Its public names are its
``__all__``; a public module without ``__all__`` that is a package or a plain library
module such as ``fergi.schema`` contributes the names its source defines at top level
without a leading underscore. The CLI's subcommand modules (``fergi.cli.<command>``) are
not API: the CLI's interface is its command line.

``tests/test_architecture.py`` asserts every listed name is still importable from the same
module, so code moves inside fergi cannot drop a public name unnoticed. Regenerate the list
only when a name is deliberately added (or, in a release note, removed)::

    PYTHONPATH=src python tools/list_public_api.py > tests/data/public_api.txt
"""

from __future__ import annotations

import argparse
import ast
import importlib
import pkgutil
import sys
from pathlib import Path

HEADER = (
    "# fergi's public names, `module:name`, one a line: every one must stay importable\n"
    "# from that module (tests/test_architecture.py). Written by tools/list_public_api.py.\n"
)


def public_modules(package: str = "fergi") -> list[str]:
    """Dotted names of the public modules of ``package``, itself included, sorted."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        parts = info.name.split(".")
        if any(part.startswith("_") for part in parts):
            continue
        # The subcommand modules are the CLI's plumbing; `fergi.cli.main` is its API.
        if parts[:2] == [package, "cli"] and len(parts) > 2:
            continue
        names.append(info.name)
    return sorted(names)


def _defined_names(module) -> list[str]:
    """Top-level public names a module's source defines (for modules without ``__all__``)."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [name for name in names if not name.startswith("_")]


def public_names(package: str = "fergi") -> list[tuple[str, str]]:
    """``(module, name)`` for every public name of every public module of ``package``."""
    rows = []
    for module_name in public_modules(package):
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", None)
        if names is None:
            names = _defined_names(module)
        for name in names:
            if not hasattr(module, name):
                raise SystemExit(f"{module_name}.__all__ lists {name!r}, which it lacks")
            rows.append((module_name, name))
    return sorted(set(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="fergi")
    args = parser.parse_args(argv)
    sys.stdout.write(HEADER)
    for module, name in public_names(args.package):
        sys.stdout.write(f"{module}:{name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

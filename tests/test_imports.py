"""The package's modules import, alone and without optional drivers, and import no cycle.

- every module is importable (``pkgutil.walk_packages``);
- each one imports on its own in a fresh interpreter state with no optional
  driver installed (they are hidden by an import hook): the core needs none,
  and a module that adapts a driver fails only for that driver;
- the graph of module-level imports inside ``mailqueue`` (read with ``ast``;
  imports under ``if TYPE_CHECKING:`` and inside functions do not count,
  since they run after every module is loaded) has no cycle.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from proc_helpers import clean_env

import mailqueue

PACKAGE = Path(mailqueue.__file__).parent
#: Scripts that live in the package but run only inside a tool (alembic's migration environment).
NOT_IMPORTABLE = {"mailqueue.sql.migrations.env"}
#: The optional drivers (extras) and the packages they bring that mailqueue imports.
OPTIONAL = [
    "aio_pika",
    "aiormq",
    "pamqp",
    "yarl",
    "aiokafka",
    "asyncmy",
    "asyncpg",
    "redis",
    "litestar",
    "multipart",
    "uvicorn",
    "jinja2",
    "uvloop",
    "httptools",
    "dkim",
    "dns",
    "nacl",
]
#: Modules that adapt one driver, and the driver that their import needs.
NEEDS = {
    "mailqueue.backends.amqp": "aio_pika",
    "mailqueue.backends.kafka": "aiokafka",
    "mailqueue.sending.redis_limits": "redis",
    "mailqueue.contrib.litestar_app": "litestar",
}


def module_names(root: Path = PACKAGE, package: str = "mailqueue") -> list[str]:
    """Every module and package under ``root``, found from its files (nothing is imported)."""
    names = [package]
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            names.append(".".join((package, *parts)))
    return names


def needed_driver(name: str) -> str | None:
    """The driver a module needs, if it (or its package) adapts one."""
    for prefix, driver in NEEDS.items():
        if name == prefix or name.startswith(prefix + "."):
            return driver
    return None


# --- the import graph -------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    nodes: Iterable[ast.AST], *, deferred: bool, for_types: bool
) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements among ``nodes`` and inside them, except, unless ``for_types``,
    those under ``if TYPE_CHECKING:`` (never run) and, unless ``deferred``, those inside
    functions (run only when called)."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test) and not for_types:
            yield from _imports(node.orelse, deferred=deferred, for_types=for_types)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and not deferred:
            continue
        else:
            yield from _imports(ast.iter_child_nodes(node), deferred=deferred, for_types=for_types)


def import_graph(
    root: Path = PACKAGE, package: str = "mailqueue", *, deferred: bool = False, for_types: bool = False
) -> dict[str, set[str]]:
    """For each module of the package, the modules of the package it imports at module level
    (with ``deferred``, also in functions; with ``for_types``, also under ``TYPE_CHECKING``).

    ``from pkg import name`` depends on the submodule ``pkg.name`` if there is
    one, else on ``pkg`` itself. The parent packages that Python initializes
    first are not counted: a package's ``__init__`` may import its own modules.
    """
    names = set(module_names(root, package))
    graph: dict[str, set[str]] = {}
    for name in sorted(names):
        relative = name.split(".")[1:]
        path = root.joinpath(*relative)
        is_package = path.is_dir()
        source = path / "__init__.py" if is_package else path.with_suffix(".py")
        tree = ast.parse(source.read_text(encoding="utf-8"), str(source))
        here = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _imports(tree.body, deferred=deferred, for_types=for_types):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in names else base)
        graph[name] = {t for t in targets if t in names and t != name}
    return graph


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def _write(root: Path, files: Mapping[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_the_cycle_finder_sees_module_level_cycles_only(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    _write(
        root,
        {
            "__init__.py": "from pkg.a import A\n",
            "a.py": "from pkg import b\nA = 1\n",
            "b.py": "try:\n    from .c import C\nexcept ImportError:\n    C = None\n",
            "c.py": "class C:\n    from pkg.a import A\n",
            "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.e import E\n",
            "e.py": "import pkg.d\ndef late():\n    from pkg import f\n",
            "f.py": "import pkg.e\nE = 1\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.c"}  # relative, inside try
    assert graph["pkg.c"] == {"pkg.a"}  # in a class body
    assert graph["pkg.d"] == set()  # TYPE_CHECKING only
    assert graph["pkg.e"] == {"pkg.d"}  # the import in a function does not count
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    deferred = import_graph(root, "pkg", deferred=True)
    assert deferred["pkg.e"] == {"pkg.d", "pkg.f"}
    assert deferred["pkg.d"] == set()
    assert find_cycles(deferred) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.e", "pkg.f"]]
    everything = import_graph(root, "pkg", deferred=True, for_types=True)
    assert everything["pkg.d"] == {"pkg.e"}
    assert find_cycles(everything) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.d", "pkg.e", "pkg.f"]]


def test_no_import_cycle_inside_mailqueue() -> None:
    graph = import_graph()
    assert graph["mailqueue.client"] >= {"mailqueue.maintenance", "mailqueue.records"}  # it reads the package
    cycles = find_cycles(graph)
    assert cycles == [], "import cycles (module-level imports): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycle_hidden_in_a_function_or_a_type_check() -> None:
    """An import moved into a function or under ``TYPE_CHECKING`` only hides a cycle:
    ``client`` imported ``retention`` in its methods, and ``retention`` imported
    ``client`` for its annotations. Those count here too."""
    cycles = find_cycles(import_graph(deferred=True, for_types=True))
    assert cycles == [], "import cycles (counting imports in functions and for types): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


# --- importing ------------------------------------------------------------------------


def test_walk_packages_imports_every_module() -> None:
    failed: list[str] = []
    seen = [
        info.name
        for info in pkgutil.walk_packages(mailqueue.__path__, "mailqueue.", onerror=failed.append)
        if info.name not in NOT_IMPORTABLE
    ]
    assert failed == []
    assert set(seen) == set(module_names()) - {"mailqueue"} - NOT_IMPORTABLE
    for name in seen:
        importlib.import_module(name)


_ALONE = """
import importlib.abc, json, os, sys

OPTIONAL = set(sys.argv[1].split())

class HideOptional(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in OPTIONAL:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideOptional())
# the required third-party dependencies, loaded once; mailqueue itself is imported afresh per module
import alembic, aiosmtplib, click, email_validator, prometheus_client, pydantic, pydantic_settings
import sqlalchemy.ext.asyncio, yaml
for name in sys.argv[2:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            __import__(name)
            result = {"name": name}
        except BaseException as exc:
            missing = getattr(exc, "package", None) or (exc.name if isinstance(exc, ImportError) else None)
            missing = missing and missing.partition(".")[0]
            result = {"name": name, "error": f"{type(exc).__name__}: {exc}", "missing": missing}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        print(pipe.read().decode(), flush=True)
    os.waitpid(pid, 0)
"""


def test_each_module_imports_alone_without_optional_drivers() -> None:
    names = [n for n in module_names() if n not in NOT_IMPORTABLE]
    env = clean_env({"PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])})
    done = subprocess.run(
        [sys.executable, "-c", _ALONE, " ".join(OPTIONAL), *names],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    results = {r["name"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert sorted(results) == sorted(names)
    wrong = []
    for name, result in sorted(results.items()):
        driver = needed_driver(name)
        if driver is None and "error" in result:
            wrong.append(f"{name}: {result['error']}")
        elif driver is not None and result.get("missing") != driver:
            wrong.append(f"{name} should fail only for want of {driver}: {result.get('error', 'imported')}")
    assert wrong == []

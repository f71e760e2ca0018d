"""The package's layering, read from the source (every ``import`` / ``from`` statement, those inside functions too):
the core ``s3prl_distill/`` imports nothing above it, ``upstream`` imports no training code, and our modules import
each other without cycles, except the documented lazy one of the start-up hook. Imports under ``if TYPE_CHECKING:``
only name types and never run; they are left out. (Imports by computed name, such as
the registry's ``importlib.import_module(f"...{family}.hubconf")``, are not statements and are not seen.)"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]

CORE = "s3prl_distill"
UPSTREAM = "s3prl_distill.upstream"
ABOVE_CORE = ("s3prl_distill.pretrain", "s3prl_distill.downstream_recipes")
# The command line is assembled from every package's subcommands: the one core module allowed to import them.
CLI = "s3prl_distill.cli"

# s3prl_distill/_autoload.py runs at interpreter start-up (from a .pth file) and must import nothing heavy then: its
# import hooks import compat and registry inside functions, when s3prl itself is first imported; compat imports
# _autoload back (to install the hook when it is off). The hooks' edges are the cycle's lazy half, allowed only while
# they stay inside functions.
LAZY_EDGES = {("s3prl_distill._autoload", "s3prl_distill.compat"), ("s3prl_distill._autoload", "s3prl_distill.registry")}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the module of ours it imports (the package itself for a name defined in its __init__)
    path: Path
    line: int
    lazy: bool  # inside a function: runs when called, not when the source module is imported

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.source} imports {self.target}"


def folders() -> Dict[str, str]:
    """setup.py's FOLDERS (package -> top-level folder), read from its source so that the two cannot drift."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FOLDERS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no FOLDERS mapping")


def our_modules() -> Dict[str, Tuple[Path, bool]]:
    """Module name -> (file, is a package's __init__) for every Python file the packages install."""
    modules = {}
    for package, folder in folders().items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if any(not (base / Path(*parts[:depth]) / "__init__.py").is_file() for depth in range(len(parts))):
                continue  # not inside an installed package (e.g. a data folder)
            is_package = parts[-1] == "__init__"
            modules[".".join([package, *(parts[:-1] if is_package else parts)])] = (path, is_package)
    return modules


def _known(name: str, modules) -> str:
    """The longest prefix of ``name`` that is one of our modules (``a.b.attribute`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def _type_checking_only(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): its imports never run, they only name types."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"


def _statements(tree: ast.AST):
    """(import node, inside a function) for every import statement of a module that can run (not the type-only
    imports under ``if TYPE_CHECKING:``)."""
    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, lazy
            elif _type_checking_only(child):
                for branch in child.orelse:
                    yield from visit(ast.Module(body=[branch], type_ignores=[]), lazy)
                continue
            yield from visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    yield from visit(tree, False)


def imports(modules) -> List[Import]:
    found = []
    for source, (path, is_package) in modules.items():
        package = source if is_package else source.rpartition(".")[0]
        for node, lazy in _statements(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    if node.level - 1 >= len(anchor):
                        raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top package")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from package import submodule` imports that submodule; `from module import name`, the module.
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            targets = {_known(name, modules) for name in names if name.split(".")[0] == CORE}
            found.extend(Import(source, target, path, node.lineno, lazy)
                         for target in sorted(targets) if target and target != source)
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _report(offending: List[Import], rule: str) -> str:
    return f"{rule}:\n" + "\n".join(f"  {entry}" for entry in sorted(offending, key=str))


def _fail_on(offending: List[Import], rule: str) -> None:
    """Fails listing each offending import with its file and line."""
    if offending:
        pytest.fail(_report(offending, rule), pytrace=False)


def test_the_parser_sees_the_packages_and_their_imports():
    modules = our_modules()
    for name in (CORE, CLI, "s3prl_distill._autoload", UPSTREAM, *ABOVE_CORE, "s3prl_distill.pretrain.runner"):
        assert name in modules, name
    found = imports(modules)
    edges = {(entry.source, entry.target) for entry in found}
    # A relative import, a `from package import submodule` and a lazy one, each resolved to the module it loads.
    assert ("s3prl_distill.pretrain.runner", "s3prl_distill.pretrain.trainer") in edges
    assert ("s3prl_distill.pretrain.__main__", "s3prl_distill.pretrain.runner") in edges
    assert any(entry.lazy for entry in found if (entry.source, entry.target) in LAZY_EDGES)
    # head_config names EncoderConfig under `if TYPE_CHECKING:` only: no runtime edge back to model.config.
    assert ("s3prl_distill.model.config", "s3prl_distill.model.head_config") in edges
    assert ("s3prl_distill.model.head_config", "s3prl_distill.model.config") not in edges


def test_the_core_imports_nothing_above_it():
    """Neither the training packages nor the upstream floor (the registry finds the upstream families by package
    name, at run time: the one computed edge, see the module docstring)."""
    offending = [entry for entry in imports(our_modules())
                 if _within(entry.source, CORE) and entry.source != CLI
                 and not any(_within(entry.source, package) for package in (UPSTREAM, *ABOVE_CORE))
                 and any(_within(entry.target, package) for package in (UPSTREAM, *ABOVE_CORE))]
    _fail_on(offending, f"core modules (all but {CLI}) import upstream / pretrain / downstream_recipes")


def test_upstream_imports_no_training_code():
    offending = [entry for entry in imports(our_modules())
                 if _within(entry.source, UPSTREAM) and any(_within(entry.target, package) for package in ABOVE_CORE)]
    _fail_on(offending, "upstream modules import pretrain / downstream_recipes")


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_import_cycle_but_the_documented_lazy_one():
    found = imports(our_modules())
    hooks = [entry for entry in found if (entry.source, entry.target) in LAZY_EDGES]
    assert {(entry.source, entry.target) for entry in hooks} == LAZY_EDGES, "LAZY_EDGES names an import that is gone"
    eager = [entry for entry in hooks if not entry.lazy]
    _fail_on(eager, "the start-up hook's imports must stay inside functions")
    graph: Dict[str, Set[str]] = {}
    for entry in found:
        if (entry.source, entry.target) not in LAZY_EDGES:
            graph.setdefault(entry.source, set()).add(entry.target)
    problems = []
    for component in _cycles(graph):
        members = set(component)
        inside = [entry for entry in found
                  if entry.source in members and entry.target in members
                  and (entry.source, entry.target) not in LAZY_EDGES]
        problems.append(_report(inside, f"import cycle among {', '.join(component)}"))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)

"""The import graph of the project's packages, read from their source with `ast` (nothing is
imported), for the contract tests in tests/test_imports.py.

Every import statement counts, wherever it stands: at module level, under `if TYPE_CHECKING:`
and inside a function. A function-level import still runs, and still loads the module it
names, the first time the function is called; deferring it hides a dependency rather than
removing it, so the contracts treat it like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Calls on an event loop (or the asyncio module) that open a listening server; they arrive
# through an object, not an import, so the graph records each use as an import of `asyncio.NAME`.
SERVER_CALLS = frozenset(
    {"create_server", "create_unix_server", "start_server", "start_unix_server"}
)


@dataclass(frozen=True, slots=True)
class Import:
    """One edge: `source` names `target` at `line`; `where` is module, TYPE_CHECKING or function.

    Shown as `source:line`, the place a reader goes to see the import.
    """

    source: str
    target: str
    line: int
    where: str

    def __str__(self) -> str:
        place = {"module": "", "function": " (in a function)"}.get(self.where, f" ({self.where})")
        return f"{self.source}:{self.line}{place}"


@dataclass(frozen=True, slots=True, repr=False)
class Graph:
    """The modules found under a root and every import each of them makes."""

    files: dict[str, Path]
    imports: dict[str, list[Import]]

    def __repr__(self) -> str:
        return f"<Graph of {len(self.files)} modules>"

    def internal(self, source: str) -> Iterator[Import]:
        """The imports of `source` that name a module of the graph."""
        return (edge for edge in self.imports[source] if edge.target in self.files)

    def chain_to(self, start: str, forbidden: Iterable[str]) -> list[Import] | None:
        """The shortest import chain from `start` to a module named by `forbidden` (a name or
        a prefix of dotted names), following only modules of the graph; None if there is none."""
        banned = tuple(forbidden)
        parents: dict[str, list[Import]] = {start: []}
        queue = [start]
        for module in queue:  # breadth first: the queue grows while it is walked
            for edge in self.imports[module]:
                path = [*parents[module], edge]
                if any(edge.target == b or edge.target.startswith(b + ".") for b in banned):
                    return path
                if edge.target in self.files and edge.target not in parents:
                    parents[edge.target] = path
                    queue.append(edge.target)
        return None

    def cycles(self) -> list[list[Import]]:
        """The shortest cycle through each module that is in one, each cycle once."""
        found: dict[frozenset[tuple[str, str]], list[Import]] = {}
        for group in _strongly_connected(self):
            for module in sorted(group):
                chain = self.chain_within(module, set(group))
                if chain:  # the same cycle, seen from each of its modules, is kept once
                    found.setdefault(frozenset((e.source, e.target) for e in chain), chain)
        return list(found.values())

    def chain_within(self, start: str, group: set[str]) -> list[Import] | None:
        """The shortest chain from `start` back to itself through modules of `group`."""
        parents: dict[str, list[Import]] = {start: []}
        queue = [start]
        for module in queue:
            for edge in self.internal(module):
                if edge.target not in group:
                    continue
                path = [*parents[module], edge]
                if edge.target == start:
                    return path
                if edge.target not in parents:
                    parents[edge.target] = path
                    queue.append(edge.target)
        return None


def describe(chain: list[Import]) -> str:
    """`a:3 -> b:9 (in a function) -> c`: a imports b at its line 3, b imports c at its line 9."""
    return " -> ".join([*(str(edge) for edge in chain), chain[-1].target])


def build(root: Path, packages: Iterable[str]) -> Graph:
    """Read every module of `packages` under `root`."""
    files: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    imports = {name: list(_imports(name, path, files)) for name, path in files.items()}
    return Graph(files, imports)


def _imports(name: str, path: Path, files: dict[str, Path]) -> Iterator[Import]:
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node, where in _walk(tree, "module"):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _with_parents(name, alias.name, node.lineno, where, files)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, is_package, node.level, node.module)
            for alias in node.names:
                named = f"{base}.{alias.name}"
                # `from pkg import mod` loads pkg.mod; `from mod import thing` loads mod.
                target = base if base in files and named not in files else named
                yield from _with_parents(name, target, node.lineno, where, files)
        elif isinstance(node, ast.Attribute) and node.attr in SERVER_CALLS:
            yield Import(name, f"asyncio.{node.attr}", node.lineno, where)


def _with_parents(
    source: str, target: str, line: int, where: str, files: dict[str, Path]
) -> Iterator[Import]:
    """The import itself, and the packages Python runs first to reach it (those of the graph
    that are not already the importer's own)."""
    yield Import(source, target, line, where)
    parts = target.split(".")
    for depth in range(1, len(parts)):
        package = ".".join(parts[:depth])
        if package in files and not (source + ".").startswith(package + "."):
            yield Import(source, package, line, where)


def _absolute(name: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    parts = name.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _walk(node: ast.AST, where: str) -> Iterator[tuple[ast.AST, str]]:
    for child in ast.iter_child_nodes(node):
        inner = where
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            inner = "function"
        elif isinstance(child, ast.If) and where == "module" and _is_type_checking(child.test):
            yield from _walk_block(child.body, "TYPE_CHECKING")
            yield from _walk_block(child.orelse, where)
            continue
        yield child, where
        yield from _walk(child, inner)


def _walk_block(body: list[ast.stmt], where: str) -> Iterator[tuple[ast.AST, str]]:
    for statement in body:
        yield statement, where
        yield from _walk(statement, where)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that can reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in graph.files:
        if root in index:
            continue
        work = [(root, iter([e.target for e in graph.internal(root)]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter([e.target for e in graph.internal(target)])))
                    break
                if target in on_stack:
                    low[module] = min(low[module], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == module:
                            break
                    groups.append(group)
    return groups

"""The import contracts: which package may import what, and no cycles.

Read from the source with `ast` (tests/importgraph.py), so nothing is imported to check them.
Every import counts wherever it stands: at module level, under `if TYPE_CHECKING:` (a cycle
there still makes the types circular, and turns into a real one the day the import is needed
at run time) and inside a function (it still loads the module, only later). A chain is
followed through the project's own modules, so an import made on a module's behalf by another
of ours counts as its own. Not imports, and so not checked: a module named in a string
(`importlib.import_module`) and a process started with `python -m` (the broker's demo starts
the connector that way, which is the point: the two never share an interpreter).

The rules:
- `connector_app.core` never imports Qt: PySide6 (or another Qt binding), qasync or
  `connector_app.qt`; neither do `broker` and `shared`.
- `broker` never imports `connector_app` (its demo runs the connector as a child process),
  and neither package is imported by `shared`; the connector does not import the broker.
- `shared` and the broker's stream machine hold no server. Neither imports aiohttp at all (its
  client comes in the package of its server; shared needs neither), websockets' server modules
  (`websockets.server` and `websockets.{asyncio,sync,legacy}.server`), nor the standard
  library's servers (`http.server`, `socketserver`, `asyncio.Server`), nor names the calls
  that open a listening socket (`create_server`, `create_unix_server`, `start_server`,
  `start_unix_server`, through the loop or the asyncio module). `shared` may use asyncio
  itself (its event-loop runner and signal handling do).
- The stream machine is sans-I/O besides: no asyncio, sockets, ssl, selectors or clock
  (`time`) at all; its caller passes time in.
- `broker.cluster` (cluster mode's parts: Redis, the shared limits) imports none of the
  broker's servers or pages (`broker.api`, `broker.portal`, `broker.edge`, `broker.app`,
  `broker.server`): they use it, not the other way round.
- No cycles among the modules of shared, broker and connector_app.
Each failure names the import chain that breaks the rule, as `a:3 -> b:9 (in a function) -> c`:
module a imports b at its line 3, and b imports c at its line 9, inside a function.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from tests import importgraph
from tests.importgraph import Graph

ROOT = Path(__file__).parents[1]
PACKAGES = ("shared", "broker", "connector_app")

QT_LIBRARIES = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "qasync")
QT = (*QT_LIBRARIES, "connector_app.qt")
SERVERS = (
    "aiohttp",
    "websockets.server",
    "websockets.asyncio.server",
    "websockets.sync.server",
    "websockets.legacy.server",
    "http.server",
    "socketserver",
    "asyncio.Server",
    *(f"asyncio.{call}" for call in sorted(importgraph.SERVER_CALLS)),
)
SANS_IO = (*SERVERS, "asyncio", "socket", "ssl", "selectors", "time")
STREAM_MACHINE = "broker.stream.machine"

# Each contract: who (a package or module, and all below it), what it must not import, and why.
CONTRACTS = [
    pytest.param(
        "connector_app.core",
        QT,
        "the connector core runs headless: only connector_app.qt is Qt",
        id="core-without-qt",
    ),
    pytest.param(
        "broker",
        ("connector_app", *QT_LIBRARIES),
        "the broker is a headless service, deployed without the connector",
        id="broker-without-connector",
    ),
    pytest.param(
        "connector_app",
        ("broker",),
        "the connector is installed without the broker",
        id="connector-without-broker",
    ),
    pytest.param(
        "shared",
        ("broker", "connector_app", *QT_LIBRARIES),
        "shared is the layer both sides stand on",
        id="shared-below-both",
    ),
    pytest.param(
        "shared",
        SERVERS,
        "shared holds the wire protocol, which serves nothing",
        id="shared-without-servers",
    ),
    pytest.param(
        "broker.cluster",
        ("broker.api", "broker.portal", "broker.edge", "broker.app", "broker.server"),
        "cluster mode's parts sit below the servers and pages that use them",
        id="cluster-below-the-edge",
    ),
    pytest.param(
        STREAM_MACHINE,
        SANS_IO,
        "the stream machine is sans-I/O: events in, actions out",
        id="stream-machine-sans-io",
    ),
]


@pytest.fixture(scope="module")
def graph() -> Graph:
    return importgraph.build(ROOT, PACKAGES)


def breaches(graph: Graph, who: str, forbidden: Iterable[str]) -> list[str]:
    """Each module under `who` that reaches a forbidden module, with the chain it takes."""
    banned = tuple(forbidden)
    found = []
    for module in graph.files:
        if module == who or module.startswith(who + "."):
            chain = graph.chain_to(module, banned)
            if chain is not None:
                found.append(importgraph.describe(chain))
    return found


@pytest.mark.parametrize(("who", "forbidden", "why"), CONTRACTS)
def test_contract(graph: Graph, who: str, forbidden: tuple[str, ...], why: str) -> None:
    if who not in graph.files:  # a contract on a module that moved would hold for nothing
        pytest.fail(f"the contract names {who}, which is no module of {', '.join(PACKAGES)}")
    found = breaches(graph, who, forbidden)
    assert not found, f"{who} must not import {', '.join(forbidden)} ({why}):\n" + "\n".join(found)


def test_no_import_cycles(graph: Graph) -> None:
    cycles = [importgraph.describe(cycle) for cycle in graph.cycles()]
    assert not cycles, "modules that import each other (break each cycle):\n" + "\n".join(cycles)


def test_the_graph_resolves_every_form_of_import(graph: Graph) -> None:
    # A sample of imports known to be in the tree, each written a different way.
    def targets(module: str) -> set[str]:
        return {edge.target for edge in graph.imports[module]}

    assert "broker.relay.hub" in targets("broker.relay.admission")  # from pkg.mod import name
    assert "shared.protocol" in targets("broker.relay.link")  # from pkg import mod
    assert "connector_app.qt.app" in targets("connector_app.cli")  # inside a function
    assert "aiohttp.web" in targets("broker.app")  # from a third-party package
    assert "asyncio.create_server" in targets("broker.server")  # loop.create_server(...)


# -- each checker catches a planted violation ------------------------------------------------


def plant(root: Path, files: dict[str, str]) -> Graph:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return importgraph.build(root, sorted({name.split("/")[0] for name in files}))


def test_a_forbidden_import_is_found_through_a_chain(tmp_path: Path) -> None:
    graph = plant(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/core/__init__.py": "",
            "app/core/engine.py": "from . import helper\n",
            "app/core/helper.py": "def f():\n    from app.gui import window\n",
            "app/gui/__init__.py": "",
            "app/gui/window.py": "import PySide6.QtCore\n",
        },
    )
    assert breaches(graph, "app.core", ("app.gui",)) == [
        "app.core.engine:1 -> app.core.helper:2 (in a function) -> app.gui.window",
        "app.core.helper:2 (in a function) -> app.gui.window",
    ]
    assert breaches(graph, "app.core", ("PySide6",))[0] == (
        "app.core.engine:1 -> app.core.helper:2 (in a function)"
        " -> app.gui.window:1 -> PySide6.QtCore"
    )
    assert breaches(graph, "app.gui", ("app.core",)) == []


def test_a_server_is_found_by_import_or_by_call(tmp_path: Path) -> None:
    graph = plant(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/a.py": "from aiohttp import web\n",
            "low/b.py": "from websockets.asyncio import server\n",
            "low/c.py": "import asyncio\nasync def f(loop):\n    await loop.create_server(f)\n",
            "low/d.py": "from asyncio import start_server\n",
            "low/e.py": "import asyncio\nimport websockets.asyncio.client\n",
        },
    )
    assert breaches(graph, "low", SERVERS) == [
        "low.a:1 -> aiohttp.web",
        "low.b:1 -> websockets.asyncio.server",
        "low.c:3 (in a function) -> asyncio.create_server",
        "low.d:1 -> asyncio.start_server",
    ]
    assert breaches(graph, "low.e", SANS_IO) == ["low.e:1 -> asyncio"]


def test_a_cycle_is_found_through_type_checking_and_relative_imports(tmp_path: Path) -> None:
    graph = plant(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/keys.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from pkg.sub.link import L\n"
            ),
            "pkg/sub/__init__.py": "",
            "pkg/sub/link.py": "from .. import keys\n",
            "pkg/cli.py": "def main():\n    from pkg import demo\n",
            "pkg/demo.py": "from pkg.cli import PROG\n",
            "pkg/alone.py": "import pkg.keys\n",
        },
    )
    assert sorted(importgraph.describe(c) for c in graph.cycles()) == [
        "pkg.cli:2 (in a function) -> pkg.demo:1 -> pkg.cli",
        "pkg.keys:3 (TYPE_CHECKING) -> pkg.sub.link:1 -> pkg.keys",
    ]


def test_a_package_init_that_imports_its_importer_is_a_cycle(tmp_path: Path) -> None:
    # Importing pkg.api.x runs pkg/api/__init__.py first: what that imports is part of the chain.
    graph = plant(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/api/__init__.py": "from pkg.edge import door\n",
            "pkg/api/x.py": "",
            "pkg/edge/__init__.py": "",
            "pkg/edge/door.py": "from pkg.api.x import *\n",
        },
    )
    assert [importgraph.describe(c) for c in graph.cycles()] == [
        "pkg.api:1 -> pkg.edge.door:1 -> pkg.api",
    ]

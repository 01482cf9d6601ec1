"""The client's shape: the sync and asyncio halves depend on shared pieces, never on each other.

Checked twice: by importing each half alone in a fresh interpreter (what a user gets), and by
reading every module's imports (what a change would break, named precisely).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import seqpredict.client

PACKAGE = "seqpredict.client"
FOLDER = Path(seqpredict.client.__file__).parent
SYNC = {"sync", "sync_session"}
ASYNC = {"aio", "aio_session"}
CLI = {p.stem for p in FOLDER.glob("cli*.py")}
SHARED = {p.stem for p in FOLDER.glob("*.py")} - SYNC - ASYNC - CLI - {"__init__"}


def loaded_after(statement: str) -> set[str]:
    """Our modules a fresh interpreter has loaded after running `statement`."""
    code = f"{statement}\nimport sys\nprint(' '.join(m for m in sys.modules if m.startswith('{PACKAGE}.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return {name.removeprefix(f"{PACKAGE}.") for name in out.stdout.split()}


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("import seqpredict.client.sync", ASYNC),
        ("from seqpredict.client import Client, Session", ASYNC),
        ("import seqpredict.client.cli", ASYNC),  # the CLI is a sync program: no asyncio client at start-up
        ("import seqpredict.client.aio", SYNC),
        ("from seqpredict.client import AsyncClient, AsyncSession", SYNC),
    ],
)
def test_importing_one_half_does_not_import_the_other(statement: str, absent: set[str]) -> None:
    loaded = loaded_after(statement)
    assert loaded, "nothing of the client was imported"
    assert not loaded & absent, f"{statement!r} imported {sorted(loaded & absent)}"


def imports(module: str, *, typing_only: bool) -> set[str]:
    """The client modules `module` imports (`typing_only`: also those under `if TYPE_CHECKING:`)."""
    tree = ast.parse((FOLDER / f"{module}.py").read_text())
    skipped: set[int] = set()
    if not typing_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.removeprefix(f"{PACKAGE}.").split(".")[0] for n in names if n.startswith(f"{PACKAGE}.")}
    return found - {module}


def test_shared_pieces_import_neither_half() -> None:
    assert {"channel", "errors", "generation", "handle", "requests", "session_ops", "tracking", "types"} <= SHARED
    for module in sorted(SHARED):
        halves = imports(module, typing_only=True) & (SYNC | ASYNC | CLI)
        assert not halves, f"{module}.py is shared but imports {sorted(halves)}"


@pytest.mark.parametrize(("half", "other"), [(SYNC, ASYNC), (ASYNC, SYNC), (CLI, ASYNC)])
def test_a_half_never_imports_the_other_half_even_for_type_hints(half: set[str], other: set[str]) -> None:
    for module in sorted(half):
        wrong = imports(module, typing_only=True) & other
        assert not wrong, f"{module}.py imports {sorted(wrong)}"


def test_no_import_cycle_among_the_client_modules() -> None:
    """Runtime imports only: a type hint's `if TYPE_CHECKING:` import never runs."""
    graph = {m: imports(m, typing_only=False) for m in SHARED | SYNC | ASYNC | CLI}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import cycle: " + " → ".join((*path[path.index(module) :], module))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_the_public_names_are_where_they_were() -> None:
    from seqpredict.client import aio, sync

    for name in seqpredict.client.__all__:
        assert getattr(seqpredict.client, name) is not None, name
    assert seqpredict.client.Session is sync.Session and seqpredict.client.Client is sync.Client
    assert seqpredict.client.AsyncSession is aio.AsyncSession and seqpredict.client.AsyncClient is aio.AsyncClient
    assert set(seqpredict.client.__all__) <= set(dir(seqpredict.client))
    with pytest.raises(AttributeError):
        _ = seqpredict.client.NoSuchThing  # type: ignore[attr-defined]

"""The cache engine's pure cores stay pure: no I/O, no clock, no global randomness.

ARCHITECTURE.md marks modules of ``cache/`` as *pure* (the aiohttp handlers
and the store feed them; they take ``now`` as an argument).  This test reads
that table, then checks each pure module and the project modules it imports
(``legato.http``, ``legato.urls``...) by their syntax trees: no import of a
module that does I/O or concurrency, no call that reads a clock, opens a file
or draws from the process-wide random generator.  Formatting a given time
(``time.gmtime(seconds)``) and seeded generators (``random.Random(seed)``)
are pure and allowed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

IO_MODULES = frozenset({
    "aiofiles", "aiohttp", "asyncio", "diskcache", "fcntl", "io", "mmap", "multiprocessing", "os", "pathlib",
    "select", "selectors", "shutil", "socket", "sqlite3", "subprocess", "tempfile", "threading", "urllib.request",
    "uvloop",
})
"""Modules whose import means I/O or concurrency."""

IMPURE_CALLS = frozenset({
    "time.time", "time.time_ns", "time.monotonic", "time.monotonic_ns", "time.perf_counter", "time.sleep",
    "datetime.now", "datetime.utcnow", "datetime.today", "date.today", "open", "print", "input",
    "random.random", "random.randint", "random.randrange", "random.choice", "random.shuffle", "random.uniform",
    "random.seed", "os.urandom",
})
"""Calls that read a clock, touch a file or the terminal, or use process-wide randomness."""


def pure_modules() -> list[str]:
    """Dotted names of the ``cache/`` modules ARCHITECTURE.md's table marks pure."""
    names: list[str] = []
    for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[2] == "pure":
            names += [f"cache.{m}" for m in re.findall(r"`(\w+)\.py`", cells[1])]
    return names


def source(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def project_imports(tree: ast.AST) -> set[str]:
    """Every module an import statement names (absolute, as written)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a name or attribute chain, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def impurities(module: str) -> list[str]:
    """What in ``module``'s own source breaks purity, as "module:line: what"."""
    tree = ast.parse(source(module).read_text(), str(source(module)))
    found = [f"{module}: imports {name}" for name in sorted(project_imports(tree))
             if name in IO_MODULES or name.split(".")[0] in IO_MODULES]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = dotted(node.func)
            if name is not None and (name in IMPURE_CALLS or ".".join(name.split(".")[-2:]) in IMPURE_CALLS):
                found.append(f"{module}:{node.lineno}: calls {name}")
    return found


def closure(module: str) -> list[str]:
    """``module`` and every project module it imports, transitively."""
    seen: list[str] = []
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or not source(name).is_file():
            continue
        seen.append(name)
        tree = ast.parse(source(name).read_text())
        todo += [imported for imported in project_imports(tree) if source(imported).is_file()]
    return seen


def test_the_table_names_the_pure_cores() -> None:
    names = pure_modules()
    for expected in ("cache.key", "cache.freshness", "cache.policy", "cache.ring", "cache.respond", "cache.h1"):
        assert expected in names
    assert all(source(name).is_file() for name in names), names


@pytest.mark.parametrize("module", pure_modules())
def test_a_pure_core_does_no_io_and_reads_no_clock(module: str) -> None:
    modules = closure(module)
    assert module in modules
    assert [problem for name in modules for problem in impurities(name)] == []


def test_the_check_finds_what_it_looks_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module with each kind of impurity is caught (the check can fail)."""
    bad = tmp_path / "cache" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("import os\nimport time\nfrom asyncio import sleep\n\n"
                   "def f():\n    return time.monotonic(), open('x'), time.gmtime(0)\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert impurities("cache.bad") == [
        "cache.bad: imports asyncio", "cache.bad: imports asyncio.sleep", "cache.bad: imports os",
        "cache.bad:6: calls time.monotonic", "cache.bad:6: calls open",
    ]

"""The package layout of DESIGN.md section 1, checked on the source.

- Roles (relay, daemon, client) import the core and the shared adapters
  (``starmux.node``), never each other: a role's import of another role fails here.
- Nothing imports the generic top-level names ``relay``, ``daemon``, ``client``:
  they collide with other distributions (python-daemon installs ``daemon``).
- The core modules directly in ``starmux/`` do no I/O: no asyncio, sockets,
  SQLite or WebSockets, and no role (``cli.py``, the lazy entry point, aside).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("relay", "daemon", "client")
IO_MODULES = {"asyncio", "socket", "sqlite3", "aiosqlite", "websockets", "starlette", "uvicorn"}
# The CLI entry mounts role commands by name (strings, not imports); it may use click.
CORE_EXCEPTIONS = {"cli.py"}


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Absolute names of every module ``path`` imports (relative ones resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    if package.split(".")[0] in ROLES:
        package = "starmux." + package
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            else:
                yield node.lineno, node.module or ""


def python_files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def role_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in ROLES:
        return parts[0]
    if parts[0] == "starmux" and len(parts) > 1 and parts[1] in ROLES:
        return parts[1]
    return None


@pytest.mark.parametrize("role", ROLES)
def test_a_role_never_imports_another_role(role: str) -> None:
    crossings = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in python_files(role)
        for line, module in imported_modules(path)
        if role_of(module) not in (None, role)
    ]
    assert not crossings, "roles import each other (DESIGN.md section 1):\n" + "\n".join(crossings)


def test_nothing_imports_the_generic_top_level_names() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for folder in (*ROLES, "starmux", "tests", "bench", "fuzz")
        for path in python_files(folder)
        if not path.is_symlink()
        for line, module in imported_modules(path)
        if module.split(".")[0] in ROLES
    ]
    assert not offenders, "\n".join(offenders)


def test_the_core_does_no_io_and_imports_no_role() -> None:
    offenders = []
    core = [p for p in sorted((ROOT / "starmux").glob("*.py")) if p.name not in CORE_EXCEPTIONS]
    core += python_files("starmux/noise")
    for path in core:
        for line, module in imported_modules(path):
            if module.split(".")[0] in IO_MODULES or role_of(module) or "starmux.node" in module:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, "the sans-I/O core imports I/O or a role:\n" + "\n".join(offenders)


def test_the_shared_adapters_import_no_role() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in python_files("starmux/node")
        for line, module in imported_modules(path)
        if role_of(module)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_role_folders_install_under_starmux() -> None:
    for role in ROLES:
        link = ROOT / "starmux" / role
        assert link.is_symlink(), f"starmux/{role} must link to ../{role}"
        assert link.resolve() == (ROOT / role).resolve()


def test_the_controller_operations_use_only_the_public_interface_of_its_state() -> None:
    """The operation modules beside client/sessions.py (review, machines, notify...)
    go through ControllerState's public methods, never its private helpers: those
    may change with the module that owns them."""
    tree = ast.parse((ROOT / "client" / "sessions.py").read_text())
    (state,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ControllerState"]
    private = {
        name
        for node in state.body
        for name in (
            [node.name]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            else [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        )
        if name.startswith("_") and not name.startswith("__")
    }
    assert private, "ControllerState has private helpers of its own (the check would be empty)"
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno} uses ControllerState.{node.attr}"
        for path in python_files("client")
        if path.name != "sessions.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in private
    ]
    assert not offenders, "\n".join(offenders)

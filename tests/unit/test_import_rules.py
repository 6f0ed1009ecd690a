"""Import rules (DESIGN.md §7, docs/architecture.md), checked on the installed package.

The processes run the installed copy, so that is the copy checked: every import
statement (at the top or inside a function) of every module, read from its AST.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.find_spec("sepconnect")
assert _SPEC is not None
assert _SPEC.submodule_search_locations
INSTALLED = Path(next(iter(_SPEC.submodule_search_locations)))

SHARED = ("sepconnect.ipc", "sepconnect.process")
"""The packages every process may use; they import nothing but each other."""

_RUNNERS = ("sepconnect.privhelper", "sepconnect.rootrunner")
LAUNCHER = (
    "sepconnect.cli",
    "sepconnect.session",
    "sepconnect.remote",
    "sepconnect.credentials",
    "sepconnect.authenticate",
    "sepconnect.rootstage",
    "sepconnect.files",
)
"""The launcher's modules (launcher/, installed as the top-level package)."""

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "sepconnect.worker": ("sepconnect.supervisor", *_RUNNERS, "sepconnect.spawner", *LAUNCHER),
    "sepconnect.supervisor": ("sepconnect.worker", *_RUNNERS, "sepconnect.spawner", *LAUNCHER),
    "sepconnect.ipc": (
        "sepconnect.worker",
        "sepconnect.supervisor",
        *_RUNNERS,
        "sepconnect.spawner",
        *LAUNCHER,
    ),
}
FORBIDDEN["sepconnect.process"] = FORBIDDEN["sepconnect.ipc"]
# The launcher starts the worker as a program; it never loads the worker's code.
for _module in (*LAUNCHER, "sepconnect.session_accounts"):
    FORBIDDEN[_module] = ("sepconnect.worker", "sepconnect.spawner")

HELPER_THIRD_PARTY = {"msgpack", "pyroute2", "jeepney"}
"""All the helper loads from outside the standard library (jeepney: the D-Bus client
for systemd-resolved, pure Python)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(INSTALLED.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    return _imports_of(path.read_text(), _module_name(path), is_package=path.name == "__init__.py")


def _imports_of(source: str, module: str, *, is_package: bool) -> set[str]:
    """Absolute names of every module ``source`` imports (relative imports resolved)."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            # `from sepconnect.x import y` may name a submodule y
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _modules(package: str) -> list[Path]:
    folder = INSTALLED.joinpath(*package.split(".")[1:])
    return sorted(folder.rglob("*.py"))


ALL = _modules("sepconnect")


def test_the_installed_package_is_laid_out_as_the_source() -> None:
    """Each top-level folder of the repository is one subpackage; no package twice."""
    names = {_module_name(p) for p in ALL}
    packages = ("ipc", "process", "privhelper", "rootrunner", "spawner", "supervisor", "worker")
    for package in packages:
        assert f"sepconnect.{package}" in names
    assert not any(p.is_symlink() for p in ALL)


@pytest.mark.parametrize("path", ALL, ids=_module_name)
def test_no_forbidden_edge(path: Path) -> None:
    module = _module_name(path)
    for package, banned in FORBIDDEN.items():
        if _within(module, package):
            bad = {n for n in _imports(path) if any(_within(n, b) for b in banned)}
            assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path", _modules("sepconnect.privhelper") + _modules("sepconnect.rootrunner"), ids=_module_name
)
def test_privileged_code_imports_only_itself_the_shared_packages_and_its_libraries(
    path: Path,
) -> None:
    """The helper and the root runner: their own package, the shared ones, the standard
    library and the helper's three libraries (the root runner needs only msgpack)."""
    own = ".".join(_module_name(path).split(".")[:2])
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "sepconnect":
            allowed = (own, *SHARED)
            assert any(_within(name, a) for a in allowed), name
        else:
            assert top in sys.stdlib_module_names or top in HELPER_THIRD_PARTY, name


@pytest.mark.parametrize("path", _modules("sepconnect.spawner"), ids=_module_name)
def test_the_spawner_imports_only_itself_the_shared_packages_and_msgpack(path: Path) -> None:
    """It runs every worker: as little code as the helper's rule allows, and none of the
    processes it serves."""
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "sepconnect":
            allowed = ("sepconnect.spawner", *SHARED)
            assert any(_within(name, a) for a in allowed), name
        else:
            assert top in sys.stdlib_module_names or top == "msgpack", name


def test_the_rules_see_every_form_of_import() -> None:
    """The checker itself: absolute, relative and in-function imports are all seen."""
    source = (
        "from sepconnect.supervisor import main\n"
        "from . import connect\n"
        "from ..ipc import wire\n"
        "def f():\n    import sepconnect.privhelper.tun\n"
    )
    names = _imports_of(source, "sepconnect.worker.probe", is_package=False)
    assert {
        "sepconnect.supervisor.main",
        "sepconnect.worker.connect",
        "sepconnect.ipc.wire",
        "sepconnect.privhelper.tun",
    } <= names


SANS_IO_FORBIDDEN = {
    "socket",
    "ssl",
    "OpenSSL",
    "asyncio",
    "time",
    "os",
    "random",
    "select",
    "selectors",
    "logging",
    "subprocess",
}


SANS_IO = [
    *_modules("sepconnect.worker.proto"),
    INSTALLED / "supervisor" / "session.py",
    INSTALLED / "supervisor" / "policy.py",
    INSTALLED / "spawner" / "core.py",
]
"""The worker's protocol core, the supervisor's session machine (with its policy) and the
spawner's decisions."""


@pytest.mark.parametrize("path", SANS_IO, ids=_module_name)
def test_protocol_core_is_sans_io(path: Path) -> None:
    bad = {n for n in _imports(path) if n.split(".")[0] in SANS_IO_FORBIDDEN}
    assert not bad, bad

"""Import rules (STYLE.md §1.5, §6.1), checked on the source's AST."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("privhelper"), ids=lambda p: p.name)
def test_privhelper_imports_only_stdlib_msgpack_pyroute2_and_itself(path: Path) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "sepconnect":
            assert name.startswith("sepconnect.privhelper"), name
        else:
            assert top in sys.stdlib_module_names or top in {
                "msgpack",
                "pyroute2",
                "jeepney",  # dns.py: the D-Bus client for systemd-resolved (pure Python)
            }, name


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


@pytest.mark.parametrize("path", _modules("worker/proto"), ids=lambda p: p.name)
def test_protocol_core_is_sans_io(path: Path) -> None:
    bad = {n for n in _imports(path) if n.split(".")[0] in SANS_IO_FORBIDDEN}
    assert not bad, bad


@pytest.mark.parametrize("path", _modules("worker") + _modules("supervisor"), ids=lambda p: p.name)
def test_unprivileged_code_uses_only_the_helpers_public_modules(path: Path) -> None:
    allowed = {
        "sepconnect.privhelper.wire",
        "sepconnect.privhelper.schema",
        "sepconnect.privhelper.fields",  # the schemas' shared field types
        "sepconnect.privhelper.client",
        "sepconnect.privhelper.policy",
        "sepconnect.privhelper.audit",  # the journal's datagram format, shared
        "sepconnect.privhelper.auditfile",  # opening an audit log: stdlib only, shared
        "sepconnect.privhelper.proctitle",  # process titles: stdlib only, shared
    }
    for name in _imports(path):
        if name.startswith("sepconnect.privhelper"):
            assert name in allowed, name


@pytest.mark.parametrize("path", _modules("worker"), ids=lambda p: p.name)
def test_worker_never_talks_to_the_helper(path: Path) -> None:
    assert "sepconnect.privhelper.client" not in _imports(path)

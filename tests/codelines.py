"""Code lines of the project that privileged processes really load (issue 13, item 9).

A *code line* is a line of a module that holds a Python token other than a comment, and
is not part of a docstring (module, class or function docstrings, and bare string
statements): non-blank, non-comment, non-docstring.

:func:`trace_session` reads an ``strace -f`` of a real ``sepconnect connect`` (the
``openat`` of each module's bytecode, ``execve``, ``setresuid``) and says which modules
of the package each process loaded: the launcher until it drops root, the helper for
its whole life, and the runners if any ran. tests/integration/test_code_budget.py
computes the budget's numbers from it; ``python3 tests/codelines.py TRACE`` prints them.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import sys
import tokenize
from pathlib import Path

_SKIP = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}


def code_lines(path: Path) -> int:
    """The code lines of one source file."""
    source = path.read_text(encoding="utf-8")
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docstrings.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _SKIP:
            lines.update(n for n in range(token.start[0], token.end[0] + 1) if n not in docstrings)
    return len(lines)


_LINE = re.compile(r"^(\d+) +(?:<\.\.\. )?(\w+)\(?(.*)$")
_PYC = re.compile(r'"([^"]*/sepconnect(?:/[^"]*?)?)/__pycache__/(\w+)\.cpython-\d+\.pyc"')
_PY = re.compile(r'"([^"]*/sepconnect/[^"]*\.py)"')
_EXEC = re.compile(r'^"([^"]+)", \[([^\]]*)\]')


@dataclasses.dataclass
class Process:
    pid: int
    program: str = ""
    """The program it executed last (its basename), or "" if it never did."""
    modules: list[Path] = dataclasses.field(default_factory=list)
    """Source files of the package it loaded, in order."""
    root_phase: list[Path] = dataclasses.field(default_factory=list)
    """Those loaded before it first changed all its uids away from 0."""
    dropped: bool = False


def _source(line: str) -> Path | None:
    pyc = _PYC.search(line)
    if pyc:
        return Path(pyc.group(1), pyc.group(2) + ".py")
    py = _PY.search(line)
    return Path(py.group(1)) if py else None


def trace_session(trace: str) -> dict[int, Process]:
    """Every process of an ``strace -f -e trace=openat,execve,setresuid -s 400`` output."""
    processes: dict[int, Process] = {}
    for raw in trace.splitlines():
        match = _LINE.match(raw)
        if not match:
            continue
        pid, call, rest = int(match.group(1)), match.group(2), match.group(3)
        proc = processes.setdefault(pid, Process(pid))
        if call == "execve":
            exe = _EXEC.match(rest)
            if exe and not rest.rstrip().endswith("= -1 ENOENT (No such file or directory)"):
                argv = exe.group(2)
                proc.program = Path(exe.group(1)).name
                if "-m" in argv and "sepconnect." in argv:  # python -I -m sepconnect.X
                    proc.program = argv.split('"-m", "')[1].split('"')[0]
                proc.modules, proc.root_phase, proc.dropped = [], [], False
        elif call == "openat":
            source = _source(rest)
            if source is not None and source.exists() and source not in proc.modules:
                proc.modules.append(source)
                if not proc.dropped:
                    proc.root_phase.append(source)
        elif call == "setresuid" and rest.rstrip().endswith("= 0") and not rest.startswith("0,"):
            proc.dropped = True
    return processes


def total(files: set[Path] | list[Path]) -> int:
    return sum(code_lines(f) for f in set(files))


def module_name(path: Path) -> str:
    parts = path.with_suffix("").parts
    name = ".".join(parts[parts.index("sepconnect") :])
    return name.removesuffix(".__init__")


if __name__ == "__main__":
    for process in trace_session(Path(sys.argv[1]).read_text()).values():
        if process.modules:
            print(f"{process.pid} {process.program}: {total(process.modules)} code lines "
                  f"({total(process.root_phase)} before dropping root)")  # fmt: skip
            for module in process.modules:
                print(f"  {code_lines(module):5} {module_name(module)}")

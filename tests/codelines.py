"""Code lines of the project that privileged processes really load (issue 13, item 9).

A *code line* is a line of a module that holds a Python token other than a comment, and
is not part of a docstring (module, class or function docstrings, and bare string
statements): non-blank, non-comment, non-docstring.

:func:`trace_session` reads an ``strace -f`` of a real ``sepconnect connect`` (the
``openat`` of each module's bytecode, ``execve``, ``setresuid``, and the fork-like
calls, whose children start as their parent was) and says which modules of the package
each process loaded after its last exec, and which, across its execs, it loaded while
it had uid 0 or a capability: the launcher until it drops root, a child forked while
root until it drops, the helper (both stages) and its nft runner for their whole
life. tests/integration/test_code_budget.py
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
_RETURN = re.compile(r"= (\d+)$")
_SPAWN = ("clone", "clone3", "fork", "vfork")
TRACED = "openat,execve,setresuid," + ",".join(_SPAWN)
"""strace's ``-e trace=`` for :func:`trace_session`."""

CAPABLE_FOR_LIFE = (
    "sepconnect.privhelper",
    "sepconnect-privhelper",
    "sepconnect-privhelper-serve",
    "sepconnect.privhelper.serve",
    "sepconnect-nft-runner",
    "sepconnect.privhelper.nft",
)
"""Programs that keep a capability (CAP_NET_ADMIN) after they leave uid 0: the helper
(both its stages: the serving one inherits it across the exec) and its nft runner."""


@dataclasses.dataclass
class Process:
    pid: int
    program: str = ""
    """The program it executed last (its basename, or the module run with -m), or ""."""
    modules: list[Path] = dataclasses.field(default_factory=list)
    """Source files of the package it loaded since its last exec, in order."""
    stages: list[tuple[str, list[Path]]] = dataclasses.field(default_factory=list)
    """(program, modules loaded) for each program it executed, in order."""
    privileged: list[Path] = dataclasses.field(default_factory=list)
    """Every module it loaded while it had uid 0 or a capability, across its execs."""
    capable: bool = False
    """Has it uid 0 or a capability now? A child starts as its parent was at the fork;
    the first process (the launcher, started by root) does; setresuid away from 0 ends
    it, but for :data:`CAPABLE_FOR_LIFE`."""


def _source(line: str) -> Path | None:
    pyc = _PYC.search(line)
    if pyc:
        return Path(pyc.group(1), pyc.group(2) + ".py")
    py = _PY.search(line)
    return Path(py.group(1)) if py else None


def _spawns(lines: list[tuple[int, str, str]]) -> dict[int, int]:
    """Line index of each fork-like call's start → the child's pid (its return value)."""
    spawns: dict[int, int] = {}
    unfinished: dict[int, int] = {}
    for index, (pid, call, rest) in enumerate(lines):
        if call not in _SPAWN:
            continue
        if rest.startswith(" resumed>"):
            start = unfinished.pop(pid, None)
        else:
            start = index
            if rest.endswith("<unfinished ...>"):
                unfinished[pid] = index
                continue
        child = _RETURN.search(rest.rstrip())
        if start is not None and child:
            spawns[start] = int(child.group(1))
    return spawns


def trace_session(trace: str) -> dict[int, Process]:
    """Every process of an ``strace -f -e trace=TRACED -s 400`` output (:data:`TRACED`)."""
    lines = [
        (int(m.group(1)), m.group(2), m.group(3))
        for m in map(_LINE.match, trace.splitlines())
        if m is not None
    ]
    spawns = _spawns(lines)
    processes: dict[int, Process] = {}
    for index, (pid, call, rest) in enumerate(lines):
        proc = processes.get(pid)
        if proc is None:  # the first process of the trace: the launcher, as root
            proc = processes[pid] = Process(pid, capable=not processes)
        if index in spawns:
            processes[spawns[index]] = Process(spawns[index], capable=proc.capable)
        if call == "execve":
            exe = _EXEC.match(rest)
            if exe and not rest.rstrip().endswith("= -1 ENOENT (No such file or directory)"):
                argv = exe.group(2)
                proc.program = Path(exe.group(1)).name
                if "-m" in argv and "sepconnect." in argv:  # python -I -m sepconnect.X
                    proc.program = argv.split('"-m", "')[1].split('"')[0]
                proc.modules = []
                proc.stages.append((proc.program, proc.modules))
        elif call == "openat":
            source = _source(rest)
            if source is not None and source.exists() and source not in proc.modules:
                proc.modules.append(source)
                if proc.capable and source not in proc.privileged:
                    proc.privileged.append(source)
        elif call == "setresuid" and rest.rstrip().endswith("= 0") and not rest.startswith("0,"):
            proc.capable = proc.program in CAPABLE_FOR_LIFE
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
                  f"since its last exec ({total(process.privileged)} with uid 0 or a "
                  "capability, across its execs)")  # fmt: skip
            for module in process.modules:
                print(f"  {code_lines(module):5} {module_name(module)}")

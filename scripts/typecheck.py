"""mypy --strict over the source tree, laid out as it is installed.

The packages live in top-level folders (privhelper/, worker/, ipc/, …) that
setuptools maps into one ``sepconnect`` package (pyproject.toml's package-dir).
mypy knows nothing of that mapping, so this lays the same tree out of symlinks in
a temporary folder, runs mypy there and reports every path as the file in the
repository. Usage: ``python scripts/typecheck.py [MYPY_ARGS...]`` (run-tests uses it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def link_tree(into: Path) -> dict[str, str]:
    """Symlink each mapped package folder into ``into``; return {linked prefix: repo prefix}."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setup["package-dir"]
    prefixes: dict[str, str] = {}
    for package, folder in sorted(mapping.items()):
        target = into / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted((ROOT / folder).iterdir()):
            if entry.suffix in (".py", ".pyi", ".typed") and not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
        prefixes[str(target.relative_to(into)) + "/"] = folder + "/"
        for sub in sorted((ROOT / folder).iterdir()):
            sub_package = f"{package}.{sub.name}"
            if sub.is_dir() and (sub / "__init__.py").exists() and sub_package not in mapping:
                (target / sub.name).symlink_to(sub, target_is_directory=True)
                prefixes[str(target.relative_to(into) / sub.name) + "/"] = f"{folder}/{sub.name}/"
    return prefixes


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="sepconnect-typecheck-") as tmp:
        prefixes = link_tree(Path(tmp))
        cache = ROOT / ".mypy_cache"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mypy",
                "--config-file",
                str(ROOT / "pyproject.toml"),
                "--cache-dir",
                str(cache),
                *argv,
            ],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
    longest_first = sorted(prefixes.items(), key=lambda kv: -len(kv[0]))
    for line in (proc.stdout + proc.stderr).splitlines():
        for linked, real in longest_first:
            if line.startswith(linked):
                line = real + line[len(linked) :]
                break
        print(line)
    return proc.returncode


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main(sys.argv[1:]))

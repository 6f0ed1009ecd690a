"""argparse's help formatter without its `shutil` import.

`argparse.HelpFormatter.__init__` imports `shutil` for `get_terminal_size()`, and
argparse builds a formatter for every `add_argument` (to check metavars). shutil
imports bz2, lzma and zlib: ~0.5 MB of RSS and ~3 ms in each of our processes, for
one number. This computes the same width the same way (``COLUMNS``, else the
terminal of stdout, else 80; minus 2, as argparse does). Stdlib only: the helper
uses it too.
"""

from __future__ import annotations

import argparse
import os
import sys


def _columns() -> int:
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class HelpFormatter(argparse.HelpFormatter):
    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)

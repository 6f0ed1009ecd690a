"""Process titles (`ps`, /proc/<pid>/cmdline, /proc/<pid>/comm) on Linux.

A replacement for the `setproctitle` package, whose `__init__` imports `logging`
(with threading, traceback, string…: 0.3–0.9 MB of RSS in each of our processes that
does not import it anyway) for a job that is two writes into our own memory:

- /proc/<pid>/cmdline is read by the kernel from the argv area of our stack,
  between ``arg_start`` and ``arg_end`` (fields 48 and 49 of /proc/self/stat). We
  overwrite that area with the title and pad it with NULs, so the kernel shows the
  title (the padding reads as trailing NULs, as with setproctitle). The area keeps
  its length: a title longer than the original argv is cut, never written past
  ``arg_end`` (setproctitle moves the environment away to grow the area; our
  titles are shorter than any argv that starts us).
- /proc/<pid>/comm (what `top` and the kernel's messages show) is set with
  ``prctl(PR_SET_NAME)``, which keeps the first 15 bytes.

Called once, early, before the seccomp filters (read, openat and prctl are
needed). Shared by the helper (it imports nothing outside its package) and the
unprivileged processes; stdlib only.
"""

from __future__ import annotations

import ctypes

from sepconnect.process.prctl import PR_SET_NAME, prctl


def _argv_area() -> tuple[int, int]:
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    # Field 2 (comm) is in parentheses and may itself contain spaces and ")": the
    # fields after the last ")" start with field 3.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[48 - 3]), int(fields[49 - 3])


def set_title(title: str) -> None:
    """Show ``title`` as our command line and as our name (comm)."""
    raw = title.encode()
    start, end = _argv_area()
    size = end - start
    if size > 0:
        text = raw[: size - 1]  # keep at least one NUL: the kernel then reads no further
        ctypes.memmove(start, text + b"\0" * (size - len(text)), size)
    name = ctypes.create_string_buffer(raw)  # the kernel keeps 15 bytes (TASK_COMM_LEN)
    prctl(PR_SET_NAME, ctypes.addressof(name))

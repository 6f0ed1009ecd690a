"""Questions on the terminal `sepconnect connect` was started from (its standard input
and standard error), for the login forms supervisor/answers.py cannot answer alone.

As openconnect's prompts (main.c ``prompt_for_input``, ``prompt_opt_select``): the
server's label, a select's choices as ``Label [a|b]:``, and a password field's input not
echoed. Only the supervisor asks: the worker and the helper have no terminal (their
standard input is /dev/null, each in a process group of its own, so a ^C reaches the
supervisor only). A signal interrupts a question: the supervisor's signal handlers write
to a wake-up fd, which a question watches beside the terminal.
"""

from __future__ import annotations

import os
import select
import termios

from sepconnect.supervisor.answers import Prompt

_MAX_LINE = 1024


class Terminal:
    def __init__(self, fd_in: int = 0, fd_out: int = 2) -> None:
        self.fd_in = fd_in
        self.fd_out = fd_out

    @staticmethod
    def usable(fd_in: int = 0) -> bool:
        return os.isatty(fd_in)

    def ask(self, prompt: Prompt, *, wake: int | None = None) -> str | None:
        """The line typed, without its newline; None if *wake* became readable first (a
        signal); EOFError at the end of input."""
        text = "".join(f"{note}\n" for note in prompt.notes) + prompt.label
        if prompt.choices:
            text += f" [{'|'.join(prompt.choices)}]:"
        text = text if text.endswith((" ", "\n")) or not text else text + " "
        if not prompt.hidden:
            self._write(text)
            return self._read_line(wake)
        saved = termios.tcgetattr(self.fd_in)
        quiet = list(saved)
        quiet[3] &= ~termios.ECHO  # lflag
        # echo off (and what was typed before the question dropped, as getpass) before
        # the question appears, so that no answer typed after it is dropped or echoed
        termios.tcsetattr(self.fd_in, termios.TCSAFLUSH, quiet)
        try:
            self._write(text)
            return self._read_line(wake)
        finally:
            termios.tcsetattr(self.fd_in, termios.TCSADRAIN, saved)
            self._write("\n")  # the Enter the terminal did not echo

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        while data:
            data = data[os.write(self.fd_out, data) :]

    def _read_line(self, wake: int | None) -> str | None:
        line = bytearray()
        watched = [self.fd_in] if wake is None else [self.fd_in, wake]
        while b"\n" not in line:
            ready, _, _ = select.select(watched, [], [])
            if wake is not None and wake in ready:
                return None  # left unread: the supervisor's loop reads it
            chunk = os.read(self.fd_in, _MAX_LINE)
            if not chunk:
                raise EOFError
            line += chunk
            if len(line) > _MAX_LINE:
                line = line[:_MAX_LINE] + b"\n"
        return bytes(line.split(b"\n", 1)[0]).rstrip(b"\r").decode("utf-8", "replace")

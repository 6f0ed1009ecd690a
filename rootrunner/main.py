"""The root runner: the one part of sepconnect that keeps uid 0, and only on request.

Started by the helper, still root, before it drops to its own uid, and only when root's
options need root after setup: ``--script`` (a vpnc-script expects root, as under
openconnect) or ``--dns-backend file|resolvconf`` (/etc/resolv.conf and resolvconf are
root's)::

    sepconnect-rootrunner --fd N --peer-uid UID --state-dir DIR [--audit-fd N]
                          [--script PATH [--script-arg=ARG]...]
                          [--dns-backend file|resolvconf] [--recover]

It is outside sepconnect's minimal trusted base (docs/security.md): whoever holds the
helper's uid can ask it for what these options do. It answers the helper only (its
parent, with the helper's uid: SCM_CREDENTIALS), one request at a time
(ipc/runner_messages.py): run the vpnc-script, with exactly the arguments root gave and
an environment whose every variable it checks (script.py), or set and revert the
tunnel's DNS with its one backend (dns.py).

What it changed, it undoes: on request, when the helper goes away (the end of the
channel: the script's ``disconnect`` if a ``connect`` ran, the DNS change reverted),
or, if it was killed, at the next root runner's start (its state file, in a
directory only root can write: ``<the helper's state dir>-root``). ``--recover``: only
that, then exit (the helper asks for it when a crashed session left such a file).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any, Final

from sepconnect.ipc.runner_messages import ROOT_REQUESTS, Ran, RevertDns, RunScript, SetDns
from sepconnect.ipc.script_env import check_env, check_script_args
from sepconnect.ipc.wire import Message
from sepconnect.process import programs, statedir, statefile
from sepconnect.process.journal import MESSAGE_ID, Result, write_record
from sepconnect.process.journal_socket import open_journal
from sepconnect.process.records import process_entry
from sepconnect.process.runner import run_program, runner_channel, serve
from sepconnect.process.title import set_title
from sepconnect.rootrunner import dns as _dns
from sepconnect.rootrunner.script import check_script

PROCESS_TITLE: Final = "sepconnect: root-runner"
STATE_PREFIX: Final = "rootrunner"


class _Audit:
    """Its records in the helper's audit log (fd inherited, opened by root) and the journal."""

    fd: int | None = None
    journal: socket.socket | None = None


def record(op: str, result: Result, reason: str = "", **args: str | int | None) -> None:
    entry = process_entry("rootrunner", op, result, reason, args)
    write_record(entry, _Audit.fd, _Audit.journal, "sepconnect-rootrunner", MESSAGE_ID)
    if result in ("refused", "fatal"):
        with contextlib.suppress(OSError):
            os.write(2, f"sepconnect root runner: {op}: {reason}\n".encode(errors="replace"))


class Runner:
    """The session's vpnc-script and DNS backend, and its state file."""

    def __init__(self, script: tuple[str, ...] | None, backend: str | None, state_dir: str) -> None:
        self.script = script
        """The vpnc-script's argv: its path, then its arguments (``-s`` with arguments)."""
        self.state = statefile.StateFile(state_dir, STATE_PREFIX)
        self.dns: _dns.Backend | None = None
        if backend == "file":
            saved = os.path.join(state_dir, f"resolv.conf.{os.getpid()}.orig")
            self.dns = _dns.ResolvConfFile(saved)
        elif backend == "resolvconf":
            program = programs.installed(programs.RESOLVCONF_PATHS)
            if program is None:
                raise OSError("--dns-backend resolvconf: no resolvconf program installed")
            self.dns = _dns.Resolvconf(program)
        self.disconnect_env: bytes | None = None

    def handle(self, msg: Message) -> Ran:
        match msg:
            case RunScript(reason=reason, env=blob) if self.script is not None:
                ran, env = run_script(self.script, reason, blob)
                if reason == "disconnect":
                    self.disconnect_env = None  # the helper ran it: nothing left to undo
                elif env is not None and reason != "pre-init":
                    self.disconnect_env = encode_env({**env, "reason": "disconnect"})
                self._save()
                return ran
            case SetDns() if self.dns is not None:
                try:
                    self.dns.apply(msg)
                except _dns.DnsError as exc:
                    return Ran(status=1, note=str(exc)[:200])
                finally:
                    self._save()
                return Ran(status=0, note="")
            case RevertDns() if self.dns is not None:
                errors = self.dns.revert()
                self._save()
                return Ran(status=1 if errors else 0, note="; ".join(errors)[:200])
        return Ran(status=126, note=f"not run: this runner was not started for {msg.op}")

    def finish(self) -> int:
        """The helper is gone: undo what is still applied; 0 if all of it went."""
        errors: list[str] = []
        if self.disconnect_env is not None and self.script is not None:
            ran, _ = run_script(self.script, "disconnect", self.disconnect_env)
            self.disconnect_env = None
            if ran.status:
                errors.append(f"vpnc-script disconnect: {ran.note}")
        if self.dns is not None:
            errors += self.dns.revert()
            for note in getattr(self.dns, "notes", []):
                record("dns", "info", note)
        for error in errors:
            record("cleanup", "fatal", error)
        if errors:
            self._save()
            return 1
        self.state.remove()
        return 0

    def _save(self) -> None:
        env = self.disconnect_env
        dns = {} if self.dns is None else self.dns.record()
        try:
            self.state.write(script_env=None if env is None else env.decode(), dns=dns)
        except OSError as exc:
            record("state", "info", f"cannot write {self.state.path}: {exc}")


def run_script(
    script: tuple[str, ...], reason: str, blob: bytes
) -> tuple[Ran, dict[str, str] | None]:
    """Run the vpnc-script (its argv: path and arguments) for ``reason`` if ``blob`` and
    the argv pass every check; the environment it ran with (None: not run)."""
    try:
        env = check_env(blob)
        check_script(script[0])
        check_script_args(script[1:])
    except (ValueError, OSError) as exc:
        return Ran(status=126, note=f"not run: {str(exc)[:180]}"), None
    if env["reason"] != reason:
        return Ran(status=126, note="not run: reason mismatch"), None
    return run_program(list(script), env, None), env


def encode_env(env: dict[str, str]) -> bytes:
    return b"\0".join(f"{k}={v}".encode() for k, v in env.items())


def recover(state_dir: str, script: tuple[str, ...] | None) -> None:
    """Undo what crashed root runners left behind (their state files)."""
    for path, data in statedir.stale(state_dir, STATE_PREFIX):
        ok = True
        env = data.get("script_env")
        if isinstance(env, str) and script is not None:
            ran, _ = run_script(script, "disconnect", env.encode())
            what = f"vpnc-script disconnect for the crashed session: status {ran.status}"
            record("recover", "ok" if ran.status == 0 else "info", what, pid=data.get("pid"))
        dns: Any = data.get("dns")
        if isinstance(dns, dict) and dns.get("backend") == "file":
            try:
                what = _dns.restore_resolv_conf(dns["path"], dns["written"], dns["saved"])
                record("recover", "ok", what, pid=data.get("pid"))
            except (OSError, KeyError, TypeError) as exc:
                ok = False
                record("recover", "info", f"resolv.conf not restored: {exc}", pid=data.get("pid"))
        elif isinstance(dns, dict) and isinstance(dns.get("record"), str):
            program = programs.installed(programs.RESOLVCONF_PATHS)
            ran = (
                Ran(status=127, note="no resolvconf")
                if program is None
                else (run_program([program, "-d", dns["record"]], {}, None))
            )
            what = f"resolvconf -d {dns['record']}: status {ran.status}"
            record("recover", "ok" if ran.status == 0 else "info", what, pid=data.get("pid"))
        if ok:
            try:
                os.unlink(path)
            except OSError as exc:
                record("recover", "info", f"cannot remove {path}: {exc}")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, tuple[str, ...] | None]:
    """Our command line (the helper wrote it: privhelper/runners.py root_runner_args) and
    the vpnc-script's argv in it, if any (not yet checked)."""
    parser = argparse.ArgumentParser(prog="sepconnect-rootrunner", allow_abbrev=False)
    parser.add_argument("--fd", type=int)
    parser.add_argument("--peer-uid", type=int, required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--audit-fd", type=int)
    parser.add_argument("--script")
    # "=" on the helper's side: an argument may start with "-"
    parser.add_argument("--script-arg", action="append", default=[])
    parser.add_argument("--dns-backend", choices=("file", "resolvconf"))
    parser.add_argument("--recover", action="store_true")
    args = parser.parse_args(argv)
    if args.script_arg and args.script is None:
        parser.error("--script-arg without --script")
    return args, None if args.script is None else (args.script, *args.script_arg)


def main(argv: Sequence[str] | None = None) -> int:
    args, script = parse_args(argv)
    set_title(PROCESS_TITLE)
    _Audit.fd, _Audit.journal = args.audit_fd, open_journal()
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the helper's channel decides when we end
    try:
        if script is not None:
            check_script(script[0])
            check_script_args(script[1:])
        statedir.ensure_dir(args.state_dir, 0, 0)
        recover(args.state_dir, script)
        if args.recover:
            return 0
        runner = Runner(script, args.dns_backend, args.state_dir)
    except (OSError, ValueError) as exc:
        record("start", "fatal", str(exc))
        return 2
    status = serve(runner_channel(args.fd, ROOT_REQUESTS), runner.handle, args.peer_uid)
    return max(status, runner.finish())


if __name__ == "__main__":
    sys.exit(main())

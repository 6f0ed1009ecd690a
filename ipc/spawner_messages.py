"""Messages between the supervisor and the worker spawner.

The worker runs under a uid of its own (never the supervisor's or the helper's), so
the supervisor, unprivileged and without capabilities, can neither start nor signal
it. The spawner, a small process under the worker's uid, does that for it: it starts a
worker on the channel end the supervisor hands it, signals only its own children, and
reports each one's exit. Every request gets exactly one reply, in order (``Spawned``,
``Signalled`` or ``Refused``); ``Exited`` comes whenever a worker exits.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Final, Literal

from sepconnect.ipc.fields import Reason
from sepconnect.ipc.wire import PROTO_VERSION, Codec, Message, Range

Pid = Annotated[int, Range(1, 2**22)]  # PID_MAX_LIMIT
ExitStatus = Annotated[int, Range(-64, 255)]
"""As Popen.returncode: the exit code, or -N for a worker killed by signal N."""

SIGNALS: Final = {"SIGTERM": 15, "SIGKILL": 9}
"""The only signals the supervisor may have sent to a worker (their Linux numbers)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Spawn(Message):
    """Supervisor → spawner: start a worker on the channel end this message carries
    (SCM_RIGHTS); answered by :class:`Spawned` or :class:`Refused`."""

    op: ClassVar[str] = "spawn"
    proto: Annotated[int, Range(PROTO_VERSION, PROTO_VERSION)]
    allow_weak_sandbox: bool
    """The worker's ``--allow-weak-sandbox`` (the launcher's option of that name)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Signal(Message):
    """Supervisor → spawner: send ``signal`` to worker ``pid``, which must be a child of
    the spawner that has not been reaped; answered by :class:`Signalled` or
    :class:`Refused`."""

    op: ClassVar[str] = "signal"
    pid: Pid
    signal: Literal["SIGTERM", "SIGKILL"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Spawned(Message):
    """Spawner → supervisor: the worker runs (forked; its program is being executed)."""

    op: ClassVar[str] = "spawned"
    pid: Pid


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Signalled(Message):
    op: ClassVar[str] = "signalled"
    pid: Pid


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Refused(Message):
    """Spawner → supervisor: the request was not carried out, and why (one line)."""

    op: ClassVar[str] = "refused"
    reason: Reason


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Exited(Message):
    """Spawner → supervisor, unasked: worker ``pid`` exited and was reaped."""

    op: ClassVar[str] = "exited"
    pid: Pid
    status: ExitStatus


TO_SPAWNER = Codec(Spawn, Signal)
FROM_SPAWNER = Codec(Spawned, Signalled, Refused, Exited)
FD_TO_SPAWNER = frozenset({Spawn.op})
"""Only a Spawn carries an fd: the worker's end of its channel to the supervisor."""

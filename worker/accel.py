"""Which data-path implementation this worker runs: the compiled accelerator
(worker/_accel.c, built by ``pip install .`` when a C compiler and the Python headers
are there) or the pure-Python reference (DESIGN.md §4, docs/performance.md).

The worker imports this module before its sandbox closes (worker/main.py), so the
extension's shared object is mapped then; using it later makes no system call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from OpenSSL import SSL

    from sepconnect.worker import _accel

__all__ = [
    "IMPLEMENTATION",
    "Gcm",
    "coalesce",
    "cstp_data_frames",
    "cstp_data_pairs",
    "split_frame",
    "split_mmsg",
    "tls_records",
]

# Each None on the Python path.
Gcm: type[_accel.Gcm] | None  # DTLS AES-GCM records (worker/proto/dtls_crypto.py)
split_frame: Callable[[bytes], list[bytes]] | None  # TSO frames (worker/proto/offload.py)
coalesce: Callable[[list[bytes]], list[bytes]] | None  # tun writes (worker/proto/offload.py)
cstp_data_frames: Callable[[list[bytes]], list[bytes]] | None  # worker/proto/cstp.py
cstp_data_pairs: Callable[[bytes | bytearray, int, Any], tuple[list[Any], int]] | None  # cstp.py
_SplitMmsg = Callable[[memoryview, memoryview, memoryview, int, int, int], tuple[list[bytes], int]]
split_mmsg: _SplitMmsg | None  # recvmmsg's messages (worker/io/mmsg.py)

try:
    from sepconnect.worker import _accel as _compiled
except ImportError:  # built without a compiler (or SEPCONNECT_NO_ACCEL=1)
    Gcm = split_frame = coalesce = split_mmsg = None
    cstp_data_frames = cstp_data_pairs = None
else:
    Gcm = _compiled.Gcm
    split_frame = _compiled.split_frame
    coalesce = _compiled.coalesce
    split_mmsg = _compiled.split_mmsg
    cstp_data_frames = _compiled.cstp_data_frames
    cstp_data_pairs = _compiled.cstp_data_pairs

IMPLEMENTATION: Literal["compiled", "python"] = "python" if Gcm is None else "compiled"


def tls_records(conn: SSL.Connection) -> _accel.TlsRecords | None:
    """Bursts of TLS records on *conn* (a pyOpenSSL connection on memory BIOs) in C, or
    None on the Python path.

    The C loop calls SSL_read, SSL_write, SSL_get_error and BIO_read of the OpenSSL that
    pyOpenSSL uses (linked into cryptography's extension), on the connection's own SSL
    object and outgoing BIO. Their addresses come from pyOpenSSL's cffi bindings and
    the connection's ``_ssl`` and ``_from_ssl``, which are not a public API: a release
    that changes them fails tests/unit/test_accel.py, and here means the Python path."""
    if Gcm is None:  # no accelerator
        return None
    try:
        from OpenSSL._util import ffi, lib

        functions = lib.SSL_read.__self__  # the cffi library behind pyOpenSSL's lib
        addresses = [
            int(ffi.cast("uintptr_t", ffi.addressof(functions, name)))
            for name in ("SSL_read", "SSL_write", "SSL_get_error", "BIO_read")
        ]
        ssl = int(ffi.cast("uintptr_t", conn._ssl))
        from_bio = int(ffi.cast("uintptr_t", conn._from_ssl))  # None: not on memory BIOs
    except (ImportError, AttributeError, TypeError):
        return None
    return _compiled.TlsRecords(conn, ssl, from_bio, *addresses)

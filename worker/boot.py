"""The worker program's first module: what must happen before anything else imports.

pyOpenSSL imports `cryptography.x509`, whose `extensions` module imports `hashlib`;
hashlib's import of `_hashlib` maps the system's libcrypto.so.3 (3.4 MB of RSS, ~3 ms),
although the worker hashes nothing with it: TLS and DTLS use the OpenSSL built into
cryptography's own extension. An entry of None in `sys.modules` makes that import fail
(the documented way to block an import), and hashlib then uses CPython's built-in
implementations (`_sha1`, `_sha256`, …): the same digests, for the one SHA-1 that
cryptography.x509 computes when asked for a key identifier. Only the worker program
runs this; the modules it imports stay importable anywhere else.
"""

from __future__ import annotations

import sys


def main() -> int:
    if "_hashlib" not in sys.modules:
        sys.modules["_hashlib"] = None  # type: ignore[assignment]
    from sepconnect.worker.main import main as worker_main

    return worker_main()

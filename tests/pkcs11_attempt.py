"""Why a key in a PKCS#11 token cannot reach the TLS library sepconnect uses (issue 14).

Run by tests/integration/test_client_cert.py with the venv's Python, SOFTHSM2_CONF set
and argv: the key's PKCS#11 URI, the certificate file, the token's module. It prints what
it finds and tries: the bindings of the OpenSSL that pyOpenSSL uses (cryptography's own),
then the key loaded from the token by the system's OpenSSL 3 with the pkcs11 engine
(libengine-pkcs11-openssl) and handed to pyOpenSSL's SSL_CTX_use_PrivateKey.
"""

from __future__ import annotations

import ctypes
import sys

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL
from OpenSSL.SSL import _ffi, _lib

lib = Binding().lib
print("TLS library:", SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode())
for name in (
    "ENGINE_by_id",
    "ENGINE_load_private_key",
    "OSSL_PROVIDER_load",
    "OSSL_STORE_open",
    "OSSL_STORE_load",
    "SSL_CTX_use_PrivateKey",
):
    print(f"  {name} in its bindings:", hasattr(lib, name))
print("  Cryptography_HAS_ENGINE:", getattr(lib, "Cryptography_HAS_ENGINE", None))
sysc = ctypes.CDLL("libcrypto.so.3")
sysc.OpenSSL_version.restype = ctypes.c_char_p
print("system libcrypto:", sysc.OpenSSL_version(0).decode())
sysc.ENGINE_by_id.restype = ctypes.c_void_p
sysc.ENGINE_by_id.argtypes = [ctypes.c_char_p]
sysc.ENGINE_init.argtypes = [ctypes.c_void_p]
sysc.ENGINE_ctrl_cmd_string.argtypes = [
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_int,
]
sysc.ENGINE_load_private_key.restype = ctypes.c_void_p
sysc.ENGINE_load_private_key.argtypes = [
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
]
eng = sysc.ENGINE_by_id(b"pkcs11")
print("  system ENGINE_by_id('pkcs11'):", bool(eng))
sysc.ENGINE_ctrl_cmd_string(eng, b"MODULE_PATH", sys.argv[3].encode(), 0)
print("  ENGINE_init:", sysc.ENGINE_init(eng))
sysc.ENGINE_ctrl_cmd_string(eng, b"PIN", b"1234", 0)
pkey = sysc.ENGINE_load_private_key(eng, sys.argv[1].encode(), None, None)
print("  key from the token (EVP_PKEY of the system libcrypto):", hex(pkey or 0))
ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
ctx.use_certificate_file(sys.argv[2])
print("  handing it to the bundled OpenSSL's SSL_CTX_use_PrivateKey ...", flush=True)
rc = _lib.SSL_CTX_use_PrivateKey(ctx._context, _ffi.cast("EVP_PKEY *", pkey))
print("  SSL_CTX_use_PrivateKey returned", rc, flush=True)
print("  SSL_CTX_check_private_key:", _lib.SSL_CTX_check_private_key(ctx._context), flush=True)

"""The optional compiled accelerator of the worker's data path (worker/_accel.c).

Everything else is in pyproject.toml. The extension is optional: without a C compiler,
the Python headers or OpenSSL's (gcc, python3-dev, libssl-dev: scripts/bootstrap.sh
installs them) the build skips it with a warning and the package installs and
runs on the pure-Python path (worker/accel.py). ``SEPCONNECT_NO_ACCEL=1`` leaves it out
on purpose (A/B measurements, and the test that the Python path installs alone).
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

extensions = []
if os.environ.get("SEPCONNECT_NO_ACCEL") != "1":
    extensions.append(
        Extension(
            "sepconnect.worker._accel",
            sources=["worker/_accel.c"],
            libraries=["crypto"],  # the system's OpenSSL 3 (libssl-dev to build)
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    )

setup(ext_modules=extensions)

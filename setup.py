"""Declares the Cython extensions; metadata lives in pyproject.toml."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("RINGBUS_DEBUG", "") not in ("", "0")
SANITIZE = os.environ.get("RINGBUS_SANITIZE", "")  # e.g. "address,undefined"

CYTHON_DIRECTIVES = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "embedsignature": True,
    "binding": False,  # methods as plain C methods: a bound call skips the cyfunction layer
}

compile_args = ["-std=gnu11", "-O2" if not DEBUG else "-O0", "-g0" if not DEBUG else "-g"]
link_args = []
macros = [("RINGBUS_DEBUG", "1")] if DEBUG else []
if SANITIZE:
    compile_args += [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer"]
    link_args += [f"-fsanitize={SANITIZE}"]


def core_extension(name):
    return Extension(
        f"ringbus._core.{name}",
        [f"src/ringbus/_core/{name}.pyx"],
        include_dirs=["csrc"],
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )


setup(
    ext_modules=cythonize(
        [core_extension(n) for n in ("_ring", "_priority_queue", "_array_ring", "_shm_channel", "_crc32c",
                                               "_histogram")],
        compiler_directives=CYTHON_DIRECTIVES,
        include_path=["src"],
    ),
)

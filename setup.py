"""Build the native hot path: every csrc/_NAME.pyx becomes the extension _NAME of the subsystem
that owns it (PACKAGE_OF; the load generator's engine goes to esc_bench: the product does not
carry it).

A .pyx names the plain C files it links with in its own header
(`# distutils: sources = csrc/crc32c.c`), so this file needs no per-module table.
"""

import glob
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)

compile_args = ["-O2", "-Wall"]
if sys.platform.startswith("linux"):
    compile_args.append("-fno-strict-aliasing")
# Debug checks compile away (docs/conventions.md §10): ESC_DEBUG=1 turns them on.
macros = [("ESC_DEBUG", "1")] if os.environ.get("ESC_DEBUG") == "1" else []

PACKAGE_OF = {
    "_codec": "eventstream.storage",
    "_crc32c": "eventstream.storage",
    "_wal": "eventstream.storage",
    "_frames": "eventstream.transport",
    "_append_intake": "eventstream.transport",
    "_spsc_ring": "eventstream.replication",
    "_state": "eventstream.state",
    "_load_engine": "esc_bench",
}

# Native TLS (csrc/tls_link.h) needs OpenSSL's headers; without them the modules that carry it
# are built without (ESC_NO_TLS) and say so when TLS is asked of them.
OPENSSL_HEADERS = any(os.path.exists(os.path.join(d, "openssl", "ssl.h"))
                      for d in ("/usr/include", "/usr/local/include", os.environ.get("OPENSSL_INCLUDE", "/nonexistent")))

# Every header and plain C file: a change to a wire format's header rebuilds each module that
# may include it, not only those whose .pyx changed.
NATIVE_DEPENDS = sorted(glob.glob("csrc/*.h") + glob.glob("csrc/*.c"))

extensions = []
for pyx in sorted(glob.glob("csrc/_*.pyx")):
    stem = os.path.splitext(os.path.basename(pyx))[0]
    if stem not in PACKAGE_OF:
        sys.exit(f"setup.py: {pyx} names no subsystem: add it to PACKAGE_OF")
    with open(pyx) as f:
        with_tls = "csrc/tls_link.c" in f.readline()
    extensions.append(
        Extension(
            f"{PACKAGE_OF[stem]}.{stem}",
            [pyx],
            include_dirs=["csrc"],
            depends=NATIVE_DEPENDS,
            extra_compile_args=compile_args,
            define_macros=macros + ([] if not with_tls or OPENSSL_HEADERS else [("ESC_NO_TLS", "1")]),
            libraries=["ssl", "crypto"] if with_tls and OPENSSL_HEADERS else [],
        )
    )

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["csrc"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        build_dir="build/cython",
    ),
)

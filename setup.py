"""Build the native hot path: every csrc/_NAME.pyx becomes the extension eventstream._NAME
(the load generator's engine becomes esc_bench._NAME: the product does not carry it).

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

PACKAGE_OF = {"_load_engine": "esc_bench"}

extensions = []
for pyx in sorted(glob.glob("csrc/_*.pyx")):
    stem = os.path.splitext(os.path.basename(pyx))[0]
    extensions.append(
        Extension(
            f"{PACKAGE_OF.get(stem, 'eventstream')}.{stem}",
            [pyx],
            include_dirs=["csrc"],
            extra_compile_args=compile_args,
            define_macros=macros,
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

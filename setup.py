"""Build settings for native code; everything else is in pyproject.toml.

The C kernels (``src/convatlas/ops/kernels/csrc``) are built into one shared library, loaded with ctypes (not
imported). The extension is optional: without a C compiler the package installs without it and the operators run
their PyTorch path (or build the library on first use when a compiler appears later).
"""

import runpy
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).parent
KERNELS = ROOT / "src" / "convatlas" / "ops" / "kernels"
# the one definition of the sources, flags and digest, shared with the loader (a stdlib-only module)
native = runpy.run_path(str(KERNELS / "native.py"))

setup(
    ext_modules=[
        Extension(
            "convatlas.ops.kernels._native",
            sources=[str((KERNELS / "csrc" / name).relative_to(ROOT)) for name in native["SOURCES"]],
            extra_compile_args=list(native["CFLAGS"]),
            define_macros=[("KERNELS_SOURCE_DIGEST", f'"{native["source_digest"]()}"')],
            libraries=["m"],
            optional=True,
        )
    ]
)

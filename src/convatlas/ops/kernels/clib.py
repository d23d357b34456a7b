"""Small C kernels: compiled with the system C compiler on first use, cached by source hash, called through ctypes.

The kernels are plain C (no PyTorch headers). ``$CC`` picks the compiler (default ``gcc``); the cache lives in
``$CONVATLAS_CACHE_DIR/kernels`` (default ``~/.cache/convatlas/kernels``), or under the temporary directory when
that is read-only. A :class:`CLibrary` that cannot be built warns once and reports ``None``, and its caller runs
the PyTorch path instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

_CFLAGS = ["-O3", "-shared", "-fPIC", "-std=c99", "-ffp-contract=off", "-fno-fast-math"]


def _cache_dir() -> Path:
    root = os.environ.get("CONVATLAS_CACHE_DIR") or Path.home() / ".cache" / "convatlas"
    return Path(root) / "kernels"


def _build(path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src = Path(tmp) / "kernel.c"
        src.write_text(source)
        out = Path(tmp) / path.name
        cc = os.environ.get("CC", "gcc")
        subprocess.run([cc, *_CFLAGS, str(src), "-o", str(out), "-lm"], check=True, capture_output=True, timeout=120)
        os.replace(out, path)  # atomic: concurrent processes either see the old state or the finished library


def compile_library(name: str, source: str) -> ctypes.CDLL:
    """Compile C ``source`` into the kernel cache (once per source hash) and load it.

    Raises:
        OSError, subprocess.SubprocessError: when there is no compiler or the build fails.
    """
    digest = hashlib.sha256((source + " ".join(_CFLAGS)).encode()).hexdigest()[:16]
    path = _cache_dir() / f"convatlas_{name}_{digest}.so"
    if not path.exists():
        try:
            _build(path, source)
        except PermissionError:  # read-only home (some CI runners): build under the temporary directory instead
            path = Path(tempfile.gettempdir()) / "convatlas-kernels" / path.name
            if not path.exists():
                _build(path, source)
    return ctypes.CDLL(str(path))


class CLibrary:
    """A C kernel built on first use and bound to its function signatures.

    Args:
        name: the cache file's stem.
        source: the C source.
        signatures: ``{function: (restype, argtypes)}`` for every function the callers use.
        what: how the warning names the kernel (``"C NMS kernel"``).
    """

    def __init__(self, name: str, source: str, signatures: dict[str, tuple[type | None, Sequence[type]]], what: str):
        self.name, self.source, self.signatures, self.what = name, source, signatures, what
        self._lib: ctypes.CDLL | None = None
        self._failed = False

    def load(self) -> ctypes.CDLL | None:
        """The loaded library, building it on first use; ``None`` when it cannot be built (warns once)."""
        if self._lib is not None or self._failed:
            return self._lib
        try:
            lib = compile_library(self.name, self.source)
            for fn_name, (restype, argtypes) in self.signatures.items():
                fn = getattr(lib, fn_name)
                fn.restype, fn.argtypes = restype, list(argtypes)
            self._lib = lib
        except (OSError, subprocess.SubprocessError, AttributeError) as exc:
            self._failed = True
            warnings.warn(f"convatlas: {self.what} unavailable ({exc}); using the PyTorch path", stacklevel=4)
        return self._lib

"""The C kernels (NMS, soft-NMS, RoI pool, selective search): one shared library, built at install, loaded safely.

The sources in ``csrc/`` are plain C99 (no Python or PyTorch headers) and are called through :mod:`ctypes`. They are
compiled into one shared library:

1. at install time: ``pip install .`` (or ``pip install -e .``) builds ``setup.py``'s optional extension
   ``convatlas.ops.kernels._native`` next to this file; a machine without a C compiler installs without it;
2. otherwise, on first use, with the system C compiler (``$CC``, default ``cc``) into the per-user cache
   ``$XDG_CACHE_HOME/convatlas/kernels`` (default ``~/.cache/convatlas/kernels``), created with mode 0700, the file
   named by a digest of the sources and flags.

Every library carries the digest of the sources it was built from; a build from other sources (a stale in-place
build) is not used. A library is only loaded when neither it nor any directory above it can be written by another
user (:func:`untrusted_reason`); there is no fallback to a shared temporary directory. When no library can be built
or trusted, one warning says why and that the PyTorch path (``backend="torch"``) runs instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.machinery
import os
import shutil
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CFLAGS",
    "SOURCES",
    "NativeLibrary",
    "cache_dir",
    "compiler",
    "library",
    "source_digest",
    "untrusted_reason",
]

CSRC = Path(__file__).parent / "csrc"
SOURCES = ("nms.c", "roi_pool.c", "selective_search.c", "version.c")
# -ffp-contract=off: no fused multiply-adds, so the IoU is computed exactly as written (bit-for-bit greedy NMS)
CFLAGS = ("-O3", "-std=c99", "-fPIC", "-ffp-contract=off", "-fno-fast-math")
EXTENSION = "_native"  # the library setup.py builds next to this file: _native<EXT_SUFFIX>


def source_digest(csrc: Path = CSRC) -> str:
    """16 hex digits identifying the sources and flags; compiled into the library as ``convatlas_kernels_digest()``."""
    h = hashlib.sha256(" ".join(CFLAGS).encode())
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (csrc / name).read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """The per-user directory for libraries built on first use: ``$XDG_CACHE_HOME/convatlas/kernels``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "convatlas" / "kernels"


def _user_private_group(gid: int) -> bool:
    """Whether ``gid`` is this user's own group (named after the user, no other members): write access for that
    group is write access for this user only (the user-private-group convention of Debian and Fedora)."""
    import grp
    import pwd

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return group.gr_name == user and set(group.gr_mem) <= {user}


def untrusted_reason(path: str | os.PathLike) -> str | None:
    """Why another user could replace ``path`` (a file or directory), or ``None`` when nobody else can.

    The path is resolved (symbolic links followed), then it and every directory above it must be owned by this user
    or root and must not be writable by other users: not by "others", and not by a group other than the user's own
    private group. A directory with the sticky bit (``/tmp``) may be writable by all above the file: others cannot
    rename or replace entries they do not own there.
    """
    if not hasattr(os, "geteuid"):
        return "file ownership cannot be checked on this platform"
    real = Path(os.path.realpath(path))
    uid = os.geteuid()
    for depth, p in enumerate([real, *real.parents]):
        try:
            st = os.stat(p)
        except OSError as exc:
            return f"{p} cannot be checked ({exc.strerror})"
        if st.st_uid not in (uid, 0):
            return f"{p} is owned by uid {st.st_uid}, not by this user (uid {uid}) or root"
        others = bool(st.st_mode & stat.S_IWOTH)
        group = bool(st.st_mode & stat.S_IWGRP) and not _user_private_group(st.st_gid)
        if others or group:
            if depth > 0 and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
                continue
            who = "all users" if others else f"group {st.st_gid}"
            return f"{p} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _installed_library(directory: Path) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = directory / f"{EXTENSION}{suffix}"
        if path.is_file():
            return path
    return None


def _private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700; an existing one is only checked (by the caller)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it: checked like any existing one
            d.mkdir(mode=0o700)


def compiler() -> str | None:
    """The C compiler command for first-use builds (``$CC``, default ``cc``), or ``None`` when it is not on PATH."""
    cc = os.environ.get("CC") or "cc"
    return cc if shutil.which(cc.split()[0]) is not None else None


def _compile(out: Path, csrc: Path, digest: str) -> None:
    """Compile the sources into ``out`` through a private temporary directory and an atomic rename."""
    cc = compiler()
    if cc is None:
        raise OSError(f"no C compiler: {os.environ.get('CC') or 'cc'!r} is not on PATH")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # mode 0700
        tmp_out = Path(tmp) / out.name
        cmd = [*cc.split(), *CFLAGS, "-shared", f'-DKERNELS_SOURCE_DIGEST="{digest}"']
        cmd += [str(csrc / name) for name in SOURCES] + ["-o", str(tmp_out), "-lm"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise OSError(f"{cc} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
        os.replace(tmp_out, out)


class NativeLibrary:
    """The kernels' shared library, found or built on first use and bound to its function signatures.

    Args:
        signatures: ``{function: (restype, argtypes)}`` for every function the callers use.
        package_dir: where an installed build (``_native<EXT_SUFFIX>``) is looked for.
        csrc: the C sources.
        build_dir: where a first-use build goes (default :func:`cache_dir`).
    """

    def __init__(
        self,
        signatures: dict[str, tuple[type | None, Sequence[type]]],
        *,
        package_dir: Path = Path(__file__).parent,
        csrc: Path = CSRC,
        build_dir: Path | None = None,
    ) -> None:
        self.signatures = signatures
        self.package_dir, self.csrc, self.build_dir = package_dir, csrc, build_dir
        self._lib: ctypes.CDLL | None = None
        self._done = False
        self.path: Path | None = None
        self.reason = "not loaded yet"

    def load(self) -> ctypes.CDLL | None:
        """The library, or ``None`` when it cannot be built or trusted (one warning says why and what runs)."""
        if not self._done:
            self._done = True
            self._lib, self.path, self.reason = self._find()
            if self._lib is None:
                warnings.warn(
                    f"convatlas: the C kernels are unavailable ({self.reason}); NMS, soft-NMS and RoI pool run their "
                    'PyTorch path (backend="torch") and selective search its NumPy path instead',
                    RuntimeWarning,
                    stacklevel=3,
                )
        return self._lib

    def _open(self, path: Path, digest: str) -> tuple[ctypes.CDLL | None, str]:
        reason = untrusted_reason(path)
        if reason is not None:
            return None, f"{path} is not loaded: {reason}"
        try:
            lib = ctypes.CDLL(str(path))
            lib.convatlas_kernels_digest.restype = ctypes.c_char_p
            built_from = lib.convatlas_kernels_digest().decode()
            for name, (restype, argtypes) in self.signatures.items():
                fn = getattr(lib, name)
                fn.restype, fn.argtypes = restype, list(argtypes)
        except (OSError, AttributeError) as exc:
            return None, f"{path} cannot be loaded ({exc})"
        if built_from != digest:
            return None, f"{path} was built from other sources (digest {built_from}, expected {digest})"
        return lib, ""

    def _find(self) -> tuple[ctypes.CDLL | None, Path | None, str]:
        try:
            digest = source_digest(self.csrc)
        except OSError as exc:
            return None, None, f"the C sources cannot be read ({exc})"
        reasons = []
        installed = _installed_library(self.package_dir)
        if installed is not None:
            lib, why = self._open(installed, digest)
            if lib is not None:
                return lib, installed, "built when the package was installed"
            reasons.append(why)
        directory = self.build_dir or cache_dir()
        path = directory / f"convatlas_kernels_{digest}.so"
        try:
            _private_dir(directory)
            reason = untrusted_reason(directory)
            if reason is not None:
                raise OSError(f"the kernel cache {directory} is not private: {reason}")
            if not path.exists():
                _compile(path, self.csrc, digest)
        except (OSError, subprocess.SubprocessError) as exc:
            reasons.append(f"building on first use failed: {exc}")
            return None, None, "; ".join(reasons)
        lib, why = self._open(path, digest)
        if lib is None:
            reasons.append(why)
            return None, None, "; ".join(reasons)
        return lib, path, f"built on first use into {directory}"


_VP, _I64, _F64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
_NMS_ARGS = [_VP, _VP, _I64, _F64, _VP]
_SOFT_NMS_ARGS = [_VP, _VP, _I64, _I64, _F64, _F64, _F64, _VP, _VP]
_ROI_POOL_ARGS = [_VP, _I64, _I64, _I64, _VP, _I64, _I64, _I64, _F64, _VP, _VP, _VP]
_ROI_POOL_BACKWARD_ARGS = [_VP, _VP, _VP, _I64, _I64, _I64, _I64, _VP]
SIGNATURES = {
    "nms_f32": (_I64, _NMS_ARGS),
    "nms_f64": (_I64, _NMS_ARGS),
    "soft_nms_f32": (_I64, _SOFT_NMS_ARGS),
    "soft_nms_f64": (_I64, _SOFT_NMS_ARGS),
    "argsort_desc_f32": (_I64, [_VP, _I64, _VP]),
    "roi_pool_argmax_f32": (None, _ROI_POOL_ARGS),
    "roi_pool_argmax_f64": (None, _ROI_POOL_ARGS),
    "roi_pool_backward_f32": (None, _ROI_POOL_BACKWARD_ARGS),
    "roi_pool_backward_f64": (None, _ROI_POOL_BACKWARD_ARGS),
    "ss_felzenszwalb": (_I64, [_I64, _I64, _I64, _VP, _VP, _F64, _I64, _VP]),
    "ss_argsort_f64": (_I64, [_I64, _VP, _VP]),
    "ss_region_stats": (None, [_I64, _I64, _VP, _I64, _I64, _VP, _I64, _VP, _VP, _VP]),
    "ss_adjacent_pairs": (_I64, [_I64, _I64, _VP, _I64, _VP]),
    "ss_group": (_I64, [_I64, _I64, _I64, _I64, _I64, _VP, _VP, _VP, _I64, _VP, _I64, _F64, _VP]),
}
LIBRARY = NativeLibrary(SIGNATURES)


def library() -> ctypes.CDLL | None:
    """The C kernels, loaded (or built) on first use; ``None`` when unavailable (warns once)."""
    return LIBRARY.load()

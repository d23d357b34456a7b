"""Writing the user's files safely: atomic writes, output checks before long work, stale temporaries.

Every file convatlas writes goes through :func:`atomic_write` (or one of its shorthands): the data is written to a
temporary file beside the target (``.NAME.tmpPID.EXT``), flushed, fsync-ed and renamed over the target, so a reader or
a crash never sees half a file. Commands check every output path with :func:`check_output_file` or
:func:`check_output_dir` *before* they start work, so a typo in ``--out`` fails in a second instead of after an hour
of training. An existing output is replaced only when the caller says so (``overwrite=True``, the CLI's
``--overwrite``), and never when it is a file of a training run (:data:`RUN_FILES`) in that run's folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from convatlas.errors import BAD_NAME_ERRNOS

_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)(\.[^.]*)?$")

# The files a training run keeps in its folder (convatlas.train.runfolder), besides its tensor files and fold folders.
RUN_FILES = (
    "last.json",
    "best.json",
    "metrics.jsonl",
    "curves.png",
    "confusion.png",
    "masks.png",
    "cv_results.json",
    "metrics.json",  # written by earlier versions of the detection loop
    "history.json",
)
_RUN_PATTERN = re.compile(r"^((last|best)-\d+\.safetensors|fold-\d+)$")


def is_run_file(name: str) -> bool:
    """Whether ``name`` is the name of a file (or fold folder) that a training run keeps in its folder."""
    return name in RUN_FILES or bool(_RUN_PATTERN.match(name))


def holds_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a training run: a checkpoint record or cross-validation results."""
    return any((Path(folder) / name).is_file() for name in ("last.json", "best.json", "cv_results.json"))


def temporary_path(path: str | os.PathLike) -> Path:
    """The temporary name :func:`atomic_write` uses for ``path``: hidden, in the same folder, with the pid and the
    original suffix (so writers that choose a format by extension still work)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)`` and rename the result over ``path`` after an fsync.

    Args:
        path: the file to create or replace; its folder is created if need be.
        write: writes the whole file at the path it is given (for example ``image.save`` or ``onnx.save``).

    Returns:
        ``path``. If ``write`` raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value, *, indent: int | None = 2) -> Path:
    """Write ``value`` as JSON to ``path`` atomically (``allow_nan`` off: NaN is not JSON)."""
    return atomic_write_text(path, json.dumps(value, indent=indent, allow_nan=False) + "\n")


def _probe_writable(folder: Path, option: str) -> None:
    """Create and delete a file in ``folder``: the only test that also catches read-only file systems (and root)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".convatlas-probe-", dir=folder)
    except OSError as err:
        raise PermissionError(f"{option}: cannot write in {folder} ({err.strerror})") from None
    os.close(fd)
    os.unlink(name)


def _existing_ancestor(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(".")


def _check_name(path: str | os.PathLike, option: str) -> Path:
    """Refuse an empty name (which ``Path`` would read as the current folder) and a name the file system cannot use
    at all (too long, a loop of symbolic links), which ``Path.exists`` and ``Path.is_dir`` would report as missing
    until the write fails after the work."""
    if not os.fspath(path).strip():
        raise ValueError(f"{option}: the name is empty; give a path")
    path = Path(path)
    try:
        path.stat()
    except OSError as err:
        if err.errno in BAD_NAME_ERRNOS:
            name = str(path) if len(str(path)) <= 200 else f"{str(path)[:120]}... ({len(str(path))} characters)"
            raise ValueError(f"{option} {name}: {err.strerror}") from None
    return path


def check_output_dir(path: str | os.PathLike, option: str, *, create: bool = False) -> Path:
    """Check that ``path`` is, or can become, a folder this process can write in.

    Args:
        path: the folder.
        option: what the caller calls it in messages (``"--out"``, ``"out_dir"``).
        create: also create it (and its parents).

    Raises:
        ValueError: the name is too long or loops through symbolic links.
        NotADirectoryError: ``path`` or one of its ancestors is a file.
        PermissionError: the folder (or the nearest existing ancestor) cannot be written.
    """
    path = _check_name(path, option)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{option} {path}: is a file, not a folder")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise NotADirectoryError(f"{option} {path}: {base} is a file, so no folder can be made under it")
    _probe_writable(base, f"{option} {path}")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PermissionError(f"{option}: cannot create the folder {path} ({err.strerror})") from None
    return path


def check_output_file(path: str | os.PathLike, option: str, *, overwrite: bool = False) -> Path:
    """Check that ``path`` can be written as a new file (or replaced, with ``overwrite``), before any work starts.

    Raises:
        ValueError: the name is empty, too long or loops through symbolic links.
        IsADirectoryError: ``path`` is a folder.
        FileExistsError: ``path`` exists and ``overwrite`` is false, or it is not a regular file (a device, a pipe),
            or it names a file of the training run in its folder (:func:`is_run_file`); the last two whatever
            ``overwrite`` says.
        NotADirectoryError, PermissionError: its folder cannot hold it.
    """
    path = _check_name(path, option)
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path}: is a folder; give a file name")
    if str(path).endswith(os.sep) or path.name in ("", ".", ".."):
        raise IsADirectoryError(f"{option} {path}: names a folder; give a file name")
    if path.exists() and not path.is_file():  # replacing /dev/null or a pipe with a file would break its readers
        raise FileExistsError(f"{option} {path}: exists and is not a regular file (a device, pipe or socket); pick "
                              "another name")  # fmt: skip
    if is_run_file(path.name) and holds_run(path.parent):
        raise FileExistsError(f"{option} {path}: a file of the training run in {path.parent}, which only training "
                              "writes (even with --overwrite); pick another name")  # fmt: skip
    if path.exists() and not overwrite:
        raise FileExistsError(f"{option} {path}: already exists; pass --overwrite to replace it, or pick another name")
    check_output_dir(path.parent if str(path.parent) else Path("."), option)
    return path


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.NAME.tmpPID...``) that a killed process left in ``folder``.

    A file whose process is still alive is kept.

    Returns:
        the deleted paths.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if not match or not entry.is_file() or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True

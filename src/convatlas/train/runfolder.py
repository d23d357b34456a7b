"""The run folder: never destroyed, owned by one process at a time, checkpointed on SIGINT and SIGTERM.

- A folder that holds any file of a run (:data:`RUN_FILES`) is refused unless the run is resumed or explicitly
  overwritten (then exactly those files are removed before training starts; other files are left alone).
- While a run is alive it holds an exclusive ``flock`` on ``.convatlas.lock`` in the folder; a second process is
  refused. The kernel drops the lock when its owner dies, even by SIGKILL, so a killed run's folder can be resumed at
  once. The lock file itself stays (removing a lock file while others may wait on it is unsafe) and is not a run file.
- Everything the run will write is checked before any work starts: the folder (or its nearest existing ancestor) must
  be writable, and no output name may be taken by a folder.
- Stale temporary files of killed writers (``files.clean_stale_temporaries``) are removed when the lock is taken.
- :class:`StopSignals` turns SIGINT and SIGTERM into a flag that the training loop checks after every step, so it can
  write a checkpoint before it exits; a second signal of the same kind acts at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from convatlas.files import RUN_FILES, check_output_dir, clean_stale_temporaries, is_run_file
from convatlas.train.config import ConfigError

LOCK_NAME = ".convatlas.lock"


class RunFolder:
    """A run's output folder.

    Args:
        path: the folder (need not exist yet).
        outputs: the file names the run will write there (checked before work starts).
    """

    def __init__(self, path: str | os.PathLike, outputs: Sequence[str] = RUN_FILES) -> None:
        self.path = Path(path)
        self.outputs = tuple(outputs)
        self._fd: int | None = None

    def run_files(self) -> list[str]:
        """The names of run files in the folder, sorted."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if is_run_file(p.name))

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse, before anything is written, a folder that cannot take this run.

        Raises:
            ConfigError: (field ``out``) the path is a file or not writable, an output name is a folder, the folder
                holds a run and neither ``resume`` nor ``overwrite`` is set, or ``resume`` finds no run.
        """
        if resume and overwrite:
            raise ConfigError("out", f"{self.path}: `resume` continues the run there and `overwrite` replaces it; "
                              "choose one")  # fmt: skip
        try:
            check_output_dir(self.path, "out")
        except OSError as err:
            raise ConfigError("out", str(err).removeprefix("out ")) from None
        for name in (*self.outputs, LOCK_NAME):
            if (self.path / name).is_dir():
                raise ConfigError("out", f"{self.path}: {name} is a folder, so the run cannot write its {name}")
        found = self.run_files()
        if found and not (resume or overwrite):
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            raise ConfigError("out", f"{self.path} already holds a run ({shown}); continue it with `resume`, replace "
                              "it with `overwrite`, or pick another folder")  # fmt: skip

    def acquire(self, *, resume: bool, overwrite: bool) -> None:
        """Create the folder, take its lock, check again under the lock, clear it for ``overwrite``, and remove stale
        temporaries.

        Raises:
            ConfigError: another live process holds the folder (naming its pid), or a run appeared meanwhile.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError("out", f"{self.path}: another process (pid {owner}) is training in this folder; wait "
                              "for it to end or pick another folder") from None  # fmt: skip
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            self.check(resume=resume, overwrite=overwrite)
        except ConfigError:
            self.release()
            raise
        if overwrite:
            self.clear()
        clean_stale_temporaries(self.path)

    def clear(self) -> None:
        """Remove the run files (and ``fold-NN`` folders) of the folder; other files stay."""
        for name in self.run_files():
            path = self.path / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def release(self) -> None:
        """Drop the lock (the kernel also drops it when the process dies)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def held(self, *, resume: bool, overwrite: bool) -> Iterator[RunFolder]:
        """:meth:`acquire` for the block."""
        self.acquire(resume=resume, overwrite=overwrite)
        try:
            yield self
        finally:
            self.release()


class StopSignals:
    """Within the block, SIGINT and SIGTERM set :attr:`received` instead of ending the process.

    A second signal of the same kind gets the previous handler's behaviour (SIGINT: ``KeyboardInterrupt``). Outside
    the main thread nothing is installed (Python allows signal handlers only there).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received == signum:
            previous = self._previous.get(signum)
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            if callable(previous):
                previous(signum, frame)
            else:
                os.kill(os.getpid(), signum)
            return
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


@contextlib.contextmanager
def hold(folder: RunFolder, info, *, resume: bool, overwrite: bool) -> Iterator[RunFolder]:
    """:meth:`RunFolder.held` by the main process of a (possibly distributed) run; when it cannot take the folder,
    every process raises, so none waits for the others in vain.

    Args:
        info: the process's :class:`~convatlas.train.distributed.DistInfo`.
    """
    from convatlas.train import distributed as dist_utils

    error = None
    with contextlib.ExitStack() as stack:
        if info.is_main:
            try:
                stack.enter_context(folder.held(resume=resume, overwrite=overwrite))
            except ConfigError as err:
                error = err
        if dist_utils.any_true([error is not None], info)[0]:
            raise error or ConfigError("out", f"{folder.path}: the main process could not take the run folder")
        yield folder

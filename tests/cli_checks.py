"""The one checker for bad command lines: run ``convatlas.cli.main(argv)`` in-process and assert the user-error
contract (exit status 2, no traceback, one line that names what was wrong, nothing the user had was changed).

    result = expect_user_error(["arith", "conv", "--length", "-1"], names=["--length"])
    with unchanged(run_folder):
        expect_user_error(["train", ..., "--out", str(run_folder)], names=["--out"])

Each test file that owns a command group keeps its own table of bad inputs and calls :func:`expect_user_error`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(argv: Sequence[str]) -> CliResult:
    """``convatlas.cli.main(argv)`` with stdout and stderr captured; argparse's ``SystemExit`` becomes the code."""
    from convatlas.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    return CliResult(int(code or 0), out.getvalue(), err.getvalue())


def expect_user_error(argv: Sequence[str], *, names: Sequence[str] = ()) -> CliResult:
    """Assert that ``argv`` is refused as the user's mistake.

    Checks: exit status 2; no traceback (an exception escaping ``main`` fails the test with its own traceback);
    the last line of stderr is an ``error:`` line that contains every string of ``names`` (the option, the file,
    the value); stderr holds at most one line apart from argparse's usage lines.

    Returns:
        the captured result.
    """
    result = run_cli(argv)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    context = f"argv={list(argv)!r}\nstdout={result.stdout!r}\nstderr={result.stderr!r}"
    assert result.code == 2, f"exit status {result.code}, expected 2\n{context}"
    assert lines, f"no message on stderr\n{context}"
    assert "Traceback" not in result.stderr, context
    message = lines[-1]
    assert "error:" in message, f"the last line is not an error line\n{context}"
    extra = [line for line in lines[:-1] if not line.startswith(("usage:", " "))]
    assert not extra, f"more than one message line: {extra}\n{context}"
    for name in names:
        assert str(name) in message, f"the message does not name {name!r}: {message}\n{context}"
    return result


def _fingerprint(root: Path) -> dict[str, tuple[int, str]]:
    files = {}
    for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files[os.fspath(path.relative_to(root) if root.is_dir() else path.name)] = (path.stat().st_size, digest)
    return files


@contextlib.contextmanager
def unchanged(*roots: str | os.PathLike) -> Iterator[None]:
    """Assert that no file under ``roots`` (folders or files) was created, changed or removed in the block."""
    paths = [Path(r) for r in roots]
    before = [_fingerprint(p) if p.exists() else None for p in paths]
    yield
    after = [_fingerprint(p) if p.exists() else None for p in paths]
    for path, b, a in zip(paths, before, after, strict=True):
        assert b == a, f"{path} changed: before {b}, after {a}"

"""convatlas.files (atomic writes, output checks, stale temporaries) and convatlas.errors (the CLI's error policy)."""

import os

import pytest

from convatlas.errors import InputTypeError, is_user_error, one_line
from convatlas.files import (
    atomic_write,
    atomic_write_json,
    check_output_dir,
    check_output_file,
    clean_stale_temporaries,
    temporary_path,
)


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert target.read_text() == '{\n  "a": 2\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "m.txt"
    target.write_text("old")

    def broken(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.txt"]


def test_temporary_keeps_suffix_for_format_detection(tmp_path):
    assert temporary_path(tmp_path / "a.png").suffix == ".png"


def test_atomic_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"loss": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_check_output_file_rules(tmp_path):
    (tmp_path / "exists.onnx").write_text("x")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(IsADirectoryError, match="--onnx"):
        check_output_file(tmp_path, "--onnx")
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_output_file(tmp_path / "exists.onnx", "--onnx")
    assert check_output_file(tmp_path / "exists.onnx", "--onnx", overwrite=True) == tmp_path / "exists.onnx"
    with pytest.raises(NotADirectoryError, match="afile"):
        check_output_file(tmp_path / "afile" / "x.onnx", "--onnx")
    with pytest.raises(PermissionError, match="--onnx"):
        check_output_file("/proc/convatlas-test/x.onnx", "--onnx")  # read-only even for root
    assert check_output_file(tmp_path / "new" / "deeper" / "x.onnx", "--onnx").name == "x.onnx"
    assert not (tmp_path / "new").exists()  # a check creates nothing


def test_check_output_dir(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="--out"):
        check_output_dir(tmp_path / "afile", "--out")
    assert check_output_dir(tmp_path / "run" / "a", "--out", create=True).is_dir()


def test_clean_stale_temporaries_keeps_live_ones(tmp_path):
    dead = tmp_path / ".last.tmp999999999.safetensors"
    live = tmp_path / f".last.tmp{os.getpid()}.json"
    other = tmp_path / "last.json"
    for p in (dead, live, other):
        p.write_text("x")
    assert clean_stale_temporaries(tmp_path) == [dead]
    assert live.exists() and other.exists()


def test_error_policy():
    assert is_user_error(ValueError("x")) and is_user_error(InputTypeError("x"))
    assert is_user_error(FileNotFoundError("x")) and is_user_error(PermissionError("x"))
    assert not is_user_error(TypeError("x")) and not is_user_error(KeyError("x"))
    assert one_line(ValueError("a\n b\n")) == "a; b"
    assert one_line(FileNotFoundError(2, "No such file or directory", "/x")) == "/x: No such file or directory"

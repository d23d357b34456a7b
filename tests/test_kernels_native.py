"""How the C kernels are built and loaded: the install-time extension, the private first-use cache, the rule that no
library is loaded from a place another user can write, stale builds, and the one warning when none can be used.

References: the file-permission rule itself (what another user could replace), checked on real files and
directories with real owners and modes; the loaded kernels are checked against torchvision in test_ops_nms.py.
"""

from __future__ import annotations

import grp
import importlib.machinery
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

from convatlas.ops import backends
from convatlas.ops import boxes as B
from convatlas.ops.backend import resolve
from convatlas.ops.kernels import native

ROOT = Path(__file__).parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
OTHER_UID = 65534  # "nobody"
# Where a C compiler or an installed build exists the C kernels must load (a failed build fails the tests that use
# them); elsewhere the tests of backend="c" skip. The other suites import these marks.
needs_cc = pytest.mark.skipif(native.compiler() is None, reason="no C compiler")
needs_c = pytest.mark.skipif(
    native.compiler() is None and native.library() is None, reason="no C compiler and no installed build"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One library built from the package's sources into a private directory (reused by copying)."""
    directory = tmp_path_factory.mktemp("built")
    directory.chmod(0o700)
    lib = native.NativeLibrary(native.SIGNATURES, package_dir=directory / "none", build_dir=directory)
    assert lib.load() is not None, lib.reason
    return lib.path


def fresh(tmp_path: Path, **kw) -> native.NativeLibrary:
    package = tmp_path / "package"
    package.mkdir(mode=0o700, exist_ok=True)
    kw.setdefault("build_dir", tmp_path / "cache")
    return native.NativeLibrary(native.SIGNATURES, package_dir=package, **kw)


def installed_name() -> str:
    return native.EXTENSION + importlib.machinery.EXTENSION_SUFFIXES[0]


def test_private_file_and_directories_are_trusted(tmp_path):
    tmp_path.chmod(0o700)
    f = tmp_path / "lib.so"
    f.write_bytes(b"")
    f.chmod(0o644)
    assert native.untrusted_reason(f) is None


def test_file_or_directory_writable_by_others_is_refused(tmp_path):
    tmp_path.chmod(0o700)
    d = tmp_path / "dir"
    d.mkdir()
    f = d / "lib.so"
    f.write_bytes(b"")
    f.chmod(0o646)
    assert "lib.so is writable by all users (mode 0646)" in native.untrusted_reason(f)
    f.chmod(0o644)
    d.chmod(0o777)  # another user could replace the file: refused even though the file itself is read-only
    assert f"{d} is writable by all users (mode 0777)" in native.untrusted_reason(f)
    d.chmod(0o1777)  # sticky, like /tmp: others cannot replace an entry this user owns
    assert native.untrusted_reason(f) is None
    d.chmod(0o755)
    tmp_path.chmod(0o777)  # a directory further up counts too
    assert f"{tmp_path} is writable by all users" in native.untrusted_reason(f)
    tmp_path.chmod(0o700)


def test_symbolic_link_into_a_shared_directory_is_refused(tmp_path):
    tmp_path.chmod(0o700)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    (shared / "lib.so").write_bytes(b"")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "lib.so").symlink_to(shared / "lib.so")
    assert "shared is writable by all users" in native.untrusted_reason(private / "lib.so")


@pytest.mark.skipif(not IS_ROOT, reason="changing a file's owner needs root")
def test_file_or_directory_owned_by_another_user_is_refused(tmp_path):
    tmp_path.chmod(0o700)
    d = tmp_path / "dir"
    d.mkdir(mode=0o755)
    f = d / "lib.so"
    f.write_bytes(b"")
    os.chown(f, OTHER_UID, -1)
    assert f"owned by uid {OTHER_UID}" in native.untrusted_reason(f)
    os.chown(f, 0, -1)
    os.chown(d, OTHER_UID, -1)
    assert f"{d} is owned by uid {OTHER_UID}" in native.untrusted_reason(f)


@pytest.mark.skipif(not IS_ROOT, reason="changing a file's group needs root")
def test_group_writable_is_refused_unless_the_group_is_the_users_own(tmp_path):
    tmp_path.chmod(0o700)
    f = tmp_path / "lib.so"
    f.write_bytes(b"")
    f.chmod(0o664)
    shared_groups = [g for g in grp.getgrall() if g.gr_gid != 0 and g.gr_name != "root"]
    if not shared_groups:
        pytest.skip("no group other than root's")
    os.chown(f, -1, shared_groups[0].gr_gid)
    assert f"writable by group {shared_groups[0].gr_gid}" in native.untrusted_reason(f)
    os.chown(f, -1, 0)  # root's own group, without other members: the user-private-group convention
    if set(grp.getgrgid(0).gr_mem) <= {"root"}:
        assert native.untrusted_reason(f) is None


@needs_cc
def test_first_use_build_goes_to_a_private_cache_and_is_reused(tmp_path):
    lib = fresh(tmp_path, build_dir=tmp_path / "a" / "b" / "kernels")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lib.load() is not None
    assert lib.path.parent == tmp_path / "a" / "b" / "kernels"
    assert lib.reason.startswith("built on first use")
    for d in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "kernels"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d  # created private
    assert list(lib.path.parent.iterdir()) == [lib.path]  # no temporaries left behind
    mtime = lib.path.stat().st_mtime_ns
    again = fresh(tmp_path, build_dir=lib.path.parent)
    assert again.load() is not None and again.path.stat().st_mtime_ns == mtime  # not rebuilt


@needs_cc
@pytest.mark.skipif(not IS_ROOT, reason="planting a file as another user needs root")
def test_library_planted_in_a_cache_another_user_owns_is_never_loaded(tmp_path, built):
    """The attack: another user pre-creates the cache directory and puts a library with the expected name in it."""
    tmp_path.chmod(0o755)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    planted = cache / built.name
    shutil.copy(built, planted)
    os.chown(planted, OTHER_UID, -1)
    os.chown(cache, OTHER_UID, -1)
    lib = fresh(tmp_path, build_dir=cache)
    with pytest.warns(
        RuntimeWarning, match=r"not private: .* is owned by uid 65534.*PyTorch path \(backend=\"torch\"\)"
    ):
        assert lib.load() is None


@needs_cc
def test_library_in_a_world_writable_cache_is_never_loaded(tmp_path, built):
    tmp_path.chmod(0o700)
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    shutil.copy(built, cache / built.name)
    lib = fresh(tmp_path, build_dir=cache)
    with pytest.warns(RuntimeWarning, match=r"cache .* is not private: .* writable by all users \(mode 0777\)"):
        assert lib.load() is None


@needs_cc
def test_installed_library_in_a_writable_directory_is_skipped_for_a_private_build(tmp_path, built):
    tmp_path.chmod(0o700)
    lib = fresh(tmp_path)
    lib.package_dir.chmod(0o777)
    shutil.copy(built, lib.package_dir / installed_name())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lib.load() is not None
    assert lib.path.parent == tmp_path / "cache"  # the installed copy was not used


@needs_cc
def test_stale_installed_build_is_not_used(tmp_path, built):
    """A library built from other sources (an in-place build older than the sources) is skipped."""
    tmp_path.chmod(0o700)
    csrc = tmp_path / "csrc"
    shutil.copytree(native.CSRC, csrc)
    (csrc / "nms.c").write_text((csrc / "nms.c").read_text() + "\n/* an older version */\n")
    (tmp_path / "old").mkdir(mode=0o700)
    old = fresh(tmp_path / "old", csrc=csrc)
    assert old.load() is not None
    lib = fresh(tmp_path)
    shutil.copy(old.path, lib.package_dir / installed_name())
    assert lib.load() is not None
    assert lib.path.parent == tmp_path / "cache"  # rebuilt from the current sources instead


def test_no_compiler_warns_once_and_the_pytorch_path_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    lib = fresh(tmp_path)
    with pytest.warns(RuntimeWarning) as record:
        assert lib.load() is None
        assert lib.load() is None  # said once
    assert len(record) == 1
    message = str(record[0].message)
    assert "no C compiler" in message and 'run their PyTorch path (backend="torch")' in message
    monkeypatch.setattr(native, "LIBRARY", lib)
    assert resolve("nms", "auto", "cpu") == "torch"
    with pytest.raises(
        ValueError, match=r"nms: backend='c' cannot run here: the C kernels are unavailable: .*compiler"
    ):
        B.nms(torch.zeros(1, 4), torch.zeros(1), 0.5, backend="c")
    boxes = torch.rand(300, 4) * 50
    boxes[:, 2:] += boxes[:, :2]
    scores = torch.rand(300)
    assert torch.equal(B.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))  # reference: torchvision
    assert any(r.op == "roi_pool" and r.auto == "torch" for r in backends("cpu"))


@needs_cc
def test_setup_py_builds_the_extension_the_loader_uses(tmp_path):
    """The install-time build (setup.py's optional extension) produces the library next to the package's modules."""
    tmp_path.chmod(0o700)
    out = tmp_path / "lib"
    cmd = [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(out), "--build-temp", str(tmp_path / "t")]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    package = out / "convatlas" / "ops" / "kernels"
    assert (package / installed_name()).is_file(), list(package.iterdir())
    lib = native.NativeLibrary(native.SIGNATURES, package_dir=package, build_dir=tmp_path / "unused")
    assert lib.load() is not None, lib.reason
    assert lib.reason == "built when the package was installed"
    assert not (tmp_path / "unused").exists()

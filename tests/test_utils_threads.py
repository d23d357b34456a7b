"""The CPU threads of every command: the usable cores (affinity mask, cgroup quota), ``OMP_NUM_THREADS``, ``--threads``,
the warning when data-loading workers and threads oversubscribe the cores, and the engine's and the CLI's use of them.
References: ``os.sched_getaffinity`` and ``torch.get_num_threads`` themselves; cgroup files written as the kernel
writes them (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``)."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from cli_checks import run_cli
from convatlas import utils
from convatlas.utils import MAX_THREADS, cgroup_cpu_quota, choose_threads, set_threads, usable_cores


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_omp(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(utils, "_WARNED", set())


def test_usable_cores_is_the_affinity_mask_on_this_machine():
    quota = cgroup_cpu_quota()
    expected = len(os.sched_getaffinity(0))
    if quota is not None:
        expected = min(expected, max(1, int(quota)))
    assert usable_cores() == expected >= 1


def test_usable_cores_follows_the_affinity_mask_and_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setattr(utils, "cgroup_cpu_quota", lambda: None)
    assert usable_cores() == 3
    monkeypatch.setattr(utils, "cgroup_cpu_quota", lambda: 2.5)  # docker --cpus 2.5: two whole cores
    assert usable_cores() == 2
    monkeypatch.setattr(utils, "cgroup_cpu_quota", lambda: 0.5)  # half a core: still one thread
    assert usable_cores() == 1
    monkeypatch.setattr(utils, "cgroup_cpu_quota", lambda: 16.0)  # a quota above the mask does not add cores
    assert usable_cores() == 3


def test_usable_cores_without_an_affinity_call_counts_the_cpus(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.setattr(utils, "cgroup_cpu_quota", lambda: None)
    assert usable_cores() == 6


def _tree(root, files: dict[str, str]):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cgroup_v2_quota_is_the_smallest_on_the_path(tmp_path, monkeypatch):
    root = tmp_path / "cgroup"
    _tree(root, {"cpu.max": "max 100000\n", "a/cpu.max": "300000 100000\n", "a/b/cpu.max": "max 100000\n",
                 "proc": "0::/a/b\n"})  # fmt: skip
    monkeypatch.setattr(utils, "_PROC_CGROUP", str(root / "proc"))
    assert cgroup_cpu_quota(root) == 3.0
    (root / "a" / "b" / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(root) == 1.5
    (root / "a" / "b" / "cpu.max").write_text("max 100000\n")
    (root / "a" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(root) is None


def test_cgroup_v1_quota_and_unreadable_files(tmp_path, monkeypatch):
    root = tmp_path / "cgroup"
    _tree(root, {"cpu/docker/x/cpu.cfs_quota_us": "50000\n", "cpu/docker/x/cpu.cfs_period_us": "100000\n",
                 "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n",
                 "proc": "5:memory:/docker/x\n1:cpu:/docker/x\n0::/\n"})  # fmt: skip
    monkeypatch.setattr(utils, "_PROC_CGROUP", str(root / "proc"))
    assert cgroup_cpu_quota(root) == 0.5
    (root / "cpu" / "docker" / "x" / "cpu.cfs_quota_us").write_text("not a number\n")
    assert cgroup_cpu_quota(root) is None
    monkeypatch.setattr(utils, "_PROC_CGROUP", str(root / "missing"))  # no /proc: the root's cpu.max
    (root / "cpu.max").write_text("400000 100000\n")
    assert cgroup_cpu_quota(root) == 4.0


def test_choose_threads_given_then_omp_then_the_cores(monkeypatch, no_omp):
    monkeypatch.setattr(utils, "usable_cores", lambda: 8)
    assert choose_threads() == 8
    assert choose_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads() == 2
    assert choose_threads(5) == 5
    for junk in ("0", "-1", "two", ""):
        monkeypatch.setenv("OMP_NUM_THREADS", junk)
        assert choose_threads() == 8


def test_workers_and_default_threads_share_the_cores_with_one_warning(monkeypatch, no_omp):
    monkeypatch.setattr(utils, "usable_cores", lambda: 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert choose_threads(workers=1) == 3
        assert choose_threads(workers=1) == 3  # said once
        assert choose_threads(workers=6) == 1  # at least one thread
    assert [str(w.message) for w in caught] == [
        "1 data-loading workers and 4 threads would exceed the 4 usable CPU cores; using 3 threads (give threads "
        "to choose)",
        "6 data-loading workers and 4 threads would exceed the 4 usable CPU cores; using 1 thread (give threads to "
        "choose)",
    ]
    assert all(w.category is RuntimeWarning for w in caught)


def test_given_threads_that_oversubscribe_are_kept_with_a_warning(monkeypatch, no_omp):
    monkeypatch.setattr(utils, "usable_cores", lambda: 2)
    with pytest.warns(RuntimeWarning, match=r"^threads 2 \+ 2 data-loading workers exceed the 2 usable CPU cores"):
        assert choose_threads(2, workers=2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with pytest.warns(RuntimeWarning, match=r"^OMP_NUM_THREADS 2 \+ 1 data-loading workers exceed"):
        assert choose_threads(workers=1) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_threads(1, workers=1) == 1  # fits: silent


@pytest.mark.parametrize("kwargs", [{"threads": -1}, {"threads": MAX_THREADS + 1}, {"threads": 1.5},
                                    {"threads": True}, {"workers": -2}])  # fmt: skip
def test_bad_counts_name_the_argument(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"^{name} must be an integer in 0\.\.{MAX_THREADS}, got "):
        choose_threads(**kwargs)


def test_set_threads_sets_torch(monkeypatch, no_omp, threads_restored):
    monkeypatch.setattr(utils, "usable_cores", lambda: 3)
    assert set_threads() == 3 == torch.get_num_threads()
    assert set_threads(1) == 1 == torch.get_num_threads()


def test_every_computing_command_takes_threads(monkeypatch, no_omp, threads_restored):
    monkeypatch.setattr(utils, "usable_cores", lambda: 3)
    torch.set_num_threads(1)
    assert run_cli(["summary", "resnet9", "--depth", "1"]).code == 0
    assert torch.get_num_threads() == 3  # the default: the usable cores
    assert run_cli(["summary", "resnet9", "--depth", "1", "--threads", "2"]).code == 0
    assert torch.get_num_threads() == 2
    bad = run_cli(["rf", "resnet9", "--threads", "-1"])
    assert bad.code == 2 and "argument --threads: must be >= 0, got -1" in bad.stderr
    for command in (["evaluate", "--checkpoint", "x"], ["predict", "--checkpoint", "x", "a.png"],
                    ["export", "--checkpoint", "x", "--onnx", "x.onnx"], ["detect", "--checkpoint", "x", "a.png"],
                    ["proposals", "a.png"], ["summary", "m"], ["rf", "m"], ["report", "m", "--out", "r.html"],
                    ["draw", "field", "m", "--out", "f.png"]):  # fmt: skip
        result = run_cli([*command, "--threads", "nine"])
        assert result.code == 2 and "argument --threads: must be an integer, got 'nine'" in result.stderr, command


def test_a_run_uses_and_records_the_default_threads_and_restores_torchs(tmp_path, monkeypatch, no_omp,
                                                                        threads_restored):  # fmt: skip
    from convatlas.train import TrainConfig, fit

    monkeypatch.setattr(utils, "usable_cores", lambda: 2)
    torch.set_num_threads(1)
    config = TrainConfig(model="resnet9", data="mnist5k", model_args={"width_mult": 0.125}, epochs=1, batch_size=16,
                         limit_train=32, limit_test=16, device="cpu", out=str(tmp_path / "run"))  # fmt: skip
    fit(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in records if r["kind"] == "epoch")
    assert epoch["threads"] == 2
    assert 0 < epoch["train_seconds"] <= epoch["seconds"]
    assert torch.get_num_threads() == 1
    assert json.loads((tmp_path / "run" / "last.json").read_text())["config"]["threads"] == 0  # 0 is what is kept

"""benchmarks/gpu.py: the one GPU script. Its CPU dry run goes through every section (the checks against
torchvision/timm/PyTorch references run on the CPU, the CUDA-only ones are skipped), and the orchestrator keeps going
when a section crashes, fails or overruns, records why, and stops at the global deadline.

The robustness tests drive the orchestrator with a stand-in worker (a small script speaking the same protocol), so
they take seconds; the dry run is the real script end to end."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    return load_benchmark("gpu")


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| section")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def test_dry_run_goes_through_every_section_without_a_failure(tmp_path, gpu):
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--threads", "1", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + (out / "gpu.log").read_text()[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(gpu.OUTPUTS)
    markdown = (out / "gpu.md").read_text()
    report = json.loads((out / "gpu.json").read_text())
    assert report["dry_run"] and report["finished"]
    env = report["environment"]
    assert env["device"].startswith("CPU") and env["torch"] and env["torchvision"] and env["date"][:2] == "20"
    assert f"torch {env['torch']}, torchvision {env['torchvision']}" in markdown
    rows = table_rows(markdown)
    assert len(rows) == len(report["rows"]) > 50
    by_section = {name: [r for r in report["rows"] if r["section"] == name] for name in gpu.SECTION_NAMES}
    for name, section_rows in by_section.items():
        ran = [r for r in section_rows if not r["result"].startswith("skipped")]
        assert ran, f"section {name} ran nothing: {section_rows}"
    assert all(s["status"] == "done" for s in report["sections"])
    results = {r["result"] for r in report["rows"]}
    assert not [r for r in results if r.startswith(("fail", "error", "timeout"))], results
    # the checks ran on the CPU paths against their references; the Triton ones say why they did not run
    checks = [r for name in gpu.SECTION_NAMES if name.startswith("checks") for r in by_section[name]]
    passed = [r for r in checks if r["result"] == "pass"]
    assert len(passed) > 30 and all(r["error"] <= r["tol"] for r in passed)
    triton = [r for r in checks if "[triton]" in r["case"]]
    assert triton and all(r["result"] in ("skipped: no CUDA", "skipped: CPU dry run") for r in triton)
    timings = [r for r in report["rows"] if r["result"] == "ok" and r["peer"] is not None]
    assert timings and all(r["speedup"] > 0 for r in timings)
    # the required comparisons, peer side by side: NMS, RoI align, lightweight/dynamic conv, Faster R-CNN, zoo vs timm
    compared = " ".join(r["case"] for r in timings)
    for word in ("nms", "roi_align", "lightweight_conv", "dynamic_conv", "faster_rcnn training", "eager train"):
        assert word in compared, word


FAKE_WORKER = textwrap.dedent(
    """
    # Stands in for gpu.py's worker: one good row, then a crash, a hang, a reported error, and good sections again.
    import json, os, sys, time

    out = sys.argv[1]
    env = dict(date="2026-01-01 00:00 UTC", device="test device", cuda="none", cudnn="n/a", torch="0", torchvision="0",
               triton="0", timm="0", python="3", cpu_cores=1, torch_threads=1, backends=["nms on cpu: auto -> c"])
    print(json.dumps({"ready": env}), flush=True)
    for line in sys.stdin:
        name = json.loads(line)["section"]
        with open(os.path.join(out, "rows.jsonl"), "a") as f:
            f.write(json.dumps(dict(case=f"{name} first case", result="pass", ours=None, peer=None, unit="",
                                    speedup=None, error=0.0, tol=1.0, note="", section=name, raw={})) + "\\n")
        if name == "checks-seqconv":
            sys.exit(3)
        if name == "checks-models":
            time.sleep(60)
        status = "error: RuntimeError: CUDA error: an illegal memory access" if name == "checks-detection" else "done"
        print(json.dumps({"section": name, "status": status, "wall_s": 0.0}), flush=True)
    """
)


def run_fake(gpu, tmp_path, monkeypatch, time_limit=60.0):
    monkeypatch.setattr(gpu, "SECTIONS", tuple(dataclasses.replace(s, budget_s=1.0) for s in gpu.SECTIONS))
    monkeypatch.setattr(gpu, "GRACE_S", 1.0)
    monkeypatch.setattr(gpu, "MIN_SECTION_S", 0.5)
    monkeypatch.setattr(gpu, "RESERVE_S", 0.5)
    worker = tmp_path / "worker.py"
    worker.write_text(FAKE_WORKER)
    out = tmp_path / "out"
    out.mkdir()
    args = argparse.Namespace(out=str(out), dry_run=True, time_limit=time_limit, sections=None)
    code = gpu.orchestrate(args, [sys.executable, str(worker), str(out)])
    return code, json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text()


def test_a_crash_a_hang_and_an_error_are_rows_and_the_other_sections_run(gpu, tmp_path, monkeypatch):
    code, report, markdown = run_fake(gpu, tmp_path, monkeypatch)
    assert code == 1  # failures make the exit status non-zero
    status = {s["name"]: s["status"] for s in report["sections"]}
    assert status["checks-ops"] == "done"
    assert status["checks-seqconv"] == "error: the worker exited with code 3 (see gpu.log)"
    assert status["checks-models"].startswith("timeout: stopped after 2 s")
    assert status["checks-detection"].startswith("error: RuntimeError: CUDA error")
    # every later section ran in a fresh worker and kept its rows
    for name in gpu.SECTION_NAMES[4:]:
        assert status[name] == "done", (name, status[name])
    first_cases = {r["section"] for r in report["rows"] if r["case"].endswith("first case")}
    assert first_cases == set(gpu.SECTION_NAMES)  # rows written before a crash or a hang are kept
    results = [r["result"] for r in report["rows"]]
    assert any(r.startswith("timeout") for r in results) and any("exited with code 3" in r for r in results)
    assert "| checks-models | (rest of the section) |" in markdown and "test device" in markdown


def test_the_global_deadline_skips_what_no_longer_fits(gpu, tmp_path, monkeypatch):
    code, report, markdown = run_fake(gpu, tmp_path, monkeypatch, time_limit=0.9)
    assert code == 0
    assert {s["status"] for s in report["sections"]} == {"skipped: global deadline"}
    assert len(table_rows(markdown)) == len(gpu.SECTION_NAMES)
    assert report["environment"] == {}  # no worker was started


def test_a_worker_that_cannot_start_stops_the_run_with_its_reason(gpu, tmp_path, monkeypatch):
    worker = tmp_path / "worker.py"
    worker.write_text('import json; print(json.dumps({"fatal": "no CUDA device is available"}), flush=True)')
    out = tmp_path / "out"
    out.mkdir()
    args = argparse.Namespace(out=str(out), dry_run=False, time_limit=60.0, sections=None)
    assert gpu.orchestrate(args, [sys.executable, str(worker)]) == 2
    report = json.loads((out / "gpu.json").read_text())
    assert [s["status"] for s in report["sections"]] == ["error: no CUDA device is available"]
    assert (
        "| checks-ops | (worker start) |  |  |  | error: no CUDA device is available |" in (out / "gpu.md").read_text()
    )


def test_existing_results_are_kept_without_overwrite(gpu, tmp_path, capsys):
    (tmp_path / "gpu.md").write_text("earlier results")
    with pytest.raises(SystemExit) as exc:
        gpu.main(["--dry-run", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "already holds gpu.md; pass --overwrite to replace them" in capsys.readouterr().err
    assert (tmp_path / "gpu.md").read_text() == "earlier results"


def test_checks_fail_on_wrong_results(gpu):
    import torch

    x = torch.linspace(-1, 1, 50, dtype=torch.float64)
    assert gpu.compare("same", x.float(), x, atol=1e-6, rtol=0).result == "pass"
    wrong = gpu.compare("off by 1e-3", x + 1e-3, x, atol=1e-5, rtol=1e-5)
    assert wrong.result == "fail" and wrong.error == pytest.approx(1e-3) and wrong.tol == pytest.approx(2e-5)
    assert gpu.compare("shape", x[:-1], x, atol=1, rtol=1).note == "shape (49,), reference (50,)"
    nan = x.clone()
    nan[3] = float("nan")
    assert gpu.compare("nan", nan, x, atol=1, rtol=1).result == "fail"
    # an unused input has no gradient on one side and zeros on the other: the same thing
    assert gpu.compare("grads", [None, x], [torch.zeros(3), x], atol=0, rtol=0).result == "pass"
    assert gpu.compare("grads", [None, x], [torch.ones(3), x], atol=0, rtol=0).result == "fail"
    assert gpu.exact("order", torch.tensor([2, 1, 0]), torch.tensor([0, 1, 2])).error == 2
    assert gpu.exact("longer", torch.tensor([0, 1, 2]), torch.tensor([0, 1])).result == "fail"
    assert gpu.relative_l2([2 * x], [x]) == pytest.approx(1.0)

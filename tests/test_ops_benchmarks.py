"""The operator benchmarks keep running: each script's quick mode (tiny sizes) on CPU through its ``main(argv)``,
checking ours against the peer inside the run (benchmarks/ops.py asserts equal NMS results, seqconv.py compares
outputs before timing). Timings are not checked here; they belong in the docs."""

from __future__ import annotations

import pytest

from benchmark_scripts import load_benchmark


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("ops", ["--quick", "--device", "cpu"]),
        ("conv", ["--quick", "--device", "cpu"]),
        ("seqconv", ["--quick", "--device", "cpu", "--skip-models"]),
    ],
)
def test_quick_mode_runs_every_case(name, argv, capsys):
    assert load_benchmark(name).main(argv) == 0
    out = capsys.readouterr().out
    assert {"ops": "### RoI align on cpu", "conv": "separable 3x3", "seqconv": "dynamic "}[name] in out


def test_cuda_device_without_cuda_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit) as exc:
        load_benchmark("ops").main(["--device", "cuda"])
    assert exc.value.code == 2
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err

"""Checkpoints: safetensors + JSON, atomic writes, corruption detection, no unpickling.

Reference: PyTorch's own ``optimizer.state_dict()`` (the flattened optimizer state must load back into an identical
state dict) and the bytes written (a flipped byte or a cut file must be detected by the SHA-256 and size checks).
"""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from torch import nn

from convatlas.train import checkpoint as ckpt
from convatlas.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _stepped_optimizer(kind: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        if kind == "sgd"
        else torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    )
    for _ in range(3):
        model(torch.randn(5, 4)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _assert_same_state(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for pid in a["state"]:
        assert a["state"][pid].keys() == b["state"][pid].keys()
        for key, value in a["state"][pid].items():
            other = b["state"][pid][key]
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other), (pid, key)
            else:
                assert value == other, (pid, key)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizer_state_survives_a_round_trip(tmp_path, kind):
    model, opt = _stepped_optimizer(kind)
    tensors, rest = ckpt.flatten_optimizer(opt.state_dict())
    state = {f"model/{k}": v for k, v in model.state_dict().items()}
    state.update({f"optimizer/{k}": v for k, v in tensors.items()})
    save_checkpoint(tmp_path, "last", state, {"global_step": 3, "optimizer": rest})
    loaded, meta = load_checkpoint(tmp_path, "last")
    fresh_model, fresh_opt = _stepped_optimizer("sgd" if kind == "sgd" else "adamw")
    fresh_opt.load_state_dict(ckpt.unflatten_optimizer(ckpt.prefixed(loaded, "optimizer"), meta["optimizer"]))
    _assert_same_state(opt.state_dict(), fresh_opt.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded[f"model/{k}"], v)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "last", {"w": torch.ones(3)}, {"global_step": 1})

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is not allowed")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    tensors, meta = load_checkpoint(tmp_path)
    assert torch.equal(tensors["w"], torch.ones(3)) and meta["global_step"] == 1
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))


def test_old_tensor_files_are_removed_and_tags_kept_apart(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, "last", {"w": torch.full((2,), float(step))}, {"global_step": step})
    save_checkpoint(tmp_path, "best", {"w": torch.zeros(2)}, {"global_step": 2})
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "best-000000002.safetensors",
        "last-000000003.safetensors",
    ]
    assert load_checkpoint(tmp_path, "last")[0]["w"][0] == 3
    assert load_checkpoint(tmp_path)[0]["w"][0] == 0  # a run folder defaults to best


def test_flipped_byte_is_reported_as_corrupted(tmp_path):
    save_checkpoint(tmp_path, "last", {"w": torch.arange(100.0)}, {"global_step": 7})
    path = tmp_path / "last-000000007.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"last-000000007.safetensors is corrupted: SHA-256"):
        load_checkpoint(tmp_path, "last")


def test_truncated_file_is_reported(tmp_path):
    save_checkpoint(tmp_path, "last", {"w": torch.arange(100.0)}, {"global_step": 7})
    path = tmp_path / "last-000000007.safetensors"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    with pytest.raises(CheckpointError, match=rf"truncated or corrupted: {size // 2} bytes, {size} were written"):
        load_checkpoint(tmp_path, "last")


def test_broken_json_and_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no best.json or last.json"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, "last", {"w": torch.ones(1)}, {"global_step": 1})
    (tmp_path / "last.json").write_text('{"format": "convatlas-checkpoint/1", "tens')
    with pytest.raises(CheckpointError, match="last.json is corrupted \\(not valid JSON"):
        load_checkpoint(tmp_path, "last")


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "last", {"w": torch.ones(4)}, {"global_step": 1})
    before = (tmp_path / "last.json").read_text()
    real_replace = os.replace

    def crash_on_json(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("simulated crash before the commit rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_json)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, "last", {"w": torch.zeros(4)}, {"global_step": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "last.json").read_text() == before
    tensors, meta = load_checkpoint(tmp_path, "last")
    assert meta["global_step"] == 1 and torch.equal(tensors["w"], torch.ones(4))
    assert json.loads(before)["tensors"] == "last-000000001.safetensors"

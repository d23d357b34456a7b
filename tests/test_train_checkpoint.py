"""Checkpoints: safetensors + a typed, versioned JSON record, atomic writes, corruption detection, no unpickling.

Reference: PyTorch's own ``optimizer.state_dict()`` (the flattened optimizer state must load back into an identical
state dict), the bytes written (a flipped byte or a cut file must be detected by the SHA-256 and size checks), and
the record's own dataclass (a record must survive JSON unchanged; a record of another format or version, with a
missing field or a value of the wrong type, is refused naming the file).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import pytest
import torch
from torch import nn

from convatlas.train import checkpoint as ckpt
from convatlas.train.checkpoint import (
    VERSION,
    CheckpointError,
    CheckpointRecord,
    InputSpec,
    ModelSpec,
    Progress,
    load_checkpoint,
    load_model,
    load_state,
    read_record,
    save_checkpoint,
)


def _record(step: int = 1, **changes) -> CheckpointRecord:
    record = CheckpointRecord(
        task="classification",
        model=ModelSpec("mobilenet_v2", {"num_classes": 10, "in_channels": 1, "width_mult": 0.35}),
        classes=[str(i) for i in range(10)],
        config={"model": "mobilenet_v2", "data": "mnist5k"},
        progress=Progress(global_step=step, sums={"loss": 1.5, "n": 3.0}, best_score=0.5, best_metrics={"a": 0.5}),
        inputs=InputSpec(1, [0.1], [0.3], None, [28, 28]),
    )
    return dataclasses.replace(record, **changes)


def _stepped_optimizer(kind: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    opt = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05),
        "adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0, rho=0.95, eps=1e-6),
    }[kind](model.parameters())
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
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, (pid, key)


@pytest.mark.parametrize("kind", ["sgd", "adamw", "adadelta"])
def test_optimizer_state_survives_a_round_trip(tmp_path, kind):
    model, opt = _stepped_optimizer(kind)
    tensors, rest = ckpt.flatten_optimizer(opt.state_dict())
    state = {f"model/{k}": v for k, v in model.state_dict().items()}
    state.update({f"optimizer/{k}": v for k, v in tensors.items()})
    save_checkpoint(tmp_path, "last", state, _record(3, optimizer=rest))
    loaded, record = load_checkpoint(tmp_path, "last")
    _, fresh_opt = _stepped_optimizer(kind)
    fresh_opt.load_state_dict(ckpt.unflatten_optimizer(ckpt.prefixed(loaded, "optimizer"), record.optimizer))
    _assert_same_state(opt.state_dict(), fresh_opt.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded[f"model/{k}"], v)


def test_the_record_survives_json_typed_and_versioned(tmp_path):
    save_checkpoint(tmp_path, "last", {"w": torch.ones(2)}, _record(5))
    record, path = read_record(tmp_path, "last")
    assert path == tmp_path / "last.json"
    assert isinstance(record.model, ModelSpec) and isinstance(record.progress, Progress)
    assert isinstance(record.inputs, InputSpec) and record.inputs.data_size == [28, 28]
    assert dataclasses.replace(record, tensors="", tensors_bytes=0, tensors_sha256="") == _record(5)
    saved = json.loads(path.read_text())
    assert saved["format"] == "convatlas-checkpoint" and saved["version"] == VERSION
    assert saved["tensors"] == "last-000000005.safetensors" and saved["progress"]["sums"] == {"loss": 1.5, "n": 3.0}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: {"format": "convatlas-checkpoint/1", "global_step": 3}, "earlier convatlas .*train the model again"),
        (lambda r: {**r, "version": 99}, "version 99, expected 'convatlas-checkpoint' version 2"),
        (lambda r: {k: v for k, v in r.items() if k != "classes"}, "field 'classes' of CheckpointRecord is missing"),
        (lambda r: {**r, "progress": {**r["progress"], "epoch": "two"}}, "field 'epoch' has the wrong type"),
        (lambda r: {**r, "model": {"name": "x"}}, "field 'kwargs' of ModelSpec is missing"),
        (lambda r: {**r, "colour": 1}, "unknown field 'colour'"),
        (lambda r: [1, 2], "expected a JSON object"),
    ],
)
def test_records_of_other_formats_or_shapes_are_refused_by_file(tmp_path, edit, message):
    save_checkpoint(tmp_path, "last", {"w": torch.ones(2)}, _record())
    path = tmp_path / "last.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(tmp_path, "last")
    assert str(path) in str(err.value)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "last", {"w": torch.ones(3)}, _record())

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is not allowed")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    tensors, record = load_checkpoint(tmp_path)
    assert torch.equal(tensors["w"], torch.ones(3)) and record.progress.global_step == 1
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))


def test_old_tensor_files_are_removed_and_tags_kept_apart(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, "last", {"w": torch.full((2,), float(step))}, _record(step))
    save_checkpoint(tmp_path, "best", {"w": torch.zeros(2)}, _record(2))
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "best-000000002.safetensors",
        "last-000000003.safetensors",
    ]
    assert load_checkpoint(tmp_path, "last")[0]["w"][0] == 3
    assert load_checkpoint(tmp_path)[0]["w"][0] == 0  # a run folder defaults to best


def test_flipped_byte_is_reported_as_corrupted(tmp_path):
    save_checkpoint(tmp_path, "last", {"w": torch.arange(100.0)}, _record(7))
    path = tmp_path / "last-000000007.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"last-000000007.safetensors is corrupted: SHA-256"):
        load_checkpoint(tmp_path, "last")


def test_truncated_file_is_reported(tmp_path):
    save_checkpoint(tmp_path, "last", {"w": torch.arange(100.0)}, _record(7))
    path = tmp_path / "last-000000007.safetensors"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    with pytest.raises(CheckpointError, match=rf"truncated or corrupted: {size // 2} bytes, {size} were written"):
        load_checkpoint(tmp_path, "last")


def test_broken_json_and_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no best.json or last.json"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, "last", {"w": torch.ones(1)}, _record())
    (tmp_path / "last.json").write_text('{"format": "convatlas-checkpoint", "tens')
    with pytest.raises(CheckpointError, match="last.json is corrupted \\(not valid JSON"):
        load_checkpoint(tmp_path, "last")


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "last", {"w": torch.ones(4)}, _record(1))
    before = (tmp_path / "last.json").read_text()
    real_replace = os.replace

    def crash_on_json(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("simulated crash before the commit rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_json)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, "last", {"w": torch.zeros(4)}, _record(2))
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "last.json").read_text() == before
    tensors, record = load_checkpoint(tmp_path, "last")
    assert record.progress.global_step == 1 and torch.equal(tensors["w"], torch.ones(4))
    assert json.loads(before)["tensors"] == "last-000000001.safetensors"


def test_tensors_of_another_model_are_a_checkpoint_error(tmp_path):
    model = ckpt.build_model(_record().model)
    save_checkpoint(tmp_path, "last", {f"model/{k}": v for k, v in model.state_dict().items()}, _record())
    assert load_model(tmp_path)[1].model.name == "mobilenet_v2"  # the record's own model loads
    wider = dataclasses.replace(_record().model, kwargs={**_record().model.kwargs, "width_mult": 0.5})
    state = ckpt.prefixed(load_checkpoint(tmp_path)[0], "model")
    with pytest.raises(CheckpointError, match=r"last.json: tensor '.*' has shape .* the model's is"):
        load_state(ckpt.build_model(wider), state, tmp_path / "last.json")
    other = ckpt.build_model(ModelSpec("mobilenet_v3_small", {"num_classes": 10, "in_channels": 1}))
    with pytest.raises(CheckpointError, match=r"do not fit the model \(\d+ missing, \d+ unexpected"):
        load_state(other, state, tmp_path / "last.json")

"""Checkpoints: tensors in safetensors, a typed and versioned record in JSON, written atomically, loaded without
unpickling.

A checkpoint named ``TAG`` (``"last"`` or ``"best"``) in a run folder is two files:

- ``TAG-<global step>.safetensors``: the tensors (model, optimizer state, RNG states), under prefixed names;
- ``TAG.json``: a :class:`CheckpointRecord` (format ``convatlas-checkpoint``, :data:`VERSION`): what the model is,
  the run's configuration and progress, the optimiser's and schedule's non-tensor state, and the tensor file's name,
  size and SHA-256.

Each file is written to a temporary name, flushed, fsync-ed and renamed; the JSON is renamed last and is the commit
point, so a crash at any moment leaves the previous checkpoint whole. Loading checks the record's format, version
and fields and the tensor file's size and SHA-256 before reading any tensor: anything wrong gives
:class:`CheckpointError` naming the file. Checkpoints of the first format (``convatlas-checkpoint/1``, an untyped
dictionary) are refused with that explanation: retrain the model. Nothing here calls ``pickle`` or ``torch.load``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from convatlas.errors import InputError, InputTypeError
from convatlas.files import atomic_write, atomic_write_json

FORMAT = "convatlas-checkpoint"
VERSION = 2
TAGS = ("last", "best")


class CheckpointError(InputError):
    """A checkpoint that is missing, truncated, corrupted, of another format, or of another model or task."""


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild the model: ``create_model(name, **kwargs)`` (tuples are stored as lists)."""

    name: str
    kwargs: dict


@dataclass(frozen=True)
class InputSpec:
    """What an image model expects: channels, the normalisation, and the sizes of training.

    Attributes:
        in_channels: C.
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
        image_size: the side inputs were resized to (``None``: the data's own size, ``data_size``).
        data_size: ``[H, W]`` of the training data's items.
    """

    in_channels: int
    mean: list[float]
    std: list[float]
    image_size: int | None
    data_size: list[int]


@dataclass
class Progress:
    """Where a run stands.

    Attributes:
        epoch: epochs completed.
        step: steps done in the epoch in progress.
        global_step: optimiser steps since the start.
        sums: the running sums of the epoch in progress (``loss`` weighted by ``n``, ...).
        best_score: the best value of the task's selection metric so far (``None`` before the first evaluation).
        best_epoch: the epoch that reached it.
        best_metrics: every evaluation metric of that epoch.
        last_metrics: the evaluation metrics of the last completed epoch.
        world_size: the processes that trained it.
    """

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    best_score: float | None = None
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    world_size: int = 1


@dataclass
class CheckpointRecord:
    """The JSON half of a checkpoint.

    Attributes:
        task: ``"classification"``, ``"segmentation"``, ``"text"`` or ``"detection"``.
        model: how to rebuild the model.
        classes: the class names, in label order (detection: the background first).
        config: the resolved :class:`~convatlas.train.config.TrainConfig` as a dict.
        progress: where the run stands.
        inputs: image tasks: what the model expects as input.
        fold: text: the cross-validation fold (1-based) this run trained.
        optimizer, scheduler, scaler: the non-tensor state of each (tensors are in the safetensors file).
        torch_version: the torch version that wrote it.
        tensors, tensors_bytes, tensors_sha256: the tensor file's name, size and digest (set when saved).
    """

    task: str
    model: ModelSpec
    classes: list[str]
    config: dict
    progress: Progress
    inputs: InputSpec | None = None
    fold: int | None = None
    optimizer: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    scaler: dict = field(default_factory=dict)
    torch_version: str = torch.__version__
    format: str = FORMAT
    version: int = VERSION
    tensors: str = ""
    tensors_bytes: int = 0
    tensors_sha256: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values, path: str | os.PathLike) -> CheckpointRecord:
        """Check and convert a JSON object; ``path`` is named in errors.

        Raises:
            CheckpointError: another format or version, a missing or unknown field, a value of the wrong type.
        """
        if not isinstance(values, dict):
            raise CheckpointError(f"checkpoint {path}: expected a JSON object, got {type(values).__name__}")
        found = values.get("format")
        if found == "convatlas-checkpoint/1":
            raise CheckpointError(
                f"checkpoint {path}: written by an earlier convatlas (format convatlas-checkpoint/1, an untyped "
                f"record); this version reads {FORMAT} version {VERSION} only: train the model again"
            )
        if found != FORMAT or values.get("version") != VERSION:
            raise CheckpointError(
                f"checkpoint {path}: format {found!r} version {values.get('version')!r}, expected {FORMAT!r} "
                f"version {VERSION}"
            )
        return _check_record(_typed(cls, values, f"checkpoint {path}"), f"checkpoint {path}")


def _check_record(record: CheckpointRecord, where: str) -> CheckpointRecord:
    """The rules the field types do not say, which a damaged or hand-edited record can break: a known task, class
    names for each of the model's outputs, a configuration that :class:`TrainConfig` reads, a progress of counts, and
    for image models the inputs they expect."""
    from convatlas.train.config import IMAGE_TASKS, TASKS, TrainConfig

    def refuse(name: str, rule: str):
        raise CheckpointError(f"{where}: field {name!r} {rule}")

    if record.task not in TASKS:
        refuse("task", f"must be one of {', '.join(TASKS)}, got {record.task!r}")
    if not record.classes or not all(isinstance(c, str) for c in record.classes):
        refuse("classes", f"must be a non-empty list of class names, got {record.classes!r}")
    outputs = record.model.kwargs.get("num_classes")
    expected = len(record.classes) - (record.task == "detection")  # detection lists the background first
    if outputs is not None and outputs != expected:
        refuse("classes", f"names {len(record.classes)} classes, but the model has {outputs} outputs")
    try:
        TrainConfig.from_dict(record.config)
    except (InputError, TypeError) as err:  # an unknown field, or a required one missing
        refuse("config", f"is not a training configuration ({err})")
    p = record.progress
    if min(p.epoch, p.step, p.global_step, p.best_epoch) < 0 or p.world_size < 1:
        refuse("progress", f"must hold counts >= 0 (world_size >= 1), got {p}")
    if record.task in IMAGE_TASKS:
        s = record.inputs
        if s is None:
            refuse("inputs", f"is required for a {record.task} checkpoint")
        numbers = [*s.mean, *s.std]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            refuse("inputs", f"mean and std must be finite numbers, got {s.mean} and {s.std}")
        if s.in_channels < 1 or len(s.mean) != s.in_channels or len(s.std) != s.in_channels or min(s.std) <= 0:
            refuse("inputs", f"must give in_channels >= 1 and as many mean and positive std values, got {s}")
        size_ok = len(s.data_size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                 for v in s.data_size)  # fmt: skip
        if not size_ok or (s.image_size is not None and s.image_size < 1):
            refuse("inputs", f"sizes must be positive, got data_size {s.data_size} and image_size {s.image_size}")
    return record


def _typed(cls, values: dict, where: str):
    """Build dataclass ``cls`` from a JSON dict, checking field names and (shallowly) types."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{where}: expected an object for {cls.__name__}, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise CheckpointError(f"{where}: unknown field {unknown[0]!r} in {cls.__name__}")
    kwargs = {}
    for name, f in fields.items():
        if name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CheckpointError(f"{where}: field {name!r} of {cls.__name__} is missing")
            continue
        kwargs[name] = _value(hints[name], values[name], f"{where}: field {name!r}")
    return cls(**kwargs)


def _value(hint, value, where: str):
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if dataclasses.is_dataclass(option):
            return _typed(option, value, where)
        base = typing.get_origin(option) or option
        if base is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(base, type) and isinstance(value, base) and not (base is int and isinstance(value, bool)):
            return value
    raise CheckpointError(f"{where} has the wrong type ({type(value).__name__})")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(folder: str | os.PathLike, tag: str, tensors: dict[str, Tensor], record: CheckpointRecord) -> Path:
    """Write checkpoint ``tag`` into ``folder``, atomically, and delete that tag's older tensor files.

    Args:
        folder: the run folder (it must exist).
        tag: ``"last"`` or ``"best"``.
        tensors: flat name -> tensor mapping (contiguous CPU copies are made here).
        record: the JSON half; its ``tensors*`` fields are filled in here.

    Returns:
        the path of the JSON file.
    """
    folder = Path(folder)
    name = f"{tag}-{record.progress.global_step:09d}.safetensors"
    tensor_path = folder / name
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(tensor_path, lambda tmp: save_file(cpu, str(tmp)))
    record = dataclasses.replace(
        record, tensors=name, tensors_bytes=tensor_path.stat().st_size, tensors_sha256=_sha256(tensor_path)
    )
    json_path = atomic_write_json(folder / f"{tag}.json", record.to_json(), indent=1)
    for old in folder.glob(f"{tag}-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return json_path


def resolve_checkpoint(path: str | os.PathLike, tag: str | None = None) -> Path:
    """The JSON file of a checkpoint given a run folder (``best`` if present, else ``last``) or the JSON file itself.

    Raises:
        CheckpointError: when there is no checkpoint there.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".json":
            raise CheckpointError(f"checkpoint {path}: give a run folder or its last.json / best.json")
        return path
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such file or run folder")
    for candidate in [tag] if tag else ["best", "last"]:
        if (path / f"{candidate}.json").is_file():
            return path / f"{candidate}.json"
    wanted = f"{tag}.json" if tag else "best.json or last.json"
    if (path / "cv_results.json").is_file():
        raise CheckpointError(f"checkpoint {path}: a cross-validation folder; give one of its fold-NN folders")
    raise CheckpointError(f"checkpoint {path}: no {wanted} in this folder (is it a training run folder?)")


def read_record(path: str | os.PathLike, tag: str | None = None) -> tuple[CheckpointRecord, Path]:
    """The record of a checkpoint (no tensors read) and its JSON file's path.

    Raises:
        CheckpointError: a missing checkpoint, a file that is not JSON or not a valid record.
    """
    json_path = resolve_checkpoint(path, tag)
    try:
        values = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {json_path} is corrupted (not valid JSON: {err})") from None
    return CheckpointRecord.from_json(values, json_path), json_path


def load_checkpoint(path: str | os.PathLike, tag: str | None = None) -> tuple[dict[str, Tensor], CheckpointRecord]:
    """Read a checkpoint after checking its record and its tensor file's size and SHA-256.

    Args:
        path: a run folder or a checkpoint's JSON file.
        tag: in a run folder, ``"last"`` or ``"best"`` (default: best if present, else last).

    Returns:
        ``(tensors, record)``: the flat tensor mapping (on CPU) and the typed record.

    Raises:
        CheckpointError: for a missing, truncated or corrupted checkpoint, naming the file and what is wrong.
    """
    record, json_path = read_record(path, tag)
    tensor_path = json_path.parent / record.tensors
    if not record.tensors or not tensor_path.is_file():
        raise CheckpointError(f"checkpoint {json_path}: its tensor file {tensor_path} is missing")
    size = tensor_path.stat().st_size
    if size != record.tensors_bytes:
        raise CheckpointError(
            f"checkpoint {tensor_path} is truncated or corrupted: {size} bytes, {record.tensors_bytes} were written"
        )
    digest = _sha256(tensor_path)
    if digest != record.tensors_sha256:
        raise CheckpointError(
            f"checkpoint {tensor_path} is corrupted: SHA-256 {digest[:16]}..., {record.tensors_sha256[:16]}... "
            "was written"
        )
    try:
        return load_file(str(tensor_path)), record
    except SafetensorError as err:
        raise CheckpointError(f"checkpoint {tensor_path} is not a safetensors file ({err})") from None


def prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``tensors`` whose name starts with ``prefix + "/"``, with the prefix removed."""
    start = prefix + "/"
    return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}


def load_state(model: nn.Module, state: dict[str, Tensor], where: str | os.PathLike) -> None:
    """``model.load_state_dict(state)`` after checking names and shapes, so that a checkpoint of another model is
    reported as :class:`CheckpointError` naming ``where`` and the first mismatch."""
    check_state(model.state_dict(), state, where)
    model.load_state_dict(state)


def check_state(own: dict[str, Tensor], state: dict[str, Tensor], where: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming ``where`` and the first mismatch unless ``state`` has exactly the names
    and shapes of ``own``."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(
            f"checkpoint {where}: its tensors do not fit the model ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {first})"
        )
    for name, value in own.items():
        if tuple(value.shape) != tuple(state[name].shape):
            raise CheckpointError(
                f"checkpoint {where}: tensor {name!r} has shape {tuple(state[name].shape)}, the model's is "
                f"{tuple(value.shape)}"
            )


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``"<param>/<key>"``) and a JSON-serialisable rest."""
    tensors, scalars = {}, {}
    for pid, state in state_dict["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"{pid}/{key}"] = value
            else:
                scalars[f"{pid}/{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Tensor], rest: dict) -> dict:
    """The inverse of :func:`flatten_optimizer`: a state dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(rest["scalars"].items()):
        pid, key = name.split("/", 1)
        state.setdefault(int(pid), {})[key] = value
    # JSON turned tuples (AdamW's betas) into lists; give them back as PyTorch wrote them.
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in rest["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def rng_tensors() -> dict[str, Tensor]:
    """The RNG states to save: the CPU generator's and, when CUDA is initialised, each device's."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda{i}"] = s
    return states


def restore_rng(states: dict[str, Tensor]) -> None:
    """Restore the RNG states saved by :func:`rng_tensors`."""
    torch.set_rng_state(states["cpu"])
    cuda = [states[k] for k in sorted(k for k in states if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def json_kwargs(kwargs: dict) -> dict:
    """Model keywords in JSON form (tuples as lists), for :class:`ModelSpec`."""
    return json.loads(json.dumps(kwargs, default=_not_json))


def _not_json(value):
    if isinstance(value, tuple):
        return list(value)
    raise InputError(f"model keyword value {value!r} ({type(value).__name__}) cannot be stored in a checkpoint")


def build_model(spec: ModelSpec) -> nn.Module:
    """``create_model(spec.name, **spec.kwargs)`` with the lists JSON made of tuples turned back into tuples."""
    from convatlas.models import create_model

    return create_model(spec.name, **{k: _tuples(v) for k, v in spec.kwargs.items()})


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def load_model(
    checkpoint: str | os.PathLike, *, tag: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointRecord]:
    """Rebuild a trained model of any task from a checkpoint (run folder or JSON file).

    Returns:
        ``(model in eval mode on device, the checkpoint's record)``.

    Raises:
        CheckpointError: for a bad checkpoint, or tensors that do not fit the recorded model.
    """
    state, record = load_checkpoint(checkpoint, tag)
    where = resolve_checkpoint(checkpoint, tag)
    try:
        model = build_model(record.model)
    except (ValueError, InputTypeError) as err:  # a record naming an unknown model or keywords it does not take
        raise CheckpointError(f"checkpoint {where}: its model cannot be built ({err})") from None
    load_state(model, prefixed(state, "model"), where)
    return model.to(device).eval(), record


# Builder keywords of a classification run that do not change its feature layers (the backbone takes the rest).
HEAD_KEYWORDS = ("num_classes", "in_channels", "drop_rate")


def read_backbone(path: str | os.PathLike) -> tuple[dict[str, Tensor], CheckpointRecord, Path]:
    """The model tensors, record and JSON path of a classification run, as a backbone's starting weights.

    Raises:
        CheckpointError: a missing or corrupted checkpoint, or one of another task.
    """
    state, record = load_checkpoint(path)
    where = resolve_checkpoint(path)
    check_backbone_record(record, where)
    return prefixed(state, "model"), record, where


def check_backbone_record(record: CheckpointRecord, where: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``record`` is a classification run (what a backbone starts from)."""
    if record.task != "classification" or record.inputs is None:
        raise CheckpointError(f"checkpoint {where}: a {record.task} run of {record.model.name}; a backbone starts "
                              "from a classification run of a zoo image model")  # fmt: skip


def backbone_keywords(record: CheckpointRecord) -> dict:
    """The builder keywords of a classification run that shape its feature layers (width, depth, ...)."""
    return {k: v for k, v in record.model.kwargs.items() if k not in HEAD_KEYWORDS}


def load_backbone(
    model: nn.Module, name: str, path: str | os.PathLike, *, image_mean: Sequence[float], image_std: Sequence[float]
) -> str:
    """Start the zoo image model ``model`` (registered as ``name``; a detector's backbone) from a classification run.

    Every tensor but the classifier's (``head.*``, which a backbone does not use) is copied. The first convolution is
    adapted when the run saw other input channels or another normalisation: its weights are repeated over the new
    channels and scaled by ``old channels / new channels`` (a grey image copied into every channel gives the same
    response, as timm's ``adapt_input_conv``), and each input channel's weights are multiplied by ``new std / old
    std``, so that the layer sees the run's normalised values up to a constant per output channel, which the norm
    layer after it takes out.

    Args:
        model: a zoo image model (``in_channels`` and a classifier in ``head``).
        name: its registered name; the run must be of the same model.
        path: the run folder or its checkpoint JSON.
        image_mean, image_std: the normalisation ``model`` sees (per channel).

    Returns:
        A one-line description of what was loaded.

    Raises:
        CheckpointError: another task or model, or tensors that do not fit ``model`` (naming the first).
    """
    state, record, where = read_backbone(path)
    if record.model.name != name:
        raise CheckpointError(f"checkpoint {where}: a run of {record.model.name}, but the backbone is {name}")
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    old_c, new_c = record.inputs.in_channels, len(image_mean)
    old_std = torch.tensor(record.inputs.std, dtype=torch.float64)
    new_std = torch.tensor(list(image_std), dtype=torch.float64)
    first = next((k for k, v in own.items() if v.dim() == 4), None)  # the stem: zoo models register it first
    fits = first in state and state[first].dim() == 4 and state[first].shape[1] == old_c
    adapted = fits and own[first].shape[1] == new_c
    if adapted:
        weight = state[first].double()
        if old_c != new_c:
            weight = weight.repeat(1, -(-new_c // old_c), 1, 1)[:, :new_c] * (old_c / new_c)
            old_std = old_std.repeat(-(-new_c // old_c))[:new_c]
        state[first] = (weight * (new_std / old_std).view(1, -1, 1, 1)).to(state[first].dtype)
    try:
        check_state(own, state, where)
    except CheckpointError as err:
        raise CheckpointError(f"{err} (the run's {name} was built with {backbone_keywords(record) or 'defaults'})") \
            from None  # fmt: skip
    model.load_state_dict(state, strict=False)  # all but the classifier, checked above
    shown = f"; first convolution {first} adapted from {old_c} to {new_c} input channels" if adapted else ""
    return f"backbone: {name} starts from {where} ({len(state)} tensors; its classifier is not used{shown})"

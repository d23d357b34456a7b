"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically, loaded without unpickling.

A checkpoint named ``TAG`` (``"last"`` or ``"best"``) in a run folder is two files:

- ``TAG-<global step>.safetensors``: the tensors (model, optimizer state, RNG states), under prefixed names;
- ``TAG.json``: everything else, and the tensor file's name, size and SHA-256.

Each file is written to a temporary name, flushed, fsync-ed and renamed; the JSON is renamed last and is the commit
point, so a crash at any moment leaves the previous checkpoint whole. Loading checks the size and SHA-256 before
reading any tensor: a truncated or corrupted file gives :class:`CheckpointError` naming the file, and nothing is
replaced. Nothing here calls ``pickle`` or ``torch.load``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from convatlas.files import atomic_write, atomic_write_bytes

FORMAT = "convatlas-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupted or of another format."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(folder: str | os.PathLike, tag: str, tensors: dict[str, Tensor], meta: dict) -> Path:
    """Write checkpoint ``tag`` into ``folder``, atomically, and delete that tag's older tensor files.

    Args:
        folder: the run folder.
        tag: the checkpoint's name, ``"last"`` or ``"best"``.
        tensors: flat name -> tensor mapping (contiguous CPU copies are made here).
        meta: JSON-serialisable metadata; must hold ``global_step``.

    Returns:
        the path of the JSON file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{tag}-{int(meta['global_step']):09d}.safetensors"
    tensor_path = folder / name
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(tensor_path, lambda tmp: save_file(cpu, str(tmp)))
    record = {
        "format": FORMAT,
        **meta,
        "tensors": name,
        "tensors_bytes": tensor_path.stat().st_size,
        "tensors_sha256": _sha256(tensor_path),
    }
    json_path = folder / f"{tag}.json"
    atomic_write_bytes(json_path, json.dumps(record, indent=1).encode())
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
        return path
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such file or run folder")
    for candidate in [tag] if tag else ["best", "last"]:
        if (path / f"{candidate}.json").is_file():
            return path / f"{candidate}.json"
    wanted = f"{tag}.json" if tag else "best.json or last.json"
    raise CheckpointError(f"checkpoint {path}: no {wanted} in this folder (is it a `convatlas train --out` folder?)")


def load_checkpoint(path: str | os.PathLike, tag: str | None = None) -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint after checking its tensor file's size and SHA-256.

    Args:
        path: a run folder or a checkpoint's JSON file.
        tag: in a run folder, ``"last"`` or ``"best"`` (default: best if present, else last).

    Returns:
        ``(tensors, meta)``: the flat tensor mapping (on CPU) and the JSON record.

    Raises:
        CheckpointError: for a missing, truncated or corrupted checkpoint, naming the file and what is wrong.
    """
    json_path = resolve_checkpoint(path, tag)
    try:
        meta = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {json_path} is corrupted (not valid JSON: {err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"checkpoint {json_path}: format {found!r}, expected {FORMAT!r}")
    tensor_path = json_path.parent / meta["tensors"]
    if not tensor_path.is_file():
        raise CheckpointError(f"checkpoint {json_path}: its tensor file {tensor_path} is missing")
    size = tensor_path.stat().st_size
    if size != meta["tensors_bytes"]:
        raise CheckpointError(
            f"checkpoint {tensor_path} is truncated or corrupted: {size} bytes, {meta['tensors_bytes']} were written"
        )
    digest = _sha256(tensor_path)
    if digest != meta["tensors_sha256"]:
        raise CheckpointError(
            f"checkpoint {tensor_path} is corrupted: SHA-256 {digest[:16]}..., {meta['tensors_sha256'][:16]}... "
            "was written"
        )
    return load_file(str(tensor_path)), meta


def prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``tensors`` whose name starts with ``prefix + "/"``, with the prefix removed."""
    start = prefix + "/"
    return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}


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

"""The task interface: what the engine (:func:`convatlas.train.fit`) asks of classification, segmentation, text and
detection.

A task owns the data and the model's construction; the engine owns everything else (the loop, optimiser, schedule,
AMP, clipping, accumulation, checkpoints, resume, DDP, progress, metrics and plots). Per step the engine gives the
task a micro-batch of training indices; the task returns the loss and a few running sums. Per epoch the engine asks
for evaluation, sharded over processes: each process returns a partial result for its share of a split, and the task
turns the gathered partials into metrics.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from convatlas.errors import InputError
from convatlas.train.checkpoint import CheckpointRecord, InputSpec, ModelSpec, build_model
from convatlas.train.config import ConfigError, TrainConfig


class Task:
    """The interface every task implements (subclasses override the methods that raise).

    Attributes:
        kind: the task's name.
        eval_splits: the splits evaluated after every epoch (metrics are named ``"{split}_{metric}"``).
        select: the metric that picks the ``best`` checkpoint (higher is better).
        shown: the metrics of each evaluated split printed after every epoch.
        shown_train: the running training averages printed after every epoch.
        outputs: the files the task writes into the run folder besides the engine's.
        unused_parameters: whether some parameters get no gradient in a step (DDP must then look for them).
    """

    kind = ""
    eval_splits: tuple[str, ...] = ("test",)
    select = "test_acc"
    shown: tuple[str, ...] = ("loss", "acc")
    shown_train: tuple[str, ...] = ("loss", "acc")
    outputs: tuple[str, ...] = ()
    unused_parameters = False  # DDP: some parameters get no gradient in a step (a backbone's classifier head)

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    # --- data ---------------------------------------------------------------------------------------------------------
    @property
    def train_size(self) -> int:
        """The number of training items."""
        raise NotImplementedError

    def eval_size(self, split: str) -> int:
        """The number of items of an evaluation split."""
        raise NotImplementedError

    def batches(self, indices: Sequence[Tensor], seeds: Sequence[int | None]) -> Iterator:
        """The micro-batches of training items ``indices[i]``, augmented with seed ``seeds[i]`` (``None``: not)."""
        raise NotImplementedError

    # --- model --------------------------------------------------------------------------------------------------------
    def model_spec(self) -> ModelSpec:
        """How the model is built (recorded in checkpoints)."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """A freshly initialised model (the engine seeds torch first)."""
        return build_model(self.model_spec())

    def initialise(self, model: nn.Module) -> None:
        """Set the starting weights of a new run's freshly built model, before any file is written (not called on
        resume); default: keep the builder's initialisation."""

    def classes(self) -> list[str]:
        """The class names in label order."""
        raise NotImplementedError

    def input_spec(self) -> InputSpec | None:
        """What an image model expects as input (``None`` for other tasks)."""
        return None

    fold: int | None = None

    @property
    def seed(self) -> int:
        """Seeds the model's initialisation, the data order and the augmentation."""
        return self.config.seed

    # --- steps and evaluation -----------------------------------------------------------------------------------------
    def train_step(self, model: nn.Module, batch, device: torch.device) -> tuple[Tensor, dict[str, float]]:
        """The loss of one micro-batch (a float32 scalar) and its running sums (``"n"``: the items counted, and
        ``"loss"`` and other metrics weighted by them)."""
        raise NotImplementedError

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimiser step (Kim's max-norm constraint)."""

    def before_eval(self, model: nn.Module, device: torch.device) -> None:
        """Called before every evaluation (detection: exact batch-norm statistics)."""

    def eval_part(self, model: nn.Module, split: str, indices: Tensor, device: torch.device, batch_size: int):
        """A partial evaluation result (any picklable object) over the items ``indices`` of ``split``."""
        raise NotImplementedError

    def summarize(self, split: str, parts: list) -> dict[str, float]:
        """The metrics of ``split`` from the partial results of every process."""
        raise NotImplementedError

    def confusion(self) -> Tensor | None:
        """The confusion matrix of the last evaluation (rows: true class), where the task has one."""
        return None

    def finish(self, model: nn.Module, out: Path, device: torch.device) -> None:
        """Write the task's end-of-run pictures into ``out`` (after an evaluation in this process)."""

    def split_classes(self, split: str) -> list[str]:
        """The class names of an evaluation split (the training classes unless a split carries its own)."""
        return self.classes()

    def notes(self) -> list[tuple[str, dict | None]]:
        """What a new run prints before training (how the task adapted itself to the model and data), each line with
        an optional record for ``metrics.jsonl`` (its ``kind`` names it)."""
        return []

    def use_checkpoint(self, record: CheckpointRecord, split: str) -> None:
        """Prepare to evaluate a trained model on ``split``: check that the split's classes are the checkpoint's and
        take the checkpoint's input settings.

        Raises:
            ConfigError: (field ``data``) when the classes differ.
        """
        classes = self.split_classes(split)
        if classes != list(record.classes):
            raise ConfigError("data", f"{self.config.data}: classes {_short(classes)} differ from the checkpoint's "
                              f"{_short(record.classes)}")  # fmt: skip


class DatasetTask(Task):
    """A task whose data are a training and a test :class:`~torch.utils.data.Dataset`, each built once by
    :meth:`_split` (image classification and segmentation, detection); the datasets carry their ``classes``."""

    @functools.cached_property
    def train_set(self) -> Dataset:
        return self._split("train", self.config.limit_train)

    @functools.cached_property
    def test_set(self) -> Dataset:
        return self._split("test", self.config.limit_test)

    def _split(self, split: str, limit: int | None) -> Dataset:
        """The dataset of ``split``, at most ``limit`` items, checked for this task."""
        raise NotImplementedError

    def dataset(self, split: str) -> Dataset:
        if split not in ("train", "test"):
            raise ConfigError("split", f"must be train or test for a {self.kind} run, got {split!r}")
        return self.train_set if split == "train" else self.test_set

    @property
    def train_size(self) -> int:
        return len(self.train_set)

    def eval_size(self, split: str) -> int:
        return len(self.dataset(split))

    def classes(self) -> list[str]:
        return [str(c) for c in self.train_set.classes]

    def split_classes(self, split: str) -> list[str]:
        return [str(c) for c in self.dataset(split).classes]


def _short(names: Sequence[str]) -> str:
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return f"[{shown}] ({len(names)})"


def build_task(config: TrainConfig, *, fold: int | None = None) -> Task:
    """The task object of a resolved configuration.

    Args:
        config: a resolved configuration (:meth:`TrainConfig.resolved`).
        fold: text only: the cross-validation fold (1-based) the task trains.
    """
    if config.task in ("classification", "segmentation"):
        from convatlas.train.images import ClassificationTask, SegmentationTask

        return (ClassificationTask if config.task == "classification" else SegmentationTask)(config)
    if config.task == "detection":
        from convatlas.train.detection import DetectionTask

        return DetectionTask(config)
    if config.task == "text":
        from convatlas.train.text import TextData, TextTask

        if fold is None:
            raise InputError("text runs are cross-validated: call cross_validate(config) or give the fold")
        return TextTask(config, TextData.load(config), fold)
    raise ConfigError("task", f"must be one of classification, segmentation, text, detection, got {config.task!r}")


def model_keywords(name: str, given: dict, fixed: dict) -> dict:
    """The keywords of ``create_model(name, ...)``: the task's (``fixed``) and the user's (``given``), checked.

    Every user keyword must be one the model accepts, must not be one the task sets from the data, and must have the
    kind of value the keyword's default has (a number for a number, a sequence for a sequence, ...).

    Raises:
        ConfigError: (field ``model_args``) naming the keyword, the rule and the value.
    """
    from convatlas.models.registry import accepted_keywords
    from convatlas.utils import close_matches

    clash = sorted(set(given) & set(fixed))
    if clash:
        raise ConfigError("model_args", f"{clash[0]}: taken from the data and the task ({fixed[clash[0]]!r}), do not "
                          "pass it")  # fmt: skip
    accepted = accepted_keywords(name)
    defaults = _keyword_defaults(name)
    for key, value in given.items():
        if accepted is not None and key not in accepted:
            raise ConfigError("model_args", f"{key}: not a keyword of {name}{close_matches(key, accepted)}")
        if key in defaults and not _same_kind(value, defaults[key]):
            raise ConfigError("model_args", f"{key}={value!r}: {name} expects {_kind(defaults[key])} (default "
                              f"{defaults[key]!r})")  # fmt: skip
    return {**fixed, **given}


def _keyword_defaults(name: str) -> dict:
    """The default value of each keyword of a model's builder and class (where one is declared and not ``None``)."""
    from convatlas.models import model_info

    builder = model_info(name).builder
    found = {}
    targets = [builder]
    cls = typing.get_type_hints(builder).get("return")
    if inspect.isclass(cls):
        targets.append(cls.__init__)
    for target in targets:
        for key, p in inspect.signature(target).parameters.items():
            if p.default is not inspect.Parameter.empty and p.default is not None:
                found.setdefault(key, p.default)
    return found


def _kind(default) -> str:
    if isinstance(default, bool):
        return "True or False"
    if isinstance(default, int | float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, tuple | list):
        return "a sequence such as (1, 2)"
    if isinstance(default, dict):
        return "a dict"
    return f"a {type(default).__name__}"


def _same_kind(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int | float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple | list):
        return isinstance(value, tuple | list)
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True

"""One training engine for classification, segmentation, text and detection.

>>> from convatlas.train import TrainConfig, fit, cross_validate
>>> result = fit(TrainConfig(model="mobilenet_v2", data="fashion-mnist", epochs=1, out="runs/a"))  # doctest: +SKIP
>>> result.final["test_acc"]  # doctest: +SKIP
>>> cv = cross_validate(TrainConfig(model="kim_cnn", data="mr", out="runs/kim"))  # doctest: +SKIP

- :class:`TrainConfig` describes a run of any task; :func:`fit` trains it (``resume=True`` continues it,
  ``overwrite=True`` replaces the run files in its folder); :func:`cross_validate` runs a text set's k folds, each a
  :func:`fit` run. :func:`run_config` reads the configuration of a run folder, to resume it with some fields
  changed (:data:`CHANGEABLE_ON_RESUME`).
- :func:`load_model` rebuilds a trained model of any task from its checkpoint; :func:`evaluate` scores a model on a
  split of a :class:`Task` (:func:`build_task`).
- Errors: :class:`ConfigError` (a field breaks a rule; it names the field), :class:`CheckpointError`,
  :class:`TrainingDiverged`; :class:`TrainingInterrupted` after SIGINT/SIGTERM (a checkpoint was written).
"""

from convatlas.train.checkpoint import (
    CheckpointError,
    CheckpointRecord,
    InputSpec,
    ModelSpec,
    Progress,
    load_checkpoint,
    load_model,
    read_record,
    save_checkpoint,
)
from convatlas.train.config import CHANGEABLE_ON_RESUME, ConfigError, TrainConfig
from convatlas.train.engine import (
    RunResult,
    TrainingDiverged,
    TrainingInterrupted,
    epoch_order,
    evaluate,
    fit,
    run_config,
)
from convatlas.train.images import prepare_inputs
from convatlas.train.task import Task, build_task
from convatlas.train.text import CVResult, FoldResult, cross_validate

__all__ = [
    "CHANGEABLE_ON_RESUME",
    "CVResult",
    "CheckpointError",
    "CheckpointRecord",
    "ConfigError",
    "FoldResult",
    "InputSpec",
    "ModelSpec",
    "Progress",
    "RunResult",
    "Task",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_task",
    "cross_validate",
    "epoch_order",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_model",
    "prepare_inputs",
    "read_record",
    "run_config",
    "save_checkpoint",
]

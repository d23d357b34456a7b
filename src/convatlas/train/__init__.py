"""The training engine: one loop for image classification and segmentation (text and detection plug in via the CLI).

>>> from convatlas.train import TrainConfig, train
>>> result = train(TrainConfig(model="mobilenet_v2", data="fashion-mnist", epochs=1))  # doctest: +SKIP
"""

from convatlas.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from convatlas.train.config import TrainConfig
from convatlas.train.engine import TrainingDiverged, evaluate, load_model, prepare_inputs, train

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainingDiverged",
    "evaluate",
    "load_checkpoint",
    "load_model",
    "prepare_inputs",
    "save_checkpoint",
    "train",
]

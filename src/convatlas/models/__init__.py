"""The model zoo: one family per file, every model registered by name.

>>> from convatlas.models import create_model, list_models
>>> model = create_model("resnext50_32x4d", num_classes=10)
"""

from convatlas.models.registry import ModelInfo, create_model, list_models, model_info, register_model
from convatlas.models.weights import load_weights

# Families: importing each module registers its builders (one line per family file).

__all__ = ["ModelInfo", "create_model", "list_models", "load_weights", "model_info", "register_model"]

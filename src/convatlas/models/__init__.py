"""The model zoo: one family per file, every model registered by name.

>>> from convatlas.models import create_model, list_models
>>> model = create_model("resnext50_32x4d", num_classes=10)
"""

from convatlas.models.registry import ModelInfo, create_model, list_models, model_info, register_model
from convatlas.models.weights import load_weights

# isort: off
# Families: importing each module registers its builders (one line per family file).
from convatlas.models import densenet, mobilenet, resnext  # noqa: E402, F401
from convatlas.models import efficientnet  # noqa: E402, F401
from convatlas.models import convnext  # noqa: E402, F401
from convatlas.models import xception  # noqa: E402, F401
from convatlas.models import resnet9  # noqa: E402, F401
from convatlas.models import unet  # noqa: E402, F401
from convatlas.models import kim_cnn  # noqa: E402, F401
from convatlas.models import lightconv  # noqa: E402, F401
from convatlas.detection import detectors  # noqa: E402, F401  (rcnn, fast_rcnn, faster_rcnn)

__all__ = ["ModelInfo", "create_model", "list_models", "load_weights", "model_info", "register_model"]

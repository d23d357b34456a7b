"""Operators: pure functions over tensors, no state (modules in ``convatlas.nn`` only hold hyperparameters).

Operators with several implementations take ``backend="auto" | "c" | "torch" | "triton"``; :func:`backends` reports
what this machine can run and what ``"auto"`` picks, and why.

TorchScript: the box and RoI operators (``box_area``, ``box_iou``, ``box_iou_max``, ``box_convert``, ``clip_boxes``,
``remove_small_boxes``, ``encode_boxes``, ``decode_boxes``, ``nms``, ``batched_nms``, ``soft_nms``, ``roi_align``,
``roi_pool``, ``multi_scale_roi_align``) and the modules :class:`convatlas.nn.RoIAlign`, :class:`~convatlas.nn.RoIPool`
and :class:`~convatlas.nn.MultiScaleRoIAlign` compile with ``torch.jit.script``, alone or inside a scripted model, with
torchvision's argument types (boxes as a ``Tensor[K, 5]`` or a ``list`` of ``Tensor[L, 4]``, ``output_size`` an int or
a pair) and the eager results. Each public function is a typed wrapper that TorchScript compiles; its work is the
Python implementation, marked ``@torch.jit.ignore``, which the compiled code calls back. So:

- a scripted function or model runs only in a Python process that imports convatlas, like eager code;
- ``torch.jit.save`` of a scripted model that calls them raises ``RuntimeError: Could not export Python function
  call '_roi_align'`` (the private name of the operator); save the ``state_dict`` instead;
- bad input inside a scripted call raises a ``RuntimeError`` whose message carries the ``ValueError``/``TypeError``
  the eager call raises (TorchScript converts exceptions); arguments of the wrong type are refused by TorchScript
  before the call (a tuple of box tensors, for instance, where eager code also takes a tuple).
"""

from convatlas.ops.backend import BackendReport, backends  # noqa: F401
from convatlas.ops.boxes import (  # noqa: E402, F401
    batched_nms,
    box_area,
    box_convert,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    nms,
    remove_small_boxes,
    soft_nms,
)
from convatlas.ops.conv import (  # noqa: E402, F401
    conv1d,
    conv2d,
    conv_matrix,
    conv_transpose1d,
    conv_transpose2d,
    depthwise_conv,
    pointwise_conv,
    separable_conv,
)
from convatlas.ops.roi import multi_scale_roi_align, roi_align, roi_pool  # noqa: E402, F401
from convatlas.ops.seqconv import dynamic_conv, lightweight_conv  # noqa: E402, F401

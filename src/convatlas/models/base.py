"""The one interface every image model of the zoo follows (timm's, so users of timm feel at home).

- ``forward_features(x)``: the backbone, ``Tensor[N, C, H, W] -> Tensor[N, C_last, H / r, W / r]``;
- ``forward_head(x, pre_logits=False)``: pooling and classifier, ``-> Tensor[N, num_classes]``;
- ``forward(x) = forward_head(forward_features(x))``;
- ``forward_stages(x)``: the output of each stage, one tensor per ``feature_info`` entry (U-Net and detection use it);
- ``feature_info``: ``[{"num_chs": C, "reduction": r, "module": "stages.0"}, ...]``, declared, checked by a test;
- ``num_classes``, ``in_channels`` and ``reset_classifier(num_classes)``; ``num_classes=0`` builds no classifier
  (``forward`` returns the pooled features), a negative one is a ``ValueError`` (see :mod:`convatlas.models.checks`).

Feature extraction is written once, here (:class:`FeatureStages`), from two declarations of each model: ``trunk``,
the module paths that ``forward_features`` runs one after the other, and the ``"module"`` of each ``feature_info``
entry. ``forward_stages`` walks the trunk, descending into an ``nn.Sequential`` wherever a stage module lies inside
it, and returns the output of each stage module. So the stage modules are real submodules on the data path, and the
same names select the stages of a ``torch.fx`` graph::

    from torchvision.models.feature_extraction import create_feature_extractor
    nodes = {f["module"]: f"stage{i}" for i, f in enumerate(model.feature_info)}
    extractor = create_feature_extractor(model, return_nodes=nodes)  # its outputs equal model.forward_stages(x)

Every registered classification, segmentation and text model traces with ``torch.fx.symbolic_trace`` (the registry
sweep, ``tests/test_models_registry.py``, checks the traced graph against the eager model). Detection models do not:
like torchvision's, they take a list of images of different sizes and their proposal stage depends on the data; their
backbone (a zoo image model) traces and works with ``create_feature_extractor``.
"""

from __future__ import annotations

from torch import Tensor, nn

from convatlas.models.checks import check_in_channels, check_num_classes


class FeatureStages(nn.Module):
    """``forward_features`` and ``forward_stages`` computed from the declared ``trunk`` and ``feature_info``.

    Attributes (set by the subclass):
        trunk: module paths run in order by ``forward_features``, e.g. ``("stem", "pool", "stages")``. A path may
            repeat (U-Net's shared max pool between levels).
        feature_info: one dict per stage, ``{"num_chs": C, "reduction": r, "module": path}``, in the order of the
            data flow; each ``module`` is a trunk path or a submodule reachable through ``nn.Sequential`` containers
            of the trunk (``"stages.2"`` inside ``"stages"``).
    """

    trunk: tuple[str, ...]
    feature_info: list[dict]

    def forward_features(self, x: Tensor) -> Tensor:
        """x (Tensor[N, C_in, H, W]) -> the output of the last trunk module, Tensor[N, C, H / r, W / r]."""
        for path in self.trunk:
            x = self.get_submodule(path)(x)
        return x

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """One tensor per ``feature_info`` entry, shallowest first; the trunk runs only up to the last stage module.

        Shapes:
            x (Tensor[N, C_in, H, W]) -> [Tensor[N, num_chs_i, ~H / reduction_i, ~W / reduction_i], ...]
        """
        outs = []
        for module, is_stage in stage_plan(self):
            x = module(x)
            if is_stage:
                outs.append(x)
        return outs


def stage_plan(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """The modules ``forward_stages`` runs, in order, each with whether its output is a stage.

    Trunk paths that contain a stage module are replaced by their children (which must then be an ``nn.Sequential``,
    whose children run in order); the plan ends at the last stage module.

    Raises:
        ValueError: when ``feature_info`` names a module that is not on the trunk, names one twice, lists them out
            of data-flow order, or lies inside a container that is not an ``nn.Sequential``.
    """
    where = type(model).__name__
    wanted = [f["module"] for f in model.feature_info]
    plan: list[tuple[str, nn.Module]] = []

    def visit(path: str) -> None:
        module = model.get_submodule(path)
        inside = [w for w in wanted if w.startswith(path + ".")]
        if not inside:
            plan.append((path, module))
            return
        if not isinstance(module, nn.Sequential):
            raise ValueError(
                f"{where}: feature_info module {inside[0]!r} lies inside {path!r}, a {type(module).__name__}; the "
                f"trunk can only descend into an nn.Sequential (its children run in order)"
            )
        for name in module._modules:  # Sequential.forward runs exactly these, in this order
            visit(f"{path}.{name}")

    for path in model.trunk:
        visit(path)
    found = [path for path, _ in plan if path in wanted]
    if found != wanted:
        missing = [w for w in wanted if w not in found]
        raise ValueError(
            f"{where}: feature_info modules {wanted} must each run once on the trunk {tuple(model.trunk)}, in that "
            f"order; found {found}" + (f" (not on the trunk: {missing})" if missing else "")
        )
    last = max(i for i, (path, _) in enumerate(plan) if path in wanted)
    return [(module, path in wanted) for path, module in plan[: last + 1]]


class ImageModel(FeatureStages):
    """Base class of the zoo's image classifiers: subclasses set ``trunk``, ``feature_info`` and ``self.head``.

    Args:
        num_classes: classifier outputs, checked here for every family (0: no classifier).
        in_channels: input image channels, checked here for every family.

    Raises:
        ValueError: a negative ``num_classes``, ``in_channels < 1``, or either beyond its bound
            (:data:`~convatlas.models.checks.MAX_CLASSES`, :data:`~convatlas.models.checks.MAX_CHANNELS`).
        InputTypeError: either is not an int.
    """

    head: nn.Module

    def __init__(self, *, num_classes: int, in_channels: int):
        super().__init__()
        where = type(self).__name__
        self.num_classes = check_num_classes(where, num_classes)
        self.in_channels = check_in_channels(where, in_channels)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 removes it: features only).

        Raises:
            ValueError: for a negative or huge ``num_classes``; InputTypeError when it is not an int.
        """
        num_classes = check_num_classes(type(self).__name__, num_classes)
        self.head.reset(num_classes)
        self.num_classes = num_classes

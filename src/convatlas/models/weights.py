"""Weight interop: map a torchvision or timm state dict onto the equivalent convatlas model.

Each model class that has a peer implements ``convert_state_dict(state_dict, source) -> dict`` (a classmethod or
method) returning our parameter names; :func:`load_weights` calls it and loads strictly, so a missing or extra tensor
is an error, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

SOURCES = ("torchvision", "timm")


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "torchvision") -> nn.Module:
    """Load a peer's ``state_dict`` into ``model`` (in place) and return the model.

    Args:
        model: a convatlas model.
        state_dict: the peer model's ``state_dict()`` (for example torchvision's ``resnext50_32x4d``).
        source: ``"torchvision"`` or ``"timm"``.

    Raises:
        ValueError: for an unknown source, a model without a converter, or tensors that do not match.
    """
    if source not in SOURCES:
        raise ValueError(f"load_weights: source must be one of {SOURCES}, got {source!r}")
    convert = getattr(model, "convert_state_dict", None)
    if convert is None:
        raise ValueError(f"load_weights: {type(model).__name__} has no {source} counterpart to load from")
    converted = convert(dict(state_dict), source)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(converted))
    unexpected = sorted(set(converted) - set(ours))
    if missing or unexpected:
        raise ValueError(
            f"load_weights({type(model).__name__}, source={source!r}): {len(missing)} missing tensors "
            f"{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}"
        )
    for key, value in converted.items():
        if tuple(value.shape) != tuple(ours[key].shape):
            raise ValueError(
                f"load_weights: {key} has shape {tuple(value.shape)} in the {source} weights, "
                f"{tuple(ours[key].shape)} in {type(model).__name__}"
            )
    model.load_state_dict(converted, strict=True)
    return model

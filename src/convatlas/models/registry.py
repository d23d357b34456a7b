"""One registry for every model: a plain dict filled by ``@register_model`` (as torchvision and timm do).

Builders state only hyperparameters and annotate the class they return, so that ``create_model`` can check the
user's keywords against that class before building anything and name close matches for a typo.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass

from convatlas.utils import close_matches


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model besides its builder.

    Attributes:
        name: the registry name (the builder's function name).
        task: ``"classification"``, ``"segmentation"``, ``"text"`` or ``"detection"``.
        input_size: the default input, ``(C, H, W)`` for images, ``(T,)`` for token sequences.
        builder: the function that builds it.
    """

    name: str
    task: str
    input_size: tuple[int, ...]
    builder: Callable


_MODELS: dict[str, ModelInfo] = {}
_TASKS = ("classification", "segmentation", "text", "detection")


def register_model(fn: Callable | None = None, *, task: str = "classification", input_size=(3, 224, 224)):
    """Register a model builder under its function name; use bare or with arguments.

    ``@register_model`` or ``@register_model(task="segmentation", input_size=(1, 572, 572))``.

    Raises:
        ValueError: when the name is already registered or the task is unknown.
    """
    if task not in _TASKS:
        raise ValueError(f"register_model: task must be one of {_TASKS}, got {task!r}")

    def decorate(builder: Callable) -> Callable:
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"register_model: a model named {name!r} is already registered")
        _MODELS[name] = ModelInfo(name, task, tuple(input_size), builder)
        return builder

    return decorate(fn) if fn is not None else decorate


def list_models(pattern: str | None = None, *, task: str | None = None) -> list[str]:
    """Registered names, sorted, optionally filtered by a shell-style ``pattern`` (``"resnext*"``) and a task."""
    names = sorted(_MODELS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if task:
        names = [n for n in names if _MODELS[n].task == task]
    return names


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model; an unknown name raises ``ValueError`` with close matches."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}{close_matches(name, _MODELS)} (see `convatlas models`)")
    return _MODELS[name]


def accepted_keywords(name: str) -> set[str] | None:
    """The keywords ``create_model(name, ...)`` accepts, or ``None`` when they cannot be known in advance.

    These are the builder's own keywords and its model class's; a few of the latter may be fixed by the variant
    (``depths`` for ``resnext50_32x4d``), which :func:`create_model` reports as such.
    """
    builder = model_info(name).builder
    params = inspect.signature(builder).parameters
    names = {p for p, v in params.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)}
    if not any(v.kind is v.VAR_KEYWORD for v in params.values()):
        return names
    cls = typing.get_type_hints(builder).get("return")
    if not inspect.isclass(cls):
        return None
    init = inspect.signature(cls.__init__).parameters
    if any(v.kind is v.VAR_KEYWORD for v in init.values()):
        return None
    return names | {p for p, v in init.items() if p != "self" and v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)}


def create_model(name: str, **kwargs):
    """Build a registered model: ``create_model("resnext50_32x4d", num_classes=10)``.

    Raises:
        ValueError: for an unknown name or keyword, listing the close matches.
    """
    info = model_info(name)
    allowed = accepted_keywords(name)
    if allowed is not None:
        for key in kwargs:
            if key not in allowed:
                accepted = ", ".join(sorted(allowed))
                raise ValueError(f"{name}: unknown keyword {key!r}{close_matches(key, allowed)} (accepted: {accepted})")
    try:
        return info.builder(**kwargs)
    except TypeError as err:
        # A variant builder fixes the keywords that define it (``depths`` for resnext50_32x4d, ...).
        fixed = re.search(r"multiple values for (?:keyword )?argument '(\w+)'", str(err))
        if fixed and fixed.group(1) in kwargs:
            raise ValueError(
                f"{name}: {fixed.group(1)!r} is fixed by this variant (it defines the architecture); "
                f"build {getattr(typing.get_type_hints(info.builder).get('return'), '__name__', 'the model class')}"
                f"(...) directly for another value"
            ) from None
        raise

"""What the operators need to behave like torchvision's under ``torch.fx`` tracing and ``torch.autocast``.

- :func:`fx_leaf`: a decorated function becomes one ``call_function`` node when ``torch.fx`` traces a call with a
  ``Proxy`` among its arguments (also inside lists, tuples and dicts), instead of being traced into. That is what
  ``torch.fx.wrap`` does for torchvision's RoI operators, except that ``wrap`` only patches the name in the module
  that calls it, whereas a decorated function is a leaf however it was imported. So ``symbolic_trace`` and
  ``torchvision.models.feature_extraction.create_feature_extractor`` work on models that call the operators or
  hold :class:`convatlas.nn.RoIAlign`, :class:`~convatlas.nn.RoIPool` or :class:`~convatlas.nn.MultiScaleRoIAlign`.
- ``torch.jit.script`` compiles the undecorated function (the decorator sets ``__prepare_scriptable__``, the hook
  TorchScript calls on what it is given or finds called), so a decorated function written in TorchScript's subset
  scripts as if it were not decorated, directly or inside a scripted module.
- :func:`autocast_off`: the operators compute in float32 (float64 for float64 inputs) under ``torch.autocast``, as
  torchvision's autocast kernels do, and return torchvision's output dtype; inside, autocast is switched off so that
  their matrix products are not run in bfloat16/float16.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.fx

__all__ = ["autocast_off", "fx_leaf"]

F = TypeVar("F", bound=Callable[..., Any])


def _find_proxy(value: Any) -> torch.fx.Proxy | None:
    if isinstance(value, torch.fx.Proxy):
        return value
    if isinstance(value, list | tuple):
        items = value
    elif isinstance(value, dict):
        items = value.values()
    else:
        return None
    for item in items:
        proxy = _find_proxy(item)
        if proxy is not None:
            return proxy
    return None


def fx_leaf(fn: F) -> F:
    """Make ``fn`` a leaf of ``torch.fx`` traces: called with a ``Proxy`` argument, it records itself as one
    ``call_function`` node and returns that node's proxy; called with values, it runs. ``torch.jit.script`` of the
    result compiles ``fn`` itself."""

    @functools.wraps(fn)
    def leaf(*args: Any, **kwargs: Any) -> Any:
        proxy = _find_proxy(args)
        if proxy is None:
            proxy = _find_proxy(kwargs)
        if proxy is not None:
            out = proxy.tracer.create_proxy("call_function", leaf, args, kwargs)
            out.node.meta["is_wrapped"] = True
            return out
        return fn(*args, **kwargs)

    leaf.__prepare_scriptable__ = lambda: fn  # type: ignore[attr-defined]
    return leaf  # type: ignore[return-value]


@contextlib.contextmanager
def autocast_off(device: torch.device | str) -> Iterator[None]:
    """Switch autocast off for ``device``'s type inside the block (a no-op when it is not on)."""
    device_type = torch.device(device).type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        yield

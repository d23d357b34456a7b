"""Which implementation an operator runs, chosen by its ``backend`` argument, and a report of what this machine has.

Operators with several implementations take ``backend="auto" | "c" | "torch" | "triton"``:

- ``"c"``: the C kernels (:mod:`convatlas.ops.kernels.native`), on the host; NMS copies CUDA inputs to the host and
  the indices back, RoI pool runs on CPU tensors only;
- ``"torch"``: PyTorch operations, any device;
- ``"triton"``: Triton kernels on CUDA tensors; on CPU tensors only under Triton's interpreter
  (``TRITON_INTERPRET=1`` before Triton is imported), and only when asked for by name;
- ``"auto"``: the rule of :data:`AUTO_RULES` for the inputs' device, never affected by environment variables.

An explicit backend that cannot run raises a ``ValueError`` that says why. :func:`backends` reports, for each
operator and device, what is available, what ``"auto"`` picks and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convatlas.ops.kernels import native

__all__ = ["AUTO_RULES", "BACKENDS", "OP_BACKENDS", "BackendReport", "backends", "resolve"]

BACKENDS = ("auto", "c", "torch", "triton")

# the implementations each operator has
OP_BACKENDS: dict[str, tuple[str, ...]] = {
    "nms": ("c", "torch"),
    "batched_nms": ("c", "torch"),
    "soft_nms": ("c", "torch"),
    "roi_pool": ("c", "torch"),
    "roi_align": ("torch", "triton"),
    "multi_scale_roi_align": ("torch", "triton"),
    "lightweight_conv": ("torch", "triton"),
    "dynamic_conv": ("torch", "triton"),
}

_HOST_NMS = (
    "the C kernel on the host (CUDA inputs: one copy of N x 4 boxes there and of the kept indices back, one "
    "synchronisation); the blocked PyTorch path needs a synchronisation per block of 1,024 boxes"
)
# (device type, preference order, why), per operator; the first available backend of the order is picked
AUTO_RULES: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "nms": {
        "cpu": (("c", "torch"), "the C kernel's grid index compares a box only with the kept boxes near it"),
        "cuda": (("c", "torch"), _HOST_NMS),
    },
    "soft_nms": {
        "cpu": (("c", "torch"), "the C loop runs the O(N^2) decay without a Python step per kept box"),
        "cuda": (("c", "torch"), "the PyTorch loop synchronises once per kept box; the C loop runs on the host"),
    },
    "roi_pool": {
        "cpu": (("c", "torch"), "the C kernel scans each bin once; the PyTorch path gathers once per cell offset"),
        "cuda": (("torch",), "the C kernel runs on CPU tensors only"),
    },
    "roi_align": {
        "cpu": (("torch",), "sparse or separable products in PyTorch; Triton runs CUDA tensors"),
        "cuda": (("triton", "torch"), "the Triton kernel samples each bin directly, without a weight matrix"),
    },
    "lightweight_conv": {
        "cpu": (("torch",), "a depthwise conv1d in PyTorch; Triton runs CUDA tensors"),
        "cuda": (("triton", "torch"), "the Triton kernel reads each input tile once"),
    },
}
AUTO_RULES["batched_nms"] = AUTO_RULES["nms"]
AUTO_RULES["multi_scale_roi_align"] = AUTO_RULES["roi_align"]
AUTO_RULES["dynamic_conv"] = {
    "cpu": (("torch",), "a sum of K shifted products in PyTorch; Triton runs CUDA tensors"),
    "cuda": (("triton", "torch"), "the Triton kernel loads each weight tile once for the channels of its head"),
}


def _triton_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run tensors on ``device`` (``None`` when they can)."""
    from convatlas.ops.kernels import triton_support

    if not triton_support.installed():
        return "Triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_support.interpreting():
        return None
    return f"the Triton kernels run CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), not {device.type}"


def _unavailable(op: str, backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run ``op`` on ``device``, or ``None`` when it can."""
    if backend == "torch":
        return None
    if backend == "triton":
        return _triton_reason(device)
    # "c"
    if op == "roi_pool" and device.type != "cpu":
        return f"the C RoI pool kernel runs CPU tensors only, not {device.type}"
    if device.type not in ("cpu", "cuda"):
        return f"the C kernels take CPU or CUDA tensors, not {device.type}"
    if native.library() is None:
        return f"the C kernels are unavailable: {native.LIBRARY.reason}"
    return None


def resolve(op: str, backend: str, device: torch.device | str) -> str:
    """The backend ``op`` runs for inputs on ``device``: ``backend`` itself, or what ``"auto"`` picks.

    Raises:
        ValueError: ``backend`` is not one of ``op``'s backends, or cannot run here (the message says why).
    """
    device = torch.device(device)
    choices = OP_BACKENDS[op]
    if backend == "auto":
        order, _ = AUTO_RULES[op].get(device.type, (("torch",), ""))
        for name in order:
            if _unavailable(op, name, device) is None:
                return name
        return "torch"
    if backend not in choices:
        raise ValueError(f"{op}: backend must be one of {('auto', *choices)}, got {backend!r}")
    reason = _unavailable(op, backend, device)
    if reason is not None:
        raise ValueError(f"{op}: backend={backend!r} cannot run here: {reason}")
    return backend


@dataclass(frozen=True)
class BackendReport:
    """What one operator can run on one device.

    Attributes:
        op: operator name, e.g. ``"nms"``.
        device: device type, ``"cpu"`` or ``"cuda"``.
        available: the backends that can run (``"auto"`` excluded).
        auto: what ``backend="auto"`` runs.
        reason: why ``"auto"`` picks it.
        unavailable: ``(backend, why)`` for each backend that cannot run.
    """

    op: str
    device: str
    available: tuple[str, ...]
    auto: str
    reason: str
    unavailable: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        missing = "; ".join(f"{name}: {why}" for name, why in self.unavailable)
        return (
            f"{self.op} on {self.device}: auto -> {self.auto} ({self.reason}); available: {', '.join(self.available)}"
            + (f"; unavailable: {missing}" if missing else "")
        )


def backends(device: torch.device | str | None = None) -> list[BackendReport]:
    """What each operator with several implementations can run on this machine, and what ``"auto"`` picks.

    Args:
        device: report for this device only; default every device type present (``cpu``, and ``cuda`` when
            available).

    Returns:
        One :class:`BackendReport` per operator and device, e.g.
        ``nms on cpu: auto -> c (the C kernel's grid index ...); available: c, torch``.
    """
    if device is None:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(device)]
    reports = []
    for dev in devices:
        for op, choices in OP_BACKENDS.items():
            why_not = {name: _unavailable(op, name, dev) for name in choices}
            auto = resolve(op, "auto", dev)
            order, reason = AUTO_RULES[op].get(dev.type, (("torch",), "the only backend for this device"))
            if auto != order[0]:
                reason = f"{order[0]} is unavailable ({why_not[order[0]]})"
            reports.append(
                BackendReport(
                    op=op,
                    device=dev.type,
                    available=tuple(name for name in choices if why_not[name] is None),
                    auto=auto,
                    reason=reason,
                    unavailable=tuple((name, why) for name, why in why_not.items() if why is not None),
                )
            )
    return reports

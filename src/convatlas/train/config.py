"""The one description of a training run: :class:`TrainConfig`, a dataclass (no config framework) for all four tasks.

A field left at ``None`` takes the task's default when the run starts (:meth:`TrainConfig.resolved`); the resolved
configuration is what checkpoints record and what ``resume`` compares against. A field that does not apply to the
run's task must stay at its default: setting it is refused by name (:class:`ConfigError`), never ignored.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from convatlas.errors import InputError, InputTypeError
from convatlas.utils import MAX_SEED, MAX_THREADS

TASKS = ("classification", "segmentation", "text", "detection")
IMAGE_TASKS = ("classification", "segmentation")
OPTIMIZERS = ("sgd", "adamw", "adadelta")
SCHEDULES = ("cosine", "constant")
AMP_MODES = ("auto", "none", "bf16", "fp16")
TEXT_MODES = ("rand", "static", "non-static", "multichannel")
EXTERNAL_PROPOSALS = ("rcnn", "fast_rcnn")  # detectors that train on selective-search proposals
LOSSES = ("cross-entropy", "unet-weighted")  # segmentation

# Fields that may differ from the saved configuration when a run is resumed. ``epochs`` extends (or shortens, down to
# the epochs already done) the run; the cosine schedule is then recomputed for the new length. ``max_folds`` runs more
# (or fewer) folds of a cross-validation. The others change how the run is executed, not what it computes.
CHANGEABLE_ON_RESUME = (
    "epochs",
    "max_folds",
    "save_every",
    "log_every",
    "eval_batch_size",
    "num_workers",
    "device",
    "threads",
    "data_dir",
)

# The tasks each task-specific field applies to; every other field applies to all four.
APPLIES_TO = {
    "image_size": IMAGE_TASKS,
    "compile": IMAGE_TASKS,
    "label_smoothing": ("classification", "segmentation", "text"),
    "channels_last": ("classification", "segmentation", "detection"),
    "augment": ("classification", "segmentation", "detection"),
    "limit_test": ("classification", "segmentation", "detection"),
    "data_dir": ("classification", "segmentation", "text"),
    "num_workers": ("classification", "segmentation", "detection"),
    "mode": ("text",),
    "folds": ("text",),
    "max_folds": ("text",),
    "dev_fraction": ("text",),
    "backbone": ("detection",),
    "max_proposals": ("detection",),
    "loss": ("segmentation",),
    "fit_anchors": ("detection",),
    "backbone_weights": ("detection",),
}

# Per-task defaults of the fields left at None ("lr" and "momentum" depend on the optimiser, below).
TASK_DEFAULTS = {
    "classification": dict(epochs=5, batch_size=128, opt="sgd", schedule="cosine", warmup_epochs=0.5, min_lr=0.0,
                           weight_decay=5e-4, clip_grad=0.0, label_smoothing=0.0),
    "segmentation": dict(epochs=5, batch_size=16, opt="sgd", schedule="cosine", warmup_epochs=0.5, min_lr=0.0,
                         weight_decay=5e-4, clip_grad=0.0, label_smoothing=0.0),
    # Kim (2014): batches of 50, Adadelta (kim_cnn; AdamW for the encoders) at a constant rate, no weight decay;
    # 10-fold cross-validation.
    "text": dict(epochs=10, batch_size=50, schedule="constant", warmup_epochs=0.0, clip_grad=0.0,
                 label_smoothing=0.0, eval_batch_size=500, mode="non-static", folds=10, dev_fraction=0.1),
    "detection": dict(epochs=2, batch_size=4, opt="adamw", schedule="cosine", warmup_epochs=0.0, min_lr=0.0,
                      weight_decay=1e-4, clip_grad=10.0, backbone="mobilenet_v3_small"),
}  # fmt: skip
DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3, "adadelta": 1.0}
TEXT_ADAMW_WEIGHT_DECAY = 0.01  # the encoders of models.lightconv train with AdamW
DEFAULT_MAX_PROPOSALS = 300
# Upper bounds that catch typos before they overflow torch's 64-bit arguments or exhaust the machine.
MAX_WORKERS = 256
MAX_IMAGE_SIZE = 4096
BOOL_FIELDS = ("channels_last", "compile", "deterministic", "augment")
# Data specs that name folders of the user's data: a run folder may not lie in them.
FOLDER_SPECS = ("imagefolder", "segfolder", "coco", "voc")
# Data specs that name their own files, so `data_dir` (where the installed sets are) has nothing to find for them.
NAMED_SPECS = (*FOLDER_SPECS, "tsv")


class ConfigError(InputError):
    """A field of a :class:`TrainConfig` breaks a rule.

    Attributes:
        field: the field's name (``"lr"``); the command line reports it as its option (``--lr``).
        detail: what is wrong, without the field's name.
    """

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field} {detail}")
        self.field, self.detail = field, detail


@dataclass
class TrainConfig:
    """A training run of any task.

    Attributes:
        model: a registered model name (``convatlas models``); its registry task is the run's task.
        data: a data spec: ``fashion-mnist``, ``mnist5k``, ``imagefolder:DIR`` (classification);
            ``segfolder:IMAGES:MASKS``, ``fashion-scenes[:key=value,...]`` (segmentation); ``mr``, ``cr``,
            ``tsv:PATH`` (text); ``fashion-scenes[:...]``, ``coco:DIR``, ``voc:DIR`` (detection).
        out: the run folder (checkpoints, ``metrics.jsonl``, plots; ``cv_results.json`` and ``fold-NN/`` for text).
        task: ``None`` (the model's task) or the task, checked against the model's.
        model_args: extra keywords for ``create_model``; those taken from the data (``num_classes``, ...) are refused.
        epochs: passes over the training set (text: over each training fold).
        batch_size: the global batch, over all processes and accumulation steps.
        accum_steps: gradient accumulation: a step runs this many micro-batches of ``batch_size / (processes *
            accum_steps)`` items.
        lr: the peak learning rate (default by optimiser: sgd 0.1, adamw 1e-3, adadelta 1.0).
        opt: ``"sgd"`` (Nesterov momentum), ``"adamw"`` or ``"adadelta"`` (rho 0.95, eps 1e-6, as Kim 2014).
        momentum: SGD's momentum (default 0.9; only with ``opt="sgd"``).
        weight_decay: decoupled for AdamW, L2 for SGD and Adadelta; never applied to biases and norm weights.
        schedule: ``"cosine"`` (decay to ``min_lr`` at the last step) or ``"constant"``; both after the warm-up.
        warmup_epochs: linear warm-up from ``lr / 10`` over this many epochs (fractions allowed).
        min_lr: the final learning rate of the cosine schedule.
        label_smoothing: of the cross-entropy (not for detection, whose losses are the detector's own).
        clip_grad: the maximum gradient norm (0: no clipping).
        amp: ``"auto"`` (bf16 on CUDA, off on CPU), ``"none"``, ``"bf16"`` (autocast on CPU and CUDA) or ``"fp16"``
            (with a gradient scaler).
        channels_last: the channels-last memory format for the model (and image inputs).
        compile: wrap the model in ``torch.compile`` (classification and segmentation).
        seed: seeds initialisation, data order, augmentation and the text folds.
        deterministic: ``torch.use_deterministic_algorithms`` and no cuDNN benchmarking.
        image_size: resize image inputs to this side (classification and segmentation); ``None`` keeps them.
        augment: the data's augmentation, masks and boxes moving with their images (``convatlas.data.augment``):
            the U-Net paper's flips, 90-degree rotations and elastic deformation for ``nuclei``, random horizontal
            flips and shifts of up to 1/14 of the side for every other set.
        data_dir: where the data files are (default: the installed packages; detection data specs name their folder).
        limit_train: use only this many training items (sentences for text), spread evenly over the set.
        limit_test: use only this many test items (not for text, whose folds decide).
        eval_batch_size: the batch of evaluation (default: ``batch_size``; text 500).
        save_every: also write the ``last`` checkpoint every this many steps (0: at the end of each epoch only).
        log_every: a ``metrics.jsonl`` step record every this many steps.
        num_workers: DataLoader workers for datasets decoded per item (image folders, COCO, VOC).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: CPU threads for torch; 0: ``OMP_NUM_THREADS`` when set, else the cores this process may use
            (affinity and cgroup quota), less one per data-loading worker (:func:`convatlas.utils.choose_threads`).
            The count only changes how fast a run goes and, in the last bits, its floating-point sums: results are
            identical for the same seed, machine and thread count.
        mode: text: ``"rand"``, ``"static"``, ``"non-static"`` or ``"multichannel"`` (the last for ``kim_cnn``).
        folds: text: k of the k-fold cross-validation.
        max_folds: text: run only the first folds (``None``: all).
        dev_fraction: text: the share of each training fold held out to pick the best epoch.
        backbone: detection: the zoo image model under the detector.
        max_proposals: detection: selective-search proposals per image (``rcnn`` and ``fast_rcnn`` only).
        loss: segmentation: ``None`` or ``"cross-entropy"`` (the default), or ``"unet-weighted"``: the U-Net
            paper's pixel weights ``w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2))``, ``w0 = 10``, ``sigma = 5`` px
            (needs data with instance labels: ``nuclei``).
        fit_anchors: detection (``faster_rcnn``): fit this many anchor shapes to the training boxes (k-means on
            ``1 - IoU``) instead of the sizes x ratios grid; the run reports the share of training boxes the default
            and the fitted anchors can match.
        backbone_weights: detection: start the backbone from a classification run of a zoo image model (its run
            folder or checkpoint JSON; :func:`~convatlas.train.checkpoint.load_backbone`); ``backbone`` defaults to
            that run's model and ``model_args["backbone_kwargs"]`` to its builder keywords.
    """

    model: str
    data: str
    out: str = "runs/train"
    task: str | None = None
    model_args: dict = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None
    accum_steps: int = 1
    lr: float | None = None
    opt: str | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    min_lr: float | None = None
    label_smoothing: float | None = None
    clip_grad: float | None = None
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    image_size: int | None = None
    augment: bool = False
    data_dir: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    eval_batch_size: int | None = None
    save_every: int = 0
    log_every: int = 50
    num_workers: int = 0
    device: str = "auto"
    threads: int = 0
    mode: str | None = None
    folds: int | None = None
    max_folds: int | None = None
    dev_fraction: float | None = None
    backbone: str | None = None
    max_proposals: int | None = None
    loss: str | None = None
    fit_anchors: int | None = None
    backbone_weights: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """The inverse of :meth:`to_dict`.

        Raises:
            ConfigError: for an unknown field.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        for name in values:
            if name not in known:
                raise ConfigError(name, "is not a field of TrainConfig")
        return cls(**values)

    def resolved(self) -> TrainConfig:
        """A copy with the task decided, the task's defaults filled in, and every field checked.

        Raises:
            ConfigError: naming the field, for a value out of range or a field that does not apply to the task.
            ValueError: for an unknown model (with close matches).
        """
        from convatlas.models import model_info

        if not isinstance(self.model, str):
            raise InputTypeError(f"model must be a registered model name, got {self.model!r} "
                                 f"({type(self.model).__name__})")  # fmt: skip
        task = model_info(self.model).task
        if self.task is not None and self.task != task:
            if self.task not in TASKS:
                raise ConfigError("task", f"must be one of {', '.join(TASKS)}, got {self.task!r}")
            raise ConfigError("task", f"{self.task}, but `model` {self.model} is a {task} model")
        _refuse_foreign_fields(self, task)
        config = _backbone_from_weights(self) if task == "detection" else self
        values = {k: v for k, v in TASK_DEFAULTS[task].items() if getattr(config, k) is None}
        config = dataclasses.replace(config, task=task, **values)
        if config.opt is None:  # text: Adadelta for Kim's CNN, AdamW for the attention-style encoders
            config.opt = "adadelta" if config.model == "kim_cnn" else "adamw"
        config.lr = DEFAULT_LR.get(config.opt, 0.0) if config.lr is None else config.lr
        _model_defaults(config)
        if config.opt == "sgd" and config.momentum is None:
            config.momentum = 0.9
        return config.check()

    def check(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the field, the rule and the value for any setting out of range."""
        if not isinstance(self.out, str | os.PathLike) or not os.fspath(self.out).strip():
            raise ConfigError("out", f"must name the run folder, got {self.out!r}")
        if self.data_dir is not None and (not isinstance(self.data_dir, str | os.PathLike)
                                          or not os.fspath(self.data_dir).strip()):  # fmt: skip
            raise ConfigError("data_dir", f"must name a folder, got {self.data_dir!r}")
        for name in BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.model_args, dict):
            raise ConfigError("model_args", f"must be a dict of keywords, got {type(self.model_args).__name__}")
        for name, allowed in (("opt", OPTIMIZERS), ("amp", AMP_MODES), ("schedule", SCHEDULES), ("mode", TEXT_MODES),
                              ("loss", LOSSES)):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(name, f"must be one of {', '.join(allowed)}, got {value!r}")
        for name, ok, rule in _range_rules(self):
            value = getattr(self, name)
            if (value is not None or _field_default(name) is not None) and not ok(value):
                raise ConfigError(name, f"must be {rule}, got {value!r}")
        if self.amp is None:
            raise ConfigError("amp", f"must be one of {', '.join(AMP_MODES)}, got None")
        if self.momentum is not None and self.opt not in (None, "sgd"):
            raise ConfigError("momentum", f"applies to opt 'sgd' only, not {self.opt!r}")
        if self.min_lr is not None and self.lr is not None and self.min_lr > self.lr:
            raise ConfigError("min_lr", f"must be <= lr ({self.lr}), got {self.min_lr}")
        if self.min_lr is not None and self.schedule == "constant":
            raise ConfigError("min_lr", "applies to schedule 'cosine' only, not 'constant'")
        if self.max_folds is not None and self.folds is not None and self.max_folds > self.folds:
            raise ConfigError("max_folds", f"must be <= folds ({self.folds}), got {self.max_folds}")
        if not isinstance(self.device, str) or not _device_form(self.device):
            raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        _refuse_out_in_data(self)
        kind = self.data.partition(":")[0] if isinstance(self.data, str) else ""
        if self.data_dir is not None and kind in NAMED_SPECS:
            raise ConfigError("data_dir", f"does not apply to `data` {self.data}, which names its own files")
        return self

    def differences(self, other: TrainConfig) -> list[str]:
        """The fields (except ``out``) whose values differ between two configurations."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k != "out" and a[k] != b[k]]


def _finite(low: float, *, low_open: bool = False, high: float | None = None, high_open: bool = False):
    def ok(v) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    return ok


def _integer(low: int, high: int | None = None):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)


def _range_rules(c: TrainConfig) -> list:
    return [
        ("epochs", _integer(1), "an integer >= 1"),
        ("batch_size", _integer(1), "an integer >= 1"),
        ("accum_steps", _integer(1), "an integer >= 1"),
        ("lr", _finite(0, low_open=True), "a finite number > 0"),
        ("momentum", _finite(0, high=1, high_open=True), "in [0, 1)"),
        ("weight_decay", _finite(0), "a finite number >= 0"),
        ("warmup_epochs", _finite(0), "a finite number >= 0"),
        ("min_lr", _finite(0), "a finite number >= 0"),
        ("label_smoothing", _finite(0, high=1, high_open=True), "in [0, 1)"),
        ("clip_grad", _finite(0), "a finite number >= 0 (0: off)"),
        ("seed", _integer(0, MAX_SEED), f"an integer in 0..{MAX_SEED}"),
        ("image_size", _integer(8, MAX_IMAGE_SIZE), f"an integer in 8..{MAX_IMAGE_SIZE}"),
        ("limit_train", _integer(1), "an integer >= 1"),
        ("limit_test", _integer(1), "an integer >= 1"),
        ("eval_batch_size", _integer(1), "an integer >= 1"),
        ("save_every", _integer(0), "an integer >= 0 (0: at epoch ends only)"),
        ("log_every", _integer(1), "an integer >= 1"),
        ("num_workers", _integer(0, MAX_WORKERS), f"an integer in 0..{MAX_WORKERS}"),
        ("threads", _integer(0, MAX_THREADS), f"an integer in 0..{MAX_THREADS} (0: the usable cores)"),
        ("folds", _integer(2), "an integer >= 2 for cross-validation"),
        ("max_folds", _integer(1), "an integer >= 1"),
        ("dev_fraction", _finite(0, low_open=True, high=0.5, high_open=True), "in (0, 0.5)"),
        ("max_proposals", _integer(1), "an integer >= 1"),
        ("fit_anchors", _integer(1), "an integer >= 1 (anchor shapes to fit)"),
    ]


def _device_form(name: str) -> bool:
    kind, _, index = name.partition(":")
    return name in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit())


def _field_default(name: str):
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _refuse_out_in_data(config: TrainConfig) -> None:
    """A run folder inside a folder of the user's data would add its checkpoints and plots to that data (as images of
    a class, or masks without a partner); refuse it."""
    kind, _, rest = config.data.partition(":") if isinstance(config.data, str) else ("", "", "")
    if kind not in FOLDER_SPECS or not rest:
        return
    out = Path(config.out).resolve()
    for folder in rest.split(":") if kind == "segfolder" else [rest]:
        root = Path(folder).resolve()
        if folder and (out == root or root in out.parents):
            raise ConfigError("out", f"{config.out} lies in the data folder {folder} of `data`; a run there would add "
                              "its files to the data: pick a folder outside it")  # fmt: skip


def _refuse_foreign_fields(config: TrainConfig, task: str) -> None:
    for name, tasks in APPLIES_TO.items():
        if task not in tasks and getattr(config, name) != _field_default(name):
            raise ConfigError(name, f"does not apply to a {task} run (it applies to {' and '.join(tasks)})")


def _backbone_from_weights(config: TrainConfig) -> TrainConfig:
    """With ``backbone_weights``: ``backbone`` defaults to the run's model and ``backbone_kwargs`` to its builder
    keywords (so the saved configuration says what the backbone is without reading the run again)."""
    if config.backbone_weights is None:
        return config
    if not isinstance(config.backbone_weights, str | os.PathLike) or not os.fspath(config.backbone_weights).strip():
        raise ConfigError("backbone_weights", f"must name a classification run folder or checkpoint JSON, got "
                          f"{config.backbone_weights!r}")  # fmt: skip
    args = config.model_args if isinstance(config.model_args, dict) else {}
    if config.backbone is not None and "backbone_kwargs" in args:
        return config
    from convatlas.train.checkpoint import CheckpointError, backbone_keywords, check_backbone_record, read_record

    try:
        record, where = read_record(config.backbone_weights)
        check_backbone_record(record, where)
    except CheckpointError as err:
        raise ConfigError("backbone_weights", str(err)) from None
    backbone = record.model.name if config.backbone is None else config.backbone
    if backbone == record.model.name and "backbone_kwargs" not in args and isinstance(config.model_args, dict):
        args = {**config.model_args, "backbone_kwargs": backbone_keywords(record)}
    return dataclasses.replace(config, backbone=backbone, model_args=args if args else config.model_args)


def _model_defaults(config: TrainConfig) -> None:
    """The defaults and refusals that depend on the model within its task."""
    if config.task == "text":
        if config.mode == "multichannel" and config.model != "kim_cnn":
            raise ConfigError("mode", f"multichannel exists only for kim_cnn, not {config.model}")
        if config.weight_decay is None:
            config.weight_decay = TEXT_ADAMW_WEIGHT_DECAY if config.opt == "adamw" else 0.0
    if config.task == "detection":
        if config.model in EXTERNAL_PROPOSALS:
            config.max_proposals = DEFAULT_MAX_PROPOSALS if config.max_proposals is None else config.max_proposals
            if config.augment:
                raise ConfigError("augment", f"does not apply to {config.model}, which trains on the cached "
                                  "selective-search proposals of the unaugmented images")  # fmt: skip
        elif config.max_proposals is not None:
            raise ConfigError("max_proposals", f"applies to rcnn and fast_rcnn only; {config.model} has an RPN")
        if config.fit_anchors is not None and config.model in EXTERNAL_PROPOSALS:
            raise ConfigError("fit_anchors", f"applies to faster_rcnn only; {config.model} has no anchors (its "
                              "proposals come from selective search)")  # fmt: skip
    if config.task == "segmentation" and config.loss == "unet-weighted" and config.label_smoothing:
        raise ConfigError("label_smoothing", "does not apply to loss 'unet-weighted' (the paper's weighted "
                          "cross-entropy has none)")  # fmt: skip


def quoted_fields(names) -> str:
    """Field names quoted as `` `name` `` (the command line shows them as its options)."""
    return ", ".join(f"`{n}`" for n in names)

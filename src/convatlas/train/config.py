"""The one description of a training run: a dataclass (no config framework), saved into every checkpoint's JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    """A training run.

    Attributes:
        model: a registered model name (``convatlas models``).
        data: a data spec (``fashion-mnist``, ``mnist5k``, ``imagefolder:DIR``, ``segfolder:IMAGES:MASKS``,
            ``fashion-scenes``).
        out: the run folder (checkpoints, ``metrics.jsonl``, plots).
        model_args: extra keywords for ``create_model`` (``in_channels``/``num_classes`` come from the data).
        task: ``"classification"`` or ``"segmentation"``; ``None`` takes the data's.
        epochs: passes over the training set.
        batch_size: the global batch (over all processes and accumulation steps).
        accum_steps: gradient accumulation: each step runs this many micro-batches of ``batch_size / (world *
            accum_steps)``.
        lr: the peak learning rate.
        opt: ``"sgd"`` (Nesterov momentum) or ``"adamw"``.
        momentum: SGD momentum.
        weight_decay: decoupled for AdamW, L2 for SGD; never applied to biases and norm weights.
        warmup_epochs: linear warm-up from ``lr / 10`` (fractions allowed), then a cosine decay to ``min_lr``.
        min_lr: the final learning rate.
        label_smoothing: for the cross-entropy.
        clip_grad: the maximum gradient norm (0 = no clipping).
        amp: ``"auto"`` (bf16 on CUDA, off on CPU), ``"none"``, ``"bf16"`` or ``"fp16"`` (with a gradient scaler).
        channels_last: use the channels-last memory format.
        compile: wrap the model in ``torch.compile``.
        seed: seeds initialisation, data order and augmentation.
        deterministic: ``torch.use_deterministic_algorithms`` and no cuDNN benchmarking.
        image_size: resize inputs (batches, on the device) to this side; ``None`` keeps the data's size.
        augment: random horizontal flips and shifts of up to ``image_size / 14`` pixels (seeded per step).
        data_dir: where the data files are (default: the installed packages).
        limit_train, limit_test: use only the first items of each split (quick runs).
        eval_batch_size: the batch of evaluation (default: ``batch_size``).
        save_every: also write the ``last`` checkpoint every this many steps (0: at the end of each epoch only).
        log_every: a ``metrics.jsonl`` step record every this many steps.
        num_workers: DataLoader workers for datasets decoded per item (folders).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        threads: CPU threads for torch (0: torch's default).
    """

    model: str
    data: str
    out: str = "runs/train"
    model_args: dict = field(default_factory=dict)
    task: str | None = None
    epochs: int = 5
    batch_size: int = 128
    accum_steps: int = 1
    lr: float = 0.1
    opt: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    clip_grad: float = 0.0
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

    def check(self) -> TrainConfig:
        """Raise ``ValueError`` naming the field, the rule and the value for any out-of-range setting."""
        rules = [
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("accum_steps", self.accum_steps >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"),
            ("min_lr", 0 <= self.min_lr <= self.lr, "in [0, lr]"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("clip_grad", self.clip_grad >= 0, ">= 0"),
            ("save_every", self.save_every >= 0, ">= 0"),
            ("log_every", self.log_every >= 1, ">= 1"),
            ("num_workers", self.num_workers >= 0, ">= 0"),
            ("threads", self.threads >= 0, ">= 0"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise ValueError(f"--{name.replace('_', '-')} must be {rule}, got {getattr(self, name)}")
        choices = {"opt": ("sgd", "adamw"), "amp": ("auto", "none", "bf16", "fp16"), "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.task not in (None, "classification", "segmentation"):
            raise ValueError(f"--task {self.task}: the image engine trains classification or segmentation")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"--image-size must be >= 8, got {self.image_size}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

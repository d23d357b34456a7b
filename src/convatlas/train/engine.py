"""The training loop: one engine for image classification and segmentation, on one process or many (DDP).

A run is fully described by a :class:`~convatlas.train.config.TrainConfig`. The data order of epoch ``e`` is a
permutation drawn from ``(seed, e)``; step ``s`` takes the ``s``-th slice of ``batch_size`` indices, which the
processes split evenly and each splits again into ``accum_steps`` micro-batches. Because the order is a function of
``(seed, epoch, step)`` and the checkpoint stores the RNG states and the position, ``resume`` continues exactly where
the last checkpoint stood, even in the middle of an epoch.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from convatlas.data import build_dataset, collate
from convatlas.models import create_model, model_info
from convatlas.train import checkpoint as ckpt
from convatlas.train import distributed as dist_utils
from convatlas.train.config import TrainConfig
from convatlas.train.metrics import MetricsLog, accuracy, confusion_matrix, mean_iou
from convatlas.train.plots import plot_confusion, plot_curves, plot_masks

IGNORE_INDEX = 255


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------------------------------
# Inputs


def prepare_inputs(
    x: Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    image_size: int | None,
    device: torch.device,
    channels_last: bool = False,
) -> Tensor:
    """Move a batch to the device, resize it to ``image_size`` (bilinear) and normalise it per channel.

    Args:
        x (Tensor[N, C, H, W]): images in [0, 1].

    Returns:
        Tensor[N, C, image_size, image_size] (or the input size), float32.
    """
    x = x.to(device, non_blocking=True).float()
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _resize_masks(y: Tensor, image_size: int | None) -> Tensor:
    if image_size is None or tuple(y.shape[-2:]) == (image_size, image_size):
        return y
    return F.interpolate(y[:, None].float(), size=(image_size, image_size), mode="nearest")[:, 0].long()


def augment_batch(x: Tensor, y: Tensor, gen: torch.Generator, *, segmentation: bool) -> tuple[Tensor, Tensor]:
    """Random horizontal flips and shifts of up to ``H / 14`` pixels (zero fill), one draw per sample from ``gen``.

    Args:
        x (Tensor[N, C, H, W]): images.
        y (Tensor[N] or Tensor[N, H, W]): labels, or masks (moved with their images, filled with ``255``).
    """
    n, _, h, w = x.shape
    pad = max(1, h // 14)
    flips = torch.rand(n, generator=gen) < 0.5
    shifts = torch.randint(-pad, pad + 1, (n, 2), generator=gen)
    x = x.clone()
    y = y.clone()
    for i in range(n):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        xi = x[i].flip(-1) if flips[i] else x[i]
        x[i] = _shift(xi, dy, dx, 0)
        if segmentation:
            yi = y[i].flip(-1) if flips[i] else y[i]
            y[i] = _shift(yi, dy, dx, IGNORE_INDEX)
    return x, y


def _shift(t: Tensor, dy: int, dx: int, fill: float) -> Tensor:
    out = torch.full_like(t, fill)
    h, w = t.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = t[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _fetch(dataset: Dataset, batches: list[Tensor], num_workers: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield the batches (index tensors) of ``dataset``: whole-batch indexing for in-memory sets, else a DataLoader."""
    if hasattr(dataset, "get_batch"):
        for idx in batches:
            yield dataset.get_batch(idx)
        return
    loader = DataLoader(
        dataset, batch_sampler=[b.tolist() for b in batches], num_workers=num_workers, collate_fn=collate
    )
    yield from loader


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of one epoch: a permutation of ``range(n)`` that depends only on ``(seed, epoch)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


# ----------------------------------------------------------------------------------------------------------------------
# Model, optimiser, schedule


def build_model(name: str, *, task: str, num_classes: int, in_channels: int, model_args: dict) -> nn.Module:
    """``create_model(name, num_classes=..., in_channels=..., **model_args)`` after checking the model's task.

    Raises:
        ValueError: for an unknown model (with close matches), a bad keyword, or a model of another task.
    """
    info = model_info(name)
    if info.task != task:
        raise ValueError(f"--model {name} is a {info.task} model but the data is a {task} set")
    clash = {"num_classes", "in_channels"} & set(model_args)
    if clash:
        raise ValueError(f"--model-arg {', '.join(sorted(clash))}: taken from the data, do not pass it")
    return create_model(name, num_classes=num_classes, in_channels=in_channels, **model_args)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; biases and normalisation weights (1-d parameters) get no weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.opt == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_factor(step: int, *, total: int, warmup: int, min_ratio: float) -> float:
    """The learning-rate multiplier at ``step``: linear warm-up from 0.1 to 1, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.amp]


def loss_fn(logits: Tensor, target: Tensor, *, label_smoothing: float) -> Tensor:
    """Cross-entropy in float32 over classes (``Tensor[N, K]``) or pixels (``Tensor[N, K, H, W]``, 255 ignored)."""
    if logits.ndim == 4 and tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing, ignore_index=IGNORE_INDEX)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    meta: dict,
    batch_size: int = 256,
    device: torch.device | None = None,
    info: dist_utils.DistInfo | None = None,
    channels_last: bool = False,
    amp: torch.dtype | None = None,
    num_workers: int = 0,
) -> dict:
    """Loss, accuracy and the confusion matrix (and mean IoU for segmentation) of ``model`` on ``dataset``.

    Under DDP each process takes every ``world_size``-th item and the sums are reduced, so every process returns
    the metrics of the whole set.

    Args:
        meta: the run's description: ``task``, ``num_classes``, ``mean``, ``std``, ``image_size``.

    Returns:
        ``{"loss", "acc", "cm" (Tensor[K, K]), "miou" (segmentation)}``.
    """
    info = info or dist_utils.DistInfo(device=device or torch.device("cpu"))
    device = info.device
    was_training = model.training
    model.eval()
    k = meta["num_classes"]
    cm = torch.zeros(k, k, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    indices = torch.arange(info.rank, len(dataset), info.world_size)
    batches = list(indices.split(batch_size))
    for x, y in _fetch(dataset, batches, num_workers):
        x = prepare_inputs(
            x,
            mean=meta["mean"],
            std=meta["std"],
            image_size=meta["image_size"],
            device=device,
            channels_last=channels_last,
        )
        y = y.to(device)
        if meta["task"] == "segmentation":
            y = _resize_masks(y, meta["image_size"])
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)
        if logits.ndim == 4 and tuple(logits.shape[-2:]) != tuple(y.shape[-2:]):
            logits = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear", align_corners=False)
        n = (y != IGNORE_INDEX).sum() if meta["task"] == "segmentation" else torch.tensor(y.shape[0], device=device)
        loss_sum += loss_fn(logits, y, label_smoothing=0.0).double() * n
        count += n
        cm += confusion_matrix(logits.argmax(1), y, k, ignore_index=IGNORE_INDEX)
    cm = dist_utils.all_reduce_sum(cm, info)
    loss_sum = dist_utils.all_reduce_sum(loss_sum, info)
    count = dist_utils.all_reduce_sum(count, info)
    model.train(was_training)
    result = {"loss": (loss_sum / count.clamp(min=1)).item(), "acc": accuracy(cm), "cm": cm.cpu()}
    if meta["task"] == "segmentation":
        result["miou"] = mean_iou(cm)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# The run


class _Progress:
    """A rich progress bar on a terminal (main process only); one line per epoch otherwise."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=completed, stats="")

    def update(self, description: str, stats: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=description, stats=stats)

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _task_of(dataset: Dataset, config: TrainConfig) -> str:
    task = config.task or dataset.task
    if task != dataset.task:
        raise ValueError(f"--task {task} does not fit --data {config.data}, a {dataset.task} set")
    return task


def train(config: TrainConfig, *, resume: bool = False) -> dict:
    """Train (or resume) the run ``config`` describes; write checkpoints, ``metrics.jsonl`` and plots to ``config.out``.

    Args:
        config: the run.
        resume: continue from ``config.out``'s ``last`` checkpoint; its configuration wins.

    Returns:
        the final test metrics: ``{"test_acc", "test_loss", ("test_miou"), "epochs", "seconds", "out"}``.

    Raises:
        ValueError: for bad settings, a model of the wrong task, an existing run folder without ``resume``.
        TrainingDiverged: when the loss stops being finite (the last good checkpoint is kept).
        CheckpointError: when the checkpoint to resume is missing or corrupted.
    """
    out = Path(config.out)
    state, saved_meta = None, None
    if resume:
        state, saved_meta = ckpt.load_checkpoint(out, "last")
        config = TrainConfig.from_dict({**saved_meta["config"], "out": str(out)})
    elif (out / "last.json").exists():
        raise ValueError(f"--out {out} already holds a run (last.json); pass --resume to continue it or pick another")
    config.check()
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    if config.threads:
        torch.set_num_threads(config.threads)
    info = dist_utils.setup(config.device)
    try:
        return _run(config, info, state, saved_meta)
    finally:
        dist_utils.cleanup()


def _run(config: TrainConfig, info: dist_utils.DistInfo, state: dict | None, saved_meta: dict | None) -> dict:
    out = Path(config.out)
    device = info.device
    opts = {"data_dir": config.data_dir}
    train_set = build_dataset(config.data, split="train", limit=config.limit_train, **opts)
    test_set = build_dataset(config.data, split="test", limit=config.limit_test, **opts)
    task = _task_of(train_set, config)
    world, accum = info.world_size, config.accum_steps
    if config.batch_size % (world * accum):
        raise ValueError(
            f"--batch-size {config.batch_size} must be divisible by processes x --accum-steps = {world} x {accum}"
        )
    micro = config.batch_size // (world * accum)
    steps_per_epoch = len(train_set) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"--batch-size {config.batch_size} is larger than the training set ({len(train_set)} items)")
    sample = train_set[0][0]
    meta = {
        "task": task,
        "model": config.model,
        "model_args": config.model_args,
        "num_classes": train_set.num_classes,
        "in_channels": train_set.in_channels,
        "classes": list(train_set.classes),
        "mean": list(train_set.mean),
        "std": list(train_set.std),
        "image_size": config.image_size,
        "data_size": list(sample.shape[-2:]),
        "config": config.to_dict(),
    }

    torch.manual_seed(config.seed)
    model = build_model(
        config.model,
        task=task,
        num_classes=meta["num_classes"],
        in_channels=meta["in_channels"],
        model_args=config.model_args,
    ).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    total_steps = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    min_ratio = config.min_lr / config.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total=total_steps, warmup=warmup, min_ratio=min_ratio)
    )
    amp = _amp_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)

    epoch, step, global_step, best = 0, 0, 0, -1.0
    sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n of the current epoch so far
    log = MetricsLog(out / "metrics.jsonl")
    if state is not None:
        model.load_state_dict(ckpt.prefixed(state, "model"))
        optimizer.load_state_dict(ckpt.unflatten_optimizer(ckpt.prefixed(state, "optimizer"), saved_meta["optimizer"]))
        scheduler.load_state_dict(saved_meta["scheduler"])
        if saved_meta.get("scaler"):
            scaler.load_state_dict(saved_meta["scaler"])
        ckpt.restore_rng(ckpt.prefixed(state, "rng"))
        epoch, step, global_step = saved_meta["epoch"], saved_meta["step"], saved_meta["global_step"]
        best = saved_meta["best"]
        sums = torch.tensor(saved_meta["sums"], dtype=torch.float64)
        if saved_meta.get("world_size", 1) != world and info.is_main:
            print(f"note: resuming a {saved_meta['world_size']}-process run on {world}; the data order is kept")
        if info.is_main:
            log.truncate_after(global_step)
    elif info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        log.path.unlink(missing_ok=True)

    raw = model
    if config.compile:
        model = torch.compile(model)
    if info.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save(tag: str) -> None:
        if not info.is_main:
            return
        opt_tensors, opt_rest = ckpt.flatten_optimizer(optimizer.state_dict())
        tensors = {f"model/{k}": v for k, v in raw.state_dict().items()}
        tensors.update({f"optimizer/{k}": v for k, v in opt_tensors.items()})
        tensors.update({f"rng/{k}": v for k, v in ckpt.rng_tensors().items()})
        record = {
            **meta,
            "epoch": epoch,
            "step": step,
            "global_step": global_step,
            "best": best,
            "sums": sums.tolist(),
            "optimizer": opt_rest,
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "world_size": world,
            "torch": torch.__version__,
        }
        ckpt.save_checkpoint(out, tag, tensors, record)

    progress = _Progress(info.is_main, total_steps, global_step)
    segmentation = task == "segmentation"
    metric = "miou" if segmentation else "acc"
    result: dict = {}
    start = time.perf_counter()
    try:
        while epoch < config.epochs:
            order = epoch_order(len(train_set), config.seed, epoch)
            batches = []
            for s in range(step, steps_per_epoch):
                mine = order[s * config.batch_size : (s + 1) * config.batch_size].view(world, -1)[info.rank]
                batches.extend(mine.view(accum, micro))
            data = _fetch(train_set, batches, config.num_workers)
            model.train()
            tick, seen = time.perf_counter(), 0
            while step < steps_per_epoch:
                losses = []
                for m in range(accum):
                    x, y = next(data)
                    if config.augment:
                        gen = torch.Generator().manual_seed(
                            hash((config.seed, epoch, step, info.rank, m)) & 0x7FFF_FFFF_FFFF_FFFF
                        )
                        x, y = augment_batch(x, y, gen, segmentation=segmentation)
                    x = prepare_inputs(
                        x,
                        mean=meta["mean"],
                        std=meta["std"],
                        image_size=config.image_size,
                        device=device,
                        channels_last=config.channels_last,
                    )
                    y = y.to(device)
                    if segmentation:
                        y = _resize_masks(y, config.image_size)
                    sync = info.distributed and m < accum - 1
                    with model.no_sync() if sync else contextlib.nullcontext():
                        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                            logits = model(x)
                        loss = loss_fn(logits, y, label_smoothing=config.label_smoothing)
                        scaler.scale(loss / accum).backward()
                    losses.append(loss.detach())
                    with torch.no_grad():
                        if segmentation:
                            valid = y != IGNORE_INDEX
                            pred = logits.argmax(1)
                            if pred.shape != y.shape:
                                pred = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear").argmax(1)
                            n, correct = valid.sum().item(), ((pred == y) & valid).sum().item()
                        else:
                            n, correct = y.shape[0], (logits.argmax(1) == y).sum().item()
                    sums += torch.tensor([loss.item() * n, correct, n], dtype=torch.float64)
                    seen += x.shape[0]
                step_loss = torch.stack(losses).mean()
                if dist_utils.any_true(not bool(torch.isfinite(step_loss)), info):
                    last = out / "last.json"
                    kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written"
                    raise TrainingDiverged(
                        f"loss is {step_loss.item()} at epoch {epoch + 1} step {step + 1} (global step "
                        f"{global_step + 1}); stopped, {kept}; try a lower --lr (now {config.lr}) or --clip-grad"
                    )
                if config.clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                global_step += 1
                rate = seen * world / max(time.perf_counter() - tick, 1e-9)
                running_acc = sums[1].item() / max(sums[2].item(), 1)
                progress.update(
                    f"epoch {epoch + 1}/{config.epochs}",
                    f"loss {step_loss.item():.4f} acc {running_acc:.4f} {rate:,.0f} img/s",
                )
                if info.is_main and global_step % config.log_every == 0:
                    log.write(
                        {
                            "kind": "step",
                            "epoch": epoch + 1,
                            "global_step": global_step,
                            "loss": step_loss.item(),
                            "lr": scheduler.get_last_lr()[0],
                            "images_per_s": rate,
                        }
                    )
                if config.save_every and global_step % config.save_every == 0 and step < steps_per_epoch:
                    save("last")
                    dist_utils.barrier(info)

            # End of an epoch: reduce the training sums, evaluate, log, plot, checkpoint.
            totals = dist_utils.all_reduce_sum(sums.to(device), info).cpu()
            if info.distributed:
                for b in raw.buffers():  # every process evaluates with rank 0's running statistics
                    torch.distributed.broadcast(b, 0)
            test = evaluate(
                raw,
                test_set,
                meta=meta,
                batch_size=config.eval_batch_size or config.batch_size,
                info=info,
                channels_last=config.channels_last,
                amp=amp,
                num_workers=config.num_workers,
            )
            record = {
                "kind": "epoch",
                "epoch": epoch + 1,
                "global_step": global_step,
                "train_loss": totals[0].item() / max(totals[2].item(), 1),
                "train_acc": totals[1].item() / max(totals[2].item(), 1),
                "test_loss": test["loss"],
                "test_acc": test["acc"],
                "lr": scheduler.get_last_lr()[0],
                "seconds": time.perf_counter() - start,
            }
            if segmentation:
                record["test_miou"] = test["miou"]
                record["train_miou"] = float("nan")
            progress.line(
                f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f} acc "
                f"{record['train_acc']:.4f} | test loss {test['loss']:.4f} acc {test['acc']:.4f}"
                + (f" mIoU {test['miou']:.4f}" if segmentation else "")
                + f" | {record['seconds']:.0f} s"
            )
            epoch, step = epoch + 1, 0
            sums.zero_()
            improved = test[metric] > best
            best = max(best, test[metric])
            if info.is_main:
                log.write(record)
                save("last")
                if improved:
                    save("best")
                plot_curves(log.read(), out / "curves.png", metric=metric)
            dist_utils.barrier(info)
            result = {f"test_{k}": v for k, v in test.items() if k != "cm"}
            result["cm"] = test["cm"]
    finally:
        progress.close()

    if not result:  # resumed a run that had already finished
        result = {f"test_{k}": v for k, v in evaluate(raw, test_set, meta=meta, info=info).items() if k != "cm"}
    if info.is_main and "cm" in result:
        if segmentation:
            _plot_sample_masks(raw, test_set, meta, out / "masks.png", device)
        else:
            plot_confusion(result["cm"], meta["classes"], out / "confusion.png", title=f"{config.model}: test set")
    result.pop("cm", None)
    result.update({"epochs": config.epochs, "seconds": time.perf_counter() - start, "out": str(out)})
    return result


@torch.no_grad()
def _plot_sample_masks(model: nn.Module, dataset: Dataset, meta: dict, path: Path, device: torch.device) -> None:
    n = min(4, len(dataset))
    images, masks = collate([dataset[i] for i in range(n)])
    model.eval()
    x = prepare_inputs(images, mean=meta["mean"], std=meta["std"], image_size=meta["image_size"], device=device)
    logits = model(x)
    if tuple(logits.shape[-2:]) != tuple(masks.shape[-2:]):
        logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    plot_masks(images, masks, logits.argmax(1).cpu(), path, num_classes=meta["num_classes"])


def load_model(checkpoint: str | os.PathLike, *, tag: str | None = None, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a trained model from a checkpoint (run folder or JSON file) with ``create_model``.

    Returns:
        ``(model in eval mode, the checkpoint's JSON record)``.
    """
    state, meta = ckpt.load_checkpoint(checkpoint, tag)
    model = build_model(
        meta["model"],
        task=meta["task"],
        num_classes=meta["num_classes"],
        in_channels=meta["in_channels"],
        model_args=meta["model_args"],
    )
    model.load_state_dict(ckpt.prefixed(state, "model"))
    return model.to(device).eval(), meta

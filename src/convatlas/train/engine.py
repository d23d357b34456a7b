"""The training engine: one loop for classification, segmentation, text and detection, on one process or many (DDP).

A run is a :class:`~convatlas.train.config.TrainConfig` and a :class:`~convatlas.train.task.Task`. The data order of
epoch ``e`` is a permutation drawn from ``(seed, e)``; step ``s`` takes the ``s``-th slice of ``batch_size`` indices,
which the processes split evenly and each splits again into ``accum_steps`` micro-batches; augmentation is drawn per
micro-batch from ``(seed, e, s, rank, micro-batch)``. Because all of that is a function of the position, and the
checkpoint stores the RNG states and the position, a resumed run continues exactly where its last checkpoint stood,
mid-epoch included: its final weights are bit-identical to an uninterrupted run's (on CPU; on GPU with
``deterministic``).

Order of work in :func:`fit`: check the configuration and the run folder (nothing written yet), read the checkpoint
to resume, build the data and the model (every input error surfaces here, before any training), take the folder's
lock, then train. SIGINT and SIGTERM end the run after the current step with a ``last`` checkpoint
(:class:`TrainingInterrupted`); a non-finite loss ends it with :class:`TrainingDiverged`, keeping the last good
checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from convatlas.errors import InputError, InputTypeError
from convatlas.files import atomic_write
from convatlas.train import checkpoint as ckpt
from convatlas.train import distributed as dist_utils
from convatlas.train.checkpoint import CheckpointError, CheckpointRecord, Progress
from convatlas.train.config import CHANGEABLE_ON_RESUME, ConfigError, TrainConfig, quoted_fields
from convatlas.train.metrics import MetricsLog
from convatlas.train.optim import amp_dtype, build_optimizer, build_scheduler, sync_learning_rate
from convatlas.train.plots import plot_curves
from convatlas.train.runfolder import RunFolder, StopSignals, hold
from convatlas.train.task import Task, build_task
from convatlas.utils import set_threads

LABELS = {"miou": "mIoU", "voc_map50": "mAP@0.5", "coco_ap": "COCO mAP", "fg_iou": "fg IoU", "dice": "Dice",
          "instance_f1": "instance F1"}  # fmt: skip


class TrainingDiverged(InputError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM ended the run after a ``last`` checkpoint was written.

    Attributes:
        signum: the signal.
        checkpoint: the checkpoint's JSON file (``None`` in processes other than the main one).
    """

    def __init__(self, signum: int, checkpoint: Path | None, progress: Progress) -> None:
        super().__init__(f"stopped by signal {signum} at epoch {progress.epoch + 1} step {progress.step}")
        self.signum, self.checkpoint, self.progress = signum, checkpoint, progress


@dataclass
class RunResult:
    """What a finished run reports.

    Attributes:
        out: the run folder.
        task: the task's name.
        epochs: epochs completed.
        global_step: optimiser steps done.
        seconds: wall time of this process's training (0 for a run that was already complete).
        final: the evaluation metrics of the last epoch (``"test_acc"``, ``"dev_acc"``, ``"test_voc_map50"``, ...).
        best: the metrics of the epoch with the best selection metric (the ``best`` checkpoint's).
        best_epoch: that epoch.
        classes: the class names.
    """

    out: str
    task: str
    epochs: int
    global_step: int
    seconds: float
    final: dict[str, float]
    best: dict[str, float]
    best_epoch: int
    classes: list[str]


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of one epoch: a permutation of ``range(n)`` that depends only on ``(seed, epoch)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def run_config(out: str | os.PathLike) -> TrainConfig:
    """The configuration of the run (or cross-validation) in ``out``, to resume it with some fields changed.

    Raises:
        CheckpointError: when ``out`` holds no run.
    """
    if (Path(out) / "cv_results.json").is_file():
        from convatlas.train.text import read_cv_config

        return read_cv_config(out)
    record, path = ckpt.read_record(out, "last")
    try:
        return TrainConfig.from_dict(record.config)
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {path}: its configuration is not valid ({err})") from None


def fit(config: TrainConfig, task: Task | None = None, *, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Train (or resume) the run ``config`` describes; write checkpoints, ``metrics.jsonl`` and plots to ``config.out``.

    Args:
        config: the run (its ``None`` fields take the task's defaults).
        task: the task object; default :func:`~convatlas.train.task.build_task` (text runs are given theirs by
            :func:`~convatlas.train.text.cross_validate`).
        resume: continue the run in ``config.out`` from its ``last`` checkpoint. ``config`` must equal the saved
            configuration (:func:`run_config`) except in :data:`~convatlas.train.config.CHANGEABLE_ON_RESUME`.
        overwrite: remove the run files in ``config.out`` first (other files stay).

    Returns:
        the run's final and best metrics.

    Raises:
        ConfigError: naming the field, for a bad setting, a run folder that is taken or unwritable, or a setting
            that differs from the resumed run's.
        CheckpointError: when the checkpoint to resume is missing or corrupted.
        TrainingDiverged: when the loss stops being finite.
        TrainingInterrupted: after SIGINT or SIGTERM (a ``last`` checkpoint was written).
    """
    if not isinstance(config, TrainConfig):
        raise InputTypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    config = config.resolved()
    folder = RunFolder(config.out)
    folder.check(resume=resume, overwrite=overwrite)
    saved = _saved_run(config) if resume else None
    with _torch_settings(config):
        info = dist_utils.setup(config.device)
        try:
            run = _Run(config, task or build_task(config), info, resume=resume)
            with hold(folder, info, resume=resume, overwrite=overwrite), StopSignals() as signals:
                if saved is not None and ckpt.read_record(config.out, "last")[0].tensors != saved[1].tensors:
                    raise ConfigError("out", f"{config.out}: its last checkpoint changed while this run was starting "
                                      "(another process?); resume again")  # fmt: skip
                run.start(saved)
                return run.train(signals)
        finally:
            dist_utils.cleanup(info)


def check_run(config: TrainConfig, task: Task, info: dist_utils.DistInfo) -> None:
    """Everything :func:`fit` checks before it trains (the sizes of the splits and batches, the model and its
    keywords), without writing anything: a caller that runs several fits (the folds of a cross-validation) checks them
    all before it takes or clears its folder.

    Args:
        config: a resolved configuration.
    """
    _Run(config, task, info)


def _saved_run(config: TrainConfig) -> tuple[dict[str, Tensor], CheckpointRecord]:
    """The checkpoint to resume, after checking that ``config`` may continue it."""
    tensors, record = ckpt.load_checkpoint(config.out, "last")
    try:
        saved = TrainConfig.from_dict(record.config)
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {config.out}: its configuration is not valid ({err})") from None
    changed = [k for k in config.differences(saved) if k not in CHANGEABLE_ON_RESUME]
    if changed:
        name = changed[0]
        raise ConfigError(name, f"is {getattr(config, name)!r} but the run in {config.out} was trained with "
                          f"{getattr(saved, name)!r}; on resume only {quoted_fields(CHANGEABLE_ON_RESUME)} may "
                          "change")  # fmt: skip
    if config.epochs < record.progress.epoch:
        raise ConfigError("epochs", f"is {config.epochs} but the run in {config.out} has already completed "
                          f"{record.progress.epoch} epochs")  # fmt: skip
    return tensors, record


@contextlib.contextmanager
def _torch_settings(config: TrainConfig):
    """Threads and deterministic algorithms for the run, restored afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    set_threads(config.threads, workers=config.num_workers)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        torch.backends.cudnn.benchmark = benchmark


class _Progress:
    """A rich progress bar on a terminal (main process only); one line per epoch otherwise."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        self.bar, self.enabled = None, enabled
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[stats]}"), TimeElapsedColumn())  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=completed, stats="")

    def update(self, description: str, stats: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=description, stats=stats)

    def line(self, text: str) -> None:
        if self.enabled:
            (self.bar.console.print if self.bar is not None else print)(text)
            sys.stdout.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def evaluate(
    task: Task,
    model: nn.Module,
    split: str,
    *,
    device: torch.device,
    batch_size: int,
    amp: torch.dtype | None = None,
    info: dist_utils.DistInfo | None = None,
) -> dict[str, float]:
    """The metrics of ``model`` on one split of ``task`` (each process evaluates every ``world_size``-th item and
    the partial results are gathered, so every process returns the metrics of the whole split).

    Returns:
        ``{metric: value}`` without the split's prefix; NaN becomes ``None``.
    """
    info = info or dist_utils.DistInfo(device=device)
    was_training = model.training
    model.eval()
    indices = torch.arange(info.rank, task.eval_size(split), info.world_size)
    batch_size = max(1, min(batch_size, len(indices)))  # a batch larger than the split is the whole split
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        part = task.eval_part(model, split, indices, device, batch_size)
    metrics = task.summarize(split, dist_utils.gather(part, info))
    model.train(was_training)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def _augment_seed(seed: int, epoch: int, step: int, rank: int, micro: int) -> int:
    return hash((seed, epoch, step, rank, micro)) & 0x7FFF_FFFF_FFFF_FFFF


class _Run:
    """The state of one run and the steps of its loop."""

    def __init__(self, config: TrainConfig, task: Task, info: dist_utils.DistInfo, *, resume: bool = False) -> None:
        self.config, self.task, self.info, self.device = config, task, info, info.device
        self.out = Path(config.out)
        world, accum = info.world_size, config.accum_steps
        if config.batch_size % (world * accum):
            raise ConfigError("batch_size", f"{config.batch_size} must be divisible by processes x `accum_steps` = "
                              f"{world} x {accum}")  # fmt: skip
        self.micro = config.batch_size // (world * accum)
        train_size = task.train_size  # the training split, then the others, are read and checked before size rules
        for split in task.eval_splits:
            if task.eval_size(split) < 1:
                raise ConfigError("data", f"{config.data}: the {split} split is empty")
        self.steps_per_epoch = train_size // config.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError("batch_size", f"{config.batch_size} is larger than the training set ({task.train_size} "
                              "items)")  # fmt: skip
        torch.manual_seed(task.seed)
        self.raw = task.build_model()
        if not resume:  # a new run's starting weights (a resumed run takes its checkpoint's in start)
            task.initialise(self.raw)
        self.raw = self.raw.to(self.device)
        if config.channels_last:
            self.raw = self.raw.to(memory_format=torch.channels_last)
        self.spec, self.classes, self.inputs = task.model_spec(), task.classes(), task.input_spec()
        self.optimizer = build_optimizer(self.raw, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.amp = amp_dtype(config.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)
        self.progress = Progress(world_size=world)
        self.log = MetricsLog(self.out / "metrics.jsonl")
        self.model: nn.Module = self.raw
        self.evaluated = False
        self.train_seconds = 0.0  # in the training steps of this process, evaluation and checkpoints excluded

    def start(self, saved: tuple[dict[str, Tensor], CheckpointRecord] | None) -> None:
        """Restore the saved state (or start afresh) and wrap the model for compilation and DDP."""
        if saved is not None:
            tensors, record = saved
            ckpt.load_state(self.raw, ckpt.prefixed(tensors, "model"), self.out / "last.json")
            opt_state = ckpt.unflatten_optimizer(ckpt.prefixed(tensors, "optimizer"), record.optimizer)
            self.optimizer.load_state_dict(opt_state)
            self.scheduler.load_state_dict(record.scheduler)
            sync_learning_rate(self.scheduler)  # the schedule's length follows `epochs`, which may have changed
            if record.scaler:
                self.scaler.load_state_dict(record.scaler)
            ckpt.restore_rng(ckpt.prefixed(tensors, "rng"))
            self.progress = dataclasses.replace(record.progress, world_size=self.info.world_size)
            if record.progress.world_size != self.info.world_size and self.info.is_main:
                print(f"note: resuming a {record.progress.world_size}-process run on {self.info.world_size}; the "
                      "data order is kept")  # fmt: skip
            self.log.load(self.progress.global_step)
        elif self.info.is_main:
            for line, record in self.task.notes():
                print(line)
                if record is not None:
                    self.log.write({**record, "global_step": 0})
        if self.config.compile:
            self.model = torch.compile(self.model)
        if self.info.distributed:
            cuda = self.device.type == "cuda"
            self.model = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None,
                                                 find_unused_parameters=self.task.unused_parameters)  # fmt: skip

    def train(self, signals: StopSignals) -> RunResult:
        """Run the remaining epochs; write the end-of-run pictures."""
        start = time.perf_counter()
        total = self.steps_per_epoch * self.config.epochs
        bar = _Progress(self.info.is_main, total, self.progress.global_step)
        try:
            while self.progress.epoch < self.config.epochs:
                self._epoch(signals, bar)
                self._end_epoch(bar, start)
                if dist_utils.any_true([signals.received is not None], self.info)[0]:
                    self._stop(signals)
        finally:
            bar.close()
        if self.info.is_main and self.evaluated:
            self.task.finish(self.raw, self.out, self.device)
        p = self.progress
        seconds = time.perf_counter() - start if self.evaluated else 0.0
        return RunResult(str(self.out), self.task.kind, p.epoch, p.global_step, seconds, dict(p.last_metrics),
                         dict(p.best_metrics), p.best_epoch, list(self.classes))  # fmt: skip

    def _plan(self, epoch: int, first_step: int) -> tuple[list[Tensor], list[int | None]]:
        """This process's micro-batches (training indices) of the steps left in ``epoch``, and their augmentation
        seeds."""
        c, info = self.config, self.info
        order = epoch_order(self.task.train_size, self.task.seed, epoch)
        indices, seeds = [], []
        for s in range(first_step, self.steps_per_epoch):
            mine = order[s * c.batch_size : (s + 1) * c.batch_size].view(info.world_size, -1)[info.rank]
            for m, idx in enumerate(mine.view(c.accum_steps, self.micro)):
                indices.append(idx)
                seeds.append(_augment_seed(self.task.seed, epoch, s, info.rank, m) if c.augment else None)
        return indices, seeds

    def _epoch(self, signals: StopSignals, bar: _Progress) -> None:
        p = self.progress
        data = self.task.batches(*self._plan(p.epoch, p.step))
        self.model.train()
        tick, seen = time.perf_counter(), 0
        while p.step < self.steps_per_epoch:
            step_start = time.perf_counter()
            loss, stop = self._step(data, signals)
            self.train_seconds += time.perf_counter() - step_start
            p.step += 1
            p.global_step += 1
            seen += self.config.batch_size
            self._after_step(loss, seen / max(time.perf_counter() - tick, 1e-9), bar)
            if stop:
                self._stop(signals)

    def _step(self, data, signals: StopSignals) -> tuple[float, bool]:
        """One optimiser step over ``accum_steps`` micro-batches; returns the loss and whether to stop after it."""
        c, p = self.config, self.progress
        losses = []
        for m in range(c.accum_steps):
            batch = next(data)
            quiet = self.info.distributed and m < c.accum_steps - 1  # all-reduce the gradients once per step
            with self.model.no_sync() if quiet else contextlib.nullcontext():
                with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                    loss, sums = self.task.train_step(self.model, batch, self.device)
                self.scaler.scale(loss / c.accum_steps).backward()
            losses.append(loss.detach().float())
            for key, value in sums.items():
                p.sums[key] = p.sums.get(key, 0.0) + value
        step_loss = torch.stack(losses).mean().item()
        diverged, stop = dist_utils.any_true([not math.isfinite(step_loss), signals.received is not None], self.info)
        if diverged:
            self._diverged(step_loss)
        if c.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), c.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.task.after_step(self.raw)
        return step_loss, stop

    def _diverged(self, loss: float) -> None:
        p, last = self.progress, self.out / "last.json"
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written"
        raise TrainingDiverged(
            f"loss is {loss} at epoch {p.epoch + 1} step {p.step + 1} (global step {p.global_step + 1}); stopped, "
            f"{kept}; try a lower `lr` (now {self.config.lr}) or `clip_grad`"
        )

    def _after_step(self, loss: float, rate: float, bar: _Progress) -> None:
        c, p = self.config, self.progress
        n = max(p.sums.get("n", 0.0), 1.0)
        running = " ".join(f"{k} {p.sums[k] / n:.4f}" for k in self.task.shown_train if k != "loss" and k in p.sums)
        bar.update(f"epoch {p.epoch + 1}/{c.epochs}", f"loss {loss:.4f} {running} {rate:,.0f} items/s")
        if self.info.is_main and p.global_step % c.log_every == 0:
            self.log.write({"kind": "step", "epoch": p.epoch + 1, "global_step": p.global_step, "loss": loss,
                            "lr": self.scheduler.get_last_lr()[0], "items_per_s": rate})  # fmt: skip
        if c.save_every and p.global_step % c.save_every == 0 and p.step < self.steps_per_epoch:
            self._save("last")
            dist_utils.barrier(self.info)

    def _train_metrics(self) -> dict[str, float]:
        """The epoch's training averages over every process (``train_loss``, ``train_acc``, ...)."""
        keys = sorted(self.progress.sums)
        values = torch.tensor([self.progress.sums[k] for k in keys], dtype=torch.float64, device=self.device)
        sums = dict(zip(keys, dist_utils.all_reduce_sum(values, self.info).tolist(), strict=True))
        n = max(sums.pop("n", 0.0), 1.0)
        return {f"train_{k}": v / n for k, v in sums.items()}

    def _evaluate(self) -> dict[str, float]:
        self.task.before_eval(self.raw, self.device)
        dist_utils.broadcast_buffers(self.raw, self.info)  # every process evaluates with rank 0's statistics
        batch = self.config.eval_batch_size or self.config.batch_size
        metrics = {}
        for split in self.task.eval_splits:
            found = evaluate(self.task, self.raw, split, device=self.device, batch_size=batch, amp=self.amp,
                             info=self.info)  # fmt: skip
            metrics.update({f"{split}_{k}": v for k, v in found.items()})
        self.evaluated = True
        return metrics

    def _end_epoch(self, bar: _Progress, start: float) -> None:
        """Reduce the training sums, evaluate, log, checkpoint (``last``, and ``best`` when it improved), plot."""
        p = self.progress
        train = self._train_metrics()
        metrics = self._evaluate()
        p.epoch, p.step, p.sums, p.last_metrics = p.epoch + 1, 0, {}, metrics
        score = metrics.get(self.task.select)
        improved = score is not None and (p.best_score is None or score > p.best_score)
        if improved:
            p.best_score, p.best_epoch, p.best_metrics = score, p.epoch, dict(metrics)
        record = {"kind": "epoch", "epoch": p.epoch, "global_step": p.global_step, **train, **metrics,
                  "lr": self.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - start,
                  "train_seconds": self.train_seconds, "threads": torch.get_num_threads()}  # fmt: skip
        bar.line(self._epoch_line(record))
        if self.info.is_main:
            self.log.write(record)
            self._save("last")
            if improved:
                self._save("best")
            metric = self.task.select.split("_", 1)[1]
            atomic_write(self.out / "curves.png", lambda tmp: plot_curves(
                self.log.records, tmp, metric=metric, splits=self.task.eval_splits))  # fmt: skip
        dist_utils.barrier(self.info)

    def _epoch_line(self, record: dict) -> str:
        def show(prefix: str, names) -> str:
            values = [(LABELS.get(k, k), record.get(f"{prefix}_{k}")) for k in names]
            return f"{prefix} " + " ".join(f"{k} {v:.4f}" if v is not None else f"{k} -" for k, v in values)

        parts = [show("train", self.task.shown_train), *(show(s, self.task.shown) for s in self.task.eval_splits)]
        return f"epoch {record['epoch']}/{self.config.epochs}: " + " | ".join(parts) + f" | {record['seconds']:.0f} s"

    def _save(self, tag: str) -> None:
        if not self.info.is_main:
            return
        opt_tensors, opt_rest = ckpt.flatten_optimizer(self.optimizer.state_dict())
        tensors = {f"model/{k}": v for k, v in self.raw.state_dict().items()}
        tensors.update({f"optimizer/{k}": v for k, v in opt_tensors.items()})
        tensors.update({f"rng/{k}": v for k, v in ckpt.rng_tensors().items()})
        record = CheckpointRecord(
            task=self.task.kind, model=self.spec, classes=self.classes, config=self.config.to_dict(),
            progress=self.progress, inputs=self.inputs, fold=self.task.fold, optimizer=opt_rest,
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
        )  # fmt: skip
        ckpt.save_checkpoint(self.out, tag, tensors, record)
        self.log.flush()

    def _stop(self, signals: StopSignals) -> None:
        self._save("last")
        checkpoint = self.out / "last.json" if self.info.is_main else None
        raise TrainingInterrupted(signals.received or 0, checkpoint, self.progress)


@dataclass
class Evaluation:
    """What :func:`evaluate_checkpoint` found.

    Attributes:
        metrics: ``{"loss", "acc", ...}`` of the split.
        record: the checkpoint's record.
        data: the data spec evaluated.
        items: the number of items (images, sentences) scored.
        confusion (Tensor[K, K] | None): rows true class, columns prediction (classification and segmentation).
    """

    metrics: dict[str, float]
    record: CheckpointRecord
    data: str
    items: int
    confusion: Tensor | None


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    tag: str | None = None,
    split: str = "test",
    data: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
) -> Evaluation:
    """The metrics of a trained model of any task on a split of its data (or of other data with the same classes).

    Args:
        checkpoint: a run folder or a checkpoint's JSON file.
        tag: ``"best"`` or ``"last"`` (default: best if present, else last).
        split: ``"test"``, ``"train"`` (or ``"dev"`` for a text fold).
        data: another data spec of the same task and classes (not for text, whose folds fix the sentences).
        limit: evaluate only this many items, spread over the split.
        batch_size: the evaluation batch (default: the run's).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        the metrics (without the split prefix), the record, the data, the number of items and (classification and
        segmentation) the confusion matrix.

    Raises:
        ConfigError: (fields ``data``, ``limit``, ``batch_size``, ``split``, ``device``) for a bad request or data
            whose classes differ from the checkpoint's.
        CheckpointError: for a bad checkpoint.
    """
    for name, value in (("limit", limit), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(name, f"must be an integer >= 1, got {value}")
    target = dist_utils.resolve(device)
    model, record = ckpt.load_model(checkpoint, tag=tag, device=target)
    config = TrainConfig.from_dict(record.config)
    if record.task == "text" and (data is not None or limit is not None):
        name = "data" if data is not None else "limit"
        raise ConfigError(name, "does not apply to a text checkpoint: its fold fixes the sentences it is scored on")
    limits = {"limit_train": limit} if split == "train" else {"limit_test": limit}
    data = config.data if data is None else data
    config = dataclasses.replace(config, data=data, **(limits if record.task != "text" else {}))
    task = build_task(config, fold=record.fold)
    task.use_checkpoint(record, split)
    metrics = evaluate(task, model, split, device=target, batch_size=batch_size or config.eval_batch_size
                       or config.batch_size)  # fmt: skip
    return Evaluation(metrics, record, config.data, task.eval_size(split), task.confusion())

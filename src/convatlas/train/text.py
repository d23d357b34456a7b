"""Sentence classification with Kim's protocol (Kim 2014, "Convolutional Neural Networks for Sentence
Classification"), as an outer loop around the one engine.

:func:`cross_validate` splits the sentences into ``folds`` parts with a seeded permutation; fold ``k`` tests on part
``k`` and trains on the rest, of which ``dev_fraction`` is held out to pick the epoch (the ``best`` checkpoint is the
one with the best dev accuracy, and the fold reports its test accuracy). Each fold is an ordinary run of
:func:`convatlas.train.fit` in ``OUT/fold-NN``; ``OUT/cv_results.json`` is rewritten after every fold. Resuming a
cross-validation continues the fold in progress from its last checkpoint and then runs the remaining folds.

Kim's defaults (:data:`convatlas.train.config.TASK_DEFAULTS`): batches of 50, Adadelta (rho 0.95, eps 1e-6, lr 1.0)
at a constant rate, dropout 0.5 and the max-norm-3 constraint after every step (the model's ``apply_max_norm()``),
windows 3/4/5 with 100 maps, GloVe 6B 50-d rows rescaled to word2vec's spread. The encoders of
:mod:`convatlas.models.lightconv` default to AdamW (lr 1e-3, weight decay 0.01); ``mode="static"`` freezes their
GloVe embedding and ``"rand"`` starts from random vectors.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convatlas.data import Subset
from convatlas.data.text import GLOVE_DIM, KIM_VECTOR_STD, TextDataset, Vocabulary, encode, load_glove, load_text
from convatlas.errors import InputTypeError
from convatlas.files import atomic_write_json
from convatlas.train import distributed as dist_utils
from convatlas.train.checkpoint import CheckpointError, ModelSpec, build_model, json_kwargs
from convatlas.train.config import CHANGEABLE_ON_RESUME, ConfigError, TrainConfig, quoted_fields
from convatlas.train.runfolder import RunFolder, hold
from convatlas.train.task import Task, model_keywords

KIM_WINDOWS = (3, 4, 5)
RESULTS = "cv_results.json"


@dataclass
class TextData:
    """The sentences of a run, encoded once and shared by its folds.

    Attributes:
        dataset: the sentences, labels and class names.
        tokens (Tensor[N, T]): padded token ids (0 = padding), at least ``max(KIM_WINDOWS)`` steps.
        labels (Tensor[N]): class indices.
        vocab_size: V, the vocabulary over the whole set (as Kim's code builds it).
        glove (Tensor[V, 50] | None): initial word vectors (``None`` in ``rand`` mode).
        glove_coverage: the share of the vocabulary GloVe has.
        splits: ``(train, dev, test)`` index tensors of each fold.
    """

    dataset: TextDataset
    tokens: Tensor
    labels: Tensor
    vocab_size: int
    glove: Tensor | None
    glove_coverage: float
    splits: list[tuple[Tensor, Tensor, Tensor]]

    @classmethod
    def load(cls, config: TrainConfig) -> TextData:
        """Read, limit, tokenise and encode the sentences of ``config.data`` and split them into folds.

        Raises:
            ConfigError: (field ``folds``) for more folds than sentences.
        """
        dataset = load_text(config.data, data_dir=config.data_dir)
        if config.limit_train is not None:
            kept = Subset(dataset, config.limit_train).indices.tolist()
            dataset = TextDataset(dataset.name, [dataset.texts[i] for i in kept], [dataset.labels[i] for i in kept],
                                  dataset.classes)  # fmt: skip
        if config.folds > len(dataset):
            raise ConfigError("folds", f"{config.folds} folds need at least {config.folds} sentences; {config.data} "
                              f"has {len(dataset)}")  # fmt: skip
        sentences = dataset.tokens()
        vocab = Vocabulary(sentences)
        tokens = encode(sentences, vocab, min_length=max(KIM_WINDOWS))
        glove, hits = None, 0
        if config.mode != "rand":  # Kim's recipe assumes word2vec's spread, so kim_cnn gets rescaled GloVe rows
            target_std = KIM_VECTOR_STD if config.model == "kim_cnn" else None
            glove, hits = load_glove(vocab, seed=config.seed, target_std=target_std)
        splits = fold_splits(len(dataset), config.folds, config.dev_fraction, config.seed)
        labels = torch.tensor(dataset.labels, dtype=torch.int64)
        return cls(dataset, tokens, labels, len(vocab), glove, hits / max(1, len(vocab) - 2), splits)


def fold_splits(n: int, folds: int, dev_fraction: float, seed: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``(train, dev, test)`` indices of each fold: a seeded permutation cut into ``folds`` parts; the dev set is
    ``dev_fraction`` of the rest (at least one sentence)."""
    gen = torch.Generator().manual_seed(seed)
    parts = torch.tensor_split(torch.randperm(n, generator=gen), folds)
    out = []
    for i, test in enumerate(parts):
        rest = torch.cat([p for j, p in enumerate(parts) if j != i])
        rest = rest[torch.randperm(len(rest), generator=gen)]
        n_dev = max(1, round(dev_fraction * len(rest)))
        out.append((rest[n_dev:], rest[:n_dev], test))
    return out


def _trim(tokens: Tensor, min_length: int) -> Tensor:
    """Drop the all-padding columns on the right of a batch (keeping at least ``min_length``)."""
    lengths = (tokens != 0).sum(dim=1)
    return tokens[:, : max(min_length, int(lengths.max()))]


class TextTask(Task):
    """One fold of a cross-validated sentence classification run.

    Args:
        config: the resolved configuration of the fold's run.
        data: the encoded sentences (shared by the folds).
        fold: the fold (1-based).
    """

    kind = "text"
    eval_splits = ("dev", "test")
    select = "dev_acc"
    shown = ("acc",)

    def __init__(self, config: TrainConfig, data: TextData, fold: int) -> None:
        super().__init__(config)
        if not 1 <= fold <= len(data.splits):
            raise ConfigError("folds", f"has no fold {fold} (there are {len(data.splits)})")
        self.data, self.fold = data, fold
        self.train_idx, self.dev_idx, self.test_idx = data.splits[fold - 1]

    @property
    def seed(self) -> int:
        return self.config.seed * 1000 + self.fold

    @property
    def train_size(self) -> int:
        return len(self.train_idx)

    def _rows(self, split: str) -> Tensor:
        if split not in ("train", "dev", "test"):
            raise ConfigError("split", f"must be train, dev or test for a text run, got {split!r}")
        return {"train": self.train_idx, "dev": self.dev_idx, "test": self.test_idx}[split]

    def eval_size(self, split: str) -> int:
        return len(self._rows(split))

    def classes(self) -> list[str]:
        return list(self.data.dataset.classes)

    def _keywords(self) -> dict:
        c = self.config
        fixed = dict(vocab_size=self.data.vocab_size, embed_dim=GLOVE_DIM, num_classes=len(self.classes()),
                     padding_idx=0, embedding=None)  # fmt: skip
        defaults = {}
        if c.model == "kim_cnn":
            fixed["mode"] = c.mode
            defaults = dict(windows=KIM_WINDOWS, maps=100, dropout=0.5, max_norm=3.0)  # Kim's; model_args may change
        else:
            fixed["freeze_embedding"] = c.mode == "static"
        return model_keywords(c.model, {**defaults, **c.model_args}, fixed)

    def model_spec(self) -> ModelSpec:
        kwargs = self._keywords()
        kwargs.pop("embedding")  # the vectors are in the checkpoint's tensors
        return ModelSpec(self.config.model, json_kwargs(kwargs))

    def build_model(self) -> nn.Module:
        model = build_model(self.model_spec())
        if self.data.glove is not None:
            with torch.no_grad():
                for embedding in (model.embed, getattr(model, "static_embed", None)):
                    if embedding is not None:
                        embedding.weight.copy_(self.data.glove)
                        embedding.weight[0] = 0.0
        return model

    def batches(self, indices: Sequence[Tensor], seeds: Sequence[int | None]) -> Iterator[tuple[Tensor, Tensor]]:
        for idx in indices:
            rows = self.train_idx[idx]
            yield _trim(self.data.tokens[rows], max(KIM_WINDOWS)), self.data.labels[rows]

    def train_step(self, model: nn.Module, batch, device: torch.device) -> tuple[Tensor, dict[str, float]]:
        x, y = (t.to(device) for t in batch)
        logits = model(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
        correct = int((logits.detach().argmax(1) == y).sum())
        return loss, {"loss": loss.item() * len(y), "acc": float(correct), "n": float(len(y))}

    def after_step(self, model: nn.Module) -> None:
        if hasattr(model, "apply_max_norm"):
            model.apply_max_norm()

    @torch.no_grad()
    def eval_part(self, model: nn.Module, split: str, indices: Tensor, device: torch.device, batch_size: int):
        rows = self._rows(split)[indices]
        correct, loss_sum = 0, 0.0
        for part in rows.split(batch_size):
            x = _trim(self.data.tokens[part], max(KIM_WINDOWS)).to(device)
            y = self.data.labels[part].to(device)
            logits = model(x).float()
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        return {"correct": correct, "loss": loss_sum, "n": len(rows)}

    def summarize(self, split: str, parts: list) -> dict[str, float]:
        n = max(1, sum(p["n"] for p in parts))
        return {"loss": sum(p["loss"] for p in parts) / n, "acc": sum(p["correct"] for p in parts) / n}


@dataclass
class FoldResult:
    """One fold: the epoch the dev set picked, the dev and test accuracy there, and the seconds it took."""

    fold: int
    best_epoch: int
    dev_accuracy: float
    test_accuracy: float
    seconds: float


@dataclass
class CVResult:
    """A cross-validation: the configuration, the class names, and each fold's result."""

    config: dict
    classes: list[str]
    folds: list[FoldResult]
    train_size: int
    vocab_size: int
    glove_coverage: float

    @property
    def mean(self) -> float | None:
        return statistics.fmean(f.test_accuracy for f in self.folds) if self.folds else None

    @property
    def std(self) -> float | None:
        return statistics.stdev([f.test_accuracy for f in self.folds]) if len(self.folds) > 1 else None

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "mean_test_accuracy": self.mean, "std_test_accuracy": self.std}


def read_cv_config(out: str | Path) -> TrainConfig:
    """The configuration a cross-validation in ``out`` was started with (from its ``cv_results.json``).

    Raises:
        CheckpointError: when the file is missing or not a valid result file.
    """
    path = Path(out) / RESULTS
    if not path.is_file():
        raise CheckpointError(f"{path}: no cross-validation to resume here")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is corrupted (not valid JSON: {err})") from None
    if not isinstance(values, dict) or not isinstance(values.get("config"), dict):
        raise CheckpointError(f"{path} is corrupted: no 'config' object")
    try:
        return TrainConfig.from_dict(values["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path} is corrupted: {err}") from None


def cross_validate(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, log=print) -> CVResult:
    """Run (or resume) Kim's k-fold protocol; each fold is a run of :func:`convatlas.train.fit`.

    Args:
        config: a text run; ``max_folds`` runs only the first folds.
        resume: continue the cross-validation in ``config.out`` (the fold in progress, then the rest).
        overwrite: replace the run files in ``config.out``.
        log: where the per-fold lines go.

    Returns:
        the folds run so far and their dev-selected test accuracies.

    Raises:
        ConfigError: for bad settings, more folds than sentences, a run folder that is taken, or (on resume) a field
            that differs from the saved configuration outside :data:`CHANGEABLE_ON_RESUME`.
    """
    from convatlas.train.engine import check_run, fit

    if not isinstance(config, TrainConfig):
        raise InputTypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    config = config.resolved()
    if config.task != "text":
        raise ConfigError("model", f"{config.model} is a {config.task} model; cross-validation is for text runs")
    root = RunFolder(config.out, outputs=(RESULTS,))
    root.check(resume=resume, overwrite=overwrite)
    if resume:
        _check_same(config, read_cv_config(config.out))
    data = TextData.load(config)
    info = dist_utils.setup(config.device)
    try:
        folds = range(1, (config.max_folds or config.folds) + 1)
        for fold in folds:  # every fold is checked before the folder is taken (and, with `overwrite`, cleared)
            fold_config = dataclasses.replace(config, out=str(Path(config.out) / f"fold-{fold:02d}"))
            check_run(fold_config, TextTask(fold_config, data, fold), info)
        with hold(root, info, resume=resume, overwrite=overwrite):
            result = CVResult(config.to_dict(), list(data.dataset.classes), [], len(data.dataset), data.vocab_size,
                              data.glove_coverage)  # fmt: skip
            _write(result, root.path, info)
            for fold in folds:
                result.folds.append(_run_fold(fit, config, data, fold, log, info))
                _write(result, root.path, info)
            return result
    finally:
        dist_utils.cleanup(info)


def _check_same(config: TrainConfig, saved: TrainConfig) -> None:
    changed = [k for k in config.differences(saved) if k not in CHANGEABLE_ON_RESUME]
    if changed:
        name = changed[0]
        raise ConfigError(name, f"is {getattr(config, name)!r} but the cross-validation in {config.out} was started "
                          f"with {getattr(saved, name)!r}; on resume only {quoted_fields(CHANGEABLE_ON_RESUME)} may "
                          "change")  # fmt: skip


def _run_fold(fit, config: TrainConfig, data: TextData, fold: int, log, info) -> FoldResult:
    start = time.perf_counter()
    fold_config = dataclasses.replace(config, out=str(Path(config.out) / f"fold-{fold:02d}"))
    task = TextTask(fold_config, data, fold)
    resume = (Path(fold_config.out) / "last.json").is_file()
    run = fit(fold_config, task, resume=resume)
    result = FoldResult(fold, run.best_epoch, run.best["dev_acc"], run.best["test_acc"], time.perf_counter() - start)
    if info.is_main:
        log(f"fold {fold}/{config.folds}: dev {result.dev_accuracy:.4f} (epoch {result.best_epoch}), "
            f"test {result.test_accuracy:.4f}, {result.seconds:.1f} s")  # fmt: skip
    return result


def _write(result: CVResult, folder: Path, info) -> None:
    if info.is_main:
        atomic_write_json(folder / RESULTS, result.to_dict())

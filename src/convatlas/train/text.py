"""Sentence classification with Kim's protocol (Kim 2014, "Convolutional Neural Networks for Sentence
Classification"): k-fold cross-validation, 10% of each training fold held out as the dev set for early stopping,
mini-batches of 50, Adadelta (rho 0.95, eps 1e-6), dropout 0.5 and the max-norm-3 constraint applied after every
step through the model's ``apply_max_norm()``.

``convatlas train --model kim_cnn --data mr --mode non-static`` lands in :func:`run`; so does
``python -m convatlas.train.text`` (same arguments, plus ``--max-folds`` to run only the first folds).

Models: ``kim_cnn`` (modes ``rand``, ``static``, ``non-static``, ``multichannel``) and the encoders of
:mod:`convatlas.models.lightconv` (``lightconv_classifier``, ``dynamicconv_classifier``, ``attention_classifier``;
``static`` freezes their GloVe embedding, ``rand`` starts from random vectors). The encoders train with AdamW
(lr 1e-3) by default, as transformer-style layers do poorly with Adadelta; ``--opt adadelta`` overrides that.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convatlas.data.text import GLOVE_DIM, KIM_VECTOR_STD, TextDataset, Vocabulary, encode, load_glove, load_text
from convatlas.models import create_model, model_info

__all__ = ["CVResult", "FoldResult", "TextRunConfig", "cross_validate", "main", "run"]

MODES = ("rand", "static", "non-static", "multichannel")
KIM_WINDOWS = (3, 4, 5)


@dataclass
class TextRunConfig:
    """One cross-validated text run (defaults: Kim 2014).

    Attributes:
        model: ``kim_cnn`` or a text model of the registry.
        data: ``mr``, ``cr`` or ``tsv:PATH``.
        mode: ``rand``, ``static``, ``non-static`` or ``multichannel`` (the last only for ``kim_cnn``).
        folds: k of the k-fold cross-validation.
        max_folds: run only the first this many folds (``None``: all).
        epochs: passes over each training fold (the dev set picks the best epoch).
        batch_size: mini-batch size.
        lr: learning rate (``None``: 1.0 for Adadelta, 1e-3 for AdamW).
        opt: ``"adadelta"``, ``"adamw"`` or ``None`` (Adadelta for ``kim_cnn``, AdamW for the encoders).
        dev_fraction: share of each training fold held out for early stopping.
        seed: seeds the fold split, the initialisation and the batch order.
        out: folder for ``cv_results.json`` (used by :func:`run`; ``None`` there means ``runs/MODEL-DATA-MODE``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        model_args: extra keywords for ``create_model``.
    """

    model: str = "kim_cnn"
    data: str = "mr"
    mode: str = "non-static"
    folds: int = 10
    max_folds: int | None = None
    epochs: int = 10
    batch_size: int = 50
    lr: float | None = None
    opt: str | None = None
    dev_fraction: float = 0.1
    seed: int = 0
    out: str | None = None
    device: str = "auto"
    model_args: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "multichannel" and self.model != "kim_cnn":
            raise ValueError(f"--mode multichannel exists only for kim_cnn, not {self.model}")
        if self.folds < 2:
            raise ValueError(f"--folds must be >= 2 for cross-validation, got {self.folds}")
        if self.max_folds is not None and not 1 <= self.max_folds <= self.folds:
            raise ValueError(f"--max-folds must lie in [1, folds={self.folds}], got {self.max_folds}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"--epochs and --batch-size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not 0.0 < self.dev_fraction < 0.5:
            raise ValueError(f"dev_fraction must lie in (0, 0.5), got {self.dev_fraction}")
        if self.opt not in (None, "adadelta", "adamw"):
            raise ValueError(f"--opt for text runs must be adadelta or adamw, got {self.opt!r}")
        if model_info(self.model).task != "text":
            raise ValueError(
                f"--model {self.model} is a {model_info(self.model).task} model; text data needs a text "
                "model (kim_cnn, lightconv_classifier, dynamicconv_classifier, attention_classifier)"
            )


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    dev_accuracy: float
    test_accuracy: float
    seconds: float


@dataclass
class CVResult:
    config: dict
    folds: list[FoldResult]
    train_size: int
    vocab_size: int
    glove_coverage: float

    @property
    def mean(self) -> float:
        return statistics.fmean(f.test_accuracy for f in self.folds)

    @property
    def std(self) -> float:
        return statistics.stdev([f.test_accuracy for f in self.folds]) if len(self.folds) > 1 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_test_accuracy": self.mean, "std_test_accuracy": self.std}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def _build_model(cfg: TextRunConfig, vocab_size: int, num_classes: int, glove: Tensor | None) -> nn.Module:
    embedding = None if cfg.mode == "rand" else glove
    if cfg.model == "kim_cnn":
        kw = dict(
            vocab_size=vocab_size,
            embed_dim=GLOVE_DIM,
            num_classes=num_classes,
            mode=cfg.mode,
            embedding=embedding,
            windows=KIM_WINDOWS,
            maps=100,
            dropout=0.5,
            max_norm=3.0,
            padding_idx=0,
        )
    else:
        kw = dict(
            vocab_size=vocab_size,
            embed_dim=GLOVE_DIM,
            num_classes=num_classes,
            embedding=embedding,
            freeze_embedding=cfg.mode == "static",
            padding_idx=0,
        )
    return create_model(cfg.model, **{**kw, **cfg.model_args})


def _optimizer(cfg: TextRunConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = cfg.opt or ("adadelta" if cfg.model == "kim_cnn" else "adamw")
    if opt == "adadelta":
        return torch.optim.Adadelta(params, lr=cfg.lr or 1.0, rho=0.95, eps=1e-6)
    return torch.optim.AdamW(params, lr=cfg.lr or 1e-3, weight_decay=0.01)


def _trim(tokens: Tensor, min_length: int) -> Tensor:
    """Drop the all-padding columns on the right of a batch (keeping at least ``min_length``)."""
    lengths = (tokens != 0).sum(dim=1)
    return tokens[:, : max(min_length, int(lengths.max()))]


@torch.no_grad()
def _accuracy(model: nn.Module, tokens: Tensor, labels: Tensor, device: torch.device, min_length: int) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(tokens), 500):
        x = _trim(tokens[start : start + 500], min_length).to(device)
        correct += int((model(x).argmax(dim=1).cpu() == labels[start : start + 500]).sum())
    return correct / max(1, len(tokens))


def _split(n: int, folds: int, dev_fraction: float, gen: torch.Generator) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(train, dev, test) index sets of each fold: a random permutation cut into ``folds`` parts."""
    order = torch.randperm(n, generator=gen)
    parts = torch.tensor_split(order, folds)
    out = []
    for i, test in enumerate(parts):
        rest = torch.cat([p for j, p in enumerate(parts) if j != i])
        rest = rest[torch.randperm(len(rest), generator=gen)]
        n_dev = max(1, round(dev_fraction * len(rest)))
        out.append((rest[n_dev:], rest[:n_dev], test))
    return out


def cross_validate(cfg: TextRunConfig, dataset: TextDataset | None = None, *, log=print) -> CVResult:
    """Run Kim's protocol; ``dataset`` defaults to the one ``cfg.data`` names.

    Returns:
        a :class:`CVResult` with the dev-selected test accuracy of each fold.
    """
    cfg.validate()
    dataset = dataset or load_text(cfg.data)
    device = _device(cfg.device)
    sentences = dataset.tokens()
    vocab = Vocabulary(sentences)  # over the whole set, as Kim's code does (unseen test words get random vectors)
    min_length = max(KIM_WINDOWS)
    tokens = encode(sentences, vocab, min_length=min_length)  # (N, T_max)
    labels = torch.tensor(dataset.labels, dtype=torch.int64)
    # Kim's recipe assumes word2vec's spread (std 0.144); GloVe 50-d is 4.4x wider, so kim_cnn gets rescaled rows
    target_std = KIM_VECTOR_STD if cfg.model == "kim_cnn" else None
    glove, hits = (None, 0) if cfg.mode == "rand" else load_glove(vocab, seed=cfg.seed, target_std=target_std)
    gen = torch.Generator().manual_seed(cfg.seed)
    splits = _split(len(dataset), cfg.folds, cfg.dev_fraction, gen)[: cfg.max_folds or cfg.folds]
    results = []
    for fold, (train_idx, dev_idx, test_idx) in enumerate(splits, 1):
        start = time.perf_counter()
        torch.manual_seed(cfg.seed * 1000 + fold)
        model = _build_model(cfg, len(vocab), dataset.num_classes, glove).to(device)
        opt = _optimizer(cfg, model)
        best = (-1.0, 0, 0.0)  # (dev accuracy, epoch, test accuracy)
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            for b in range(0, len(order), cfg.batch_size):
                idx = order[b : b + cfg.batch_size]
                x, y = _trim(tokens[idx], min_length).to(device), labels[idx].to(device)
                loss = F.cross_entropy(model(x), y)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"fold {fold} epoch {epoch}: the loss is {loss.item()}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if hasattr(model, "apply_max_norm"):
                    model.apply_max_norm()
            dev = _accuracy(model, tokens[dev_idx], labels[dev_idx], device, min_length)
            if dev > best[0]:
                best = (dev, epoch, _accuracy(model, tokens[test_idx], labels[test_idx], device, min_length))
        result = FoldResult(fold, best[1], best[0], best[2], time.perf_counter() - start)
        results.append(result)
        log(
            f"fold {fold}/{cfg.folds}: dev {result.dev_accuracy:.4f} (epoch {result.best_epoch}), "
            f"test {result.test_accuracy:.4f}, {result.seconds:.1f} s"
        )
    coverage = hits / max(1, len(vocab) - 2)
    return CVResult(asdict(cfg), results, len(dataset), len(vocab), coverage)


def _config_from_args(args: argparse.Namespace) -> TextRunConfig:
    """Read a namespace from ``convatlas train`` or :func:`main`; missing or ``None`` values keep Kim's defaults."""
    defaults = TextRunConfig()
    values = {}
    for name in (
        "model",
        "data",
        "mode",
        "folds",
        "max_folds",
        "epochs",
        "batch_size",
        "lr",
        "opt",
        "seed",
        "out",
        "device",
    ):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if values.get("opt") not in (None, "adadelta", "adamw"):
        values.pop("opt")  # the image engine's sgd default means nothing here: keep the per-model default
    model_args = getattr(args, "model_args", None)
    if isinstance(model_args, dict):
        values["model_args"] = model_args
    return TextRunConfig(**{**asdict(defaults), **values})


def run(args: argparse.Namespace) -> int:
    """Cross-validate a text model as the namespace describes; print each fold and the mean; write the JSON.

    Reads (with ``getattr``, ``None`` meaning Kim's default): model, data, mode, folds, max_folds, epochs,
    batch_size, lr, opt, seed, out (default ``runs/MODEL-DATA-MODE``), device, threads, model_args.
    Returns the exit status (0).
    """
    cfg = _config_from_args(args)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if cfg.out is None:
        data = cfg.data.replace(":", "-").replace("/", "_")
        cfg.out = f"runs/{cfg.model}-{data}-{cfg.mode}"
    result = cross_validate(cfg)
    print(
        f"{cfg.model} {cfg.mode} on {cfg.data}: {len(result.folds)} of {cfg.folds} folds, "
        f"mean test accuracy {100 * result.mean:.2f} +- {100 * result.std:.2f} "
        f"({result.train_size} sentences, vocabulary {result.vocab_size}, "
        f"GloVe covers {100 * result.glove_coverage:.1f}%)"
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "cv_results.json.tmp"
    tmp.write_text(json.dumps(result.to_dict(), indent=2))
    os.replace(tmp, out / "cv_results.json")
    print(f"wrote {out / 'cv_results.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convatlas.train.text", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="kim_cnn")
    p.add_argument("--data", default="mr", help="mr, cr or tsv:PATH")
    p.add_argument("--mode", default="non-static", choices=MODES)
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--max-folds", type=int, default=None, help="run only the first folds")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--opt", choices=("adadelta", "adamw"), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"convatlas.train.text: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

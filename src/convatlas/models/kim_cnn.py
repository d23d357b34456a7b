"""Kim's CNN for sentence classification (Kim, "Convolutional Neural Networks for Sentence Classification", EMNLP 2014).

A sentence of ``T`` words becomes a ``T x d`` matrix of word vectors; filters spanning ``h`` whole words
(``h`` = 3, 4, 5, 100 feature maps each) give ``c_i = ReLU(w . x_{i:i+h-1} + b)``; max-over-time pooling keeps the
largest ``c_i`` of each map; dropout (0.5) and a softmax layer whose weight vectors are constrained to L2 norm <= 3
(:meth:`KimCNN.apply_max_norm`, called after each optimiser step) give the class scores. The four variants:

- ``rand``: word vectors initialised at random and trained;
- ``static``: pretrained vectors (e.g. word2vec), kept fixed;
- ``non-static``: pretrained vectors fine-tuned;
- ``multichannel``: two channels of the pretrained vectors, one fixed and one tuned; "each filter is applied to both
  channels and the results are added", ``c_i = ReLU(w . x^static_{i:i+h-1} + w . x^tuned_{i:i+h-1} + b)``.

Short sentences: as in Kim's code, every sentence is padded with ``max(windows) - 1`` padding tokens on both sides,
so any ``T >= 1`` works (a sentence shorter than a window still yields features). The padding word's vector is zero
and stays zero (it gets no gradient). Words missing from the pretrained vectors should get ``U[-0.25, 0.25]`` vectors
(Kim's choice); that is also how ``rand`` and a ``None`` embedding are initialised.

Parameters: ``V d`` (twice in ``multichannel``, one copy frozen) ``+ sum_h (h d m + m) + (|windows| m + 1) K``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convatlas.errors import InputTypeError
from convatlas.models.checks import (
    MAX_VOCAB,
    check_choice,
    check_float,
    check_int,
    check_ints,
    check_num_classes,
    check_rate,
)
from convatlas.models.registry import register_model

MODES = ("rand", "static", "non-static", "multichannel")
DEFAULT_VOCAB, DEFAULT_DIM = 20_000, 300  # the MR vocabulary is 18,765 words; word2vec vectors are 300-d
UNKNOWN_RANGE = 0.25  # Kim's U[-a, a] for vectors without a pretrained value


class KimCNN(nn.Module):
    """Kim's sentence CNN (see the module docstring).

    Args:
        vocab_size: number of words ``V``; taken from ``embedding`` when given (20,000 when neither is given).
        embed_dim: word-vector size ``d``; taken from ``embedding`` when given (300 when neither is given).
        num_classes: number of classes ``K``.
        mode: ``"rand"``, ``"static"``, ``"non-static"`` or ``"multichannel"``.
        embedding: pretrained word vectors, Tensor[V, d] (its ``padding_idx`` row is replaced by zeros).
        windows: filter widths ``h`` in words.
        maps: feature maps per width ``m``.
        dropout: dropout rate on the pooled features.
        max_norm: bound on the L2 norm of each output weight row, enforced by :meth:`apply_max_norm` (None: no bound).
        padding_idx: the token id used for padding.

    Shapes:
        tokens (LongTensor[N, T]), T >= 1 -> Tensor[N, num_classes]
    """

    def __init__(
        self,
        *,
        vocab_size: int | None = None,
        embed_dim: int | None = None,
        num_classes: int = 2,
        mode: str = "non-static",
        embedding: Tensor | None = None,
        windows: tuple[int, ...] = (3, 4, 5),
        maps: int = 100,
        dropout: float = 0.5,
        max_norm: float | None = 3.0,
        padding_idx: int = 0,
    ):
        super().__init__()
        where = type(self).__name__
        mode = check_choice(where, "mode", mode, MODES)
        num_classes = check_num_classes(where, num_classes, allow_zero=False)
        windows = check_ints(where, "windows", windows)
        maps = check_int(where, "maps", maps)
        dropout = check_rate(where, "dropout", dropout)
        if max_norm is not None:
            max_norm = check_float(where, "max_norm", max_norm, low=0.0, high=math.inf, low_open=True)
        vectors = _initial_vectors(vocab_size, embed_dim, mode, embedding)
        vocab_size, embed_dim = vectors.shape
        padding_idx = check_int(
            where, "padding_idx", padding_idx, low=0, high=vocab_size - 1, note=f" (vocab_size={vocab_size})"
        )
        self.vocab_size, self.embed_dim, self.num_classes = vocab_size, embed_dim, num_classes
        self.mode, self.windows, self.maps, self.max_norm, self.padding_idx = mode, windows, maps, max_norm, padding_idx

        self.embed = _embedding(vectors, padding_idx, trainable=mode != "static")
        self.static_embed = _embedding(vectors, padding_idx, trainable=False) if mode == "multichannel" else None
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, maps, h) for h in windows)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(len(windows) * maps, num_classes)

    def features(self, tokens: Tensor) -> Tensor:
        """The max-over-time pooled feature vector ``z``, LongTensor[N, T] -> Tensor[N, len(windows) * maps]."""
        pad = max(self.windows) - 1
        tokens = F.pad(tokens, (pad, pad), value=self.padding_idx)  # (N, T + 2 pad)
        x = self.embed(tokens).transpose(1, 2)  # (N, d, T + 2 pad)
        x_static = self.static_embed(tokens).transpose(1, 2) if self.static_embed is not None else None
        pooled = []
        for conv in self.convs:
            c = conv(x)  # (N, m, T + 2 pad - h + 1)
            if x_static is not None:
                c = c + F.conv1d(x_static, conv.weight)  # the same filter on the static channel, bias once
            pooled.append(F.relu(c).amax(dim=2))  # max over time: (N, m)
        return torch.cat(pooled, dim=1)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc(self.dropout(self.features(tokens)))

    @torch.no_grad()
    def apply_max_norm(self) -> None:
        """Rescale each row of the output weight to L2 norm ``<= max_norm`` (Kim's constraint; call after each step)."""
        if self.max_norm is not None:
            self.fc.weight.copy_(torch.renorm(self.fc.weight, p=2, dim=0, maxnorm=self.max_norm))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, windows={self.windows}, maps={self.maps}, max_norm={self.max_norm}"


def _embedding(vectors: Tensor, padding_idx: int, *, trainable: bool) -> nn.Embedding:
    """An embedding holding a copy of ``vectors`` with a zero padding row (no gradient reaches that row)."""
    embed = nn.Embedding(*vectors.shape, padding_idx=padding_idx)
    with torch.no_grad():
        embed.weight.copy_(vectors)
        embed.weight[padding_idx] = 0.0
    embed.weight.requires_grad_(trainable)
    return embed


def _initial_vectors(vocab_size: int | None, embed_dim: int | None, mode: str, embedding: Tensor | None) -> Tensor:
    """The starting word vectors, Tensor[V, d]: a copy of ``embedding`` or ``U[-0.25, 0.25]`` draws."""
    where = KimCNN.__name__
    if vocab_size is not None:
        vocab_size = check_int(where, "vocab_size", vocab_size, high=MAX_VOCAB)
    if embed_dim is not None:
        embed_dim = check_int(where, "embed_dim", embed_dim)
    if embedding is None:
        vocab_size = DEFAULT_VOCAB if vocab_size is None else vocab_size
        embed_dim = DEFAULT_DIM if embed_dim is None else embed_dim
        return torch.empty(vocab_size, embed_dim).uniform_(-UNKNOWN_RANGE, UNKNOWN_RANGE)
    if mode == "rand":
        raise ValueError(
            "KimCNN: mode='rand' initialises the word vectors at random; pass embedding=None or another mode"
        )
    if not isinstance(embedding, Tensor) or not embedding.is_floating_point():
        raise InputTypeError(f"KimCNN: embedding must be a floating-point Tensor[V, d], got {type(embedding).__name__}")
    if embedding.dim() != 2:
        raise ValueError(f"KimCNN: embedding must be Tensor[V, d], got shape {tuple(embedding.shape)}")
    rows, dim = embedding.shape
    if vocab_size is not None and vocab_size != rows:
        raise ValueError(f"KimCNN: vocab_size={vocab_size} but the embedding has {rows} rows")
    if embed_dim is not None and embed_dim != dim:
        raise ValueError(f"KimCNN: embed_dim={embed_dim} but the embedding has {dim} columns")
    return embedding.detach().to(torch.get_default_dtype())


@register_model(task="text", input_size=(64,))
def kim_cnn(**kwargs) -> KimCNN:
    return KimCNN(**kwargs)


__all__ = ["KimCNN", "MODES", "kim_cnn"]

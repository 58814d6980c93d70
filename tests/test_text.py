"""Text for classification: the tokenizer, the vocabulary (0 padding, 1 unknown, deterministic ties), loading a folder
in the aclImdb layout or a CSV, empty documents, and the word-order corpus the classify tests train on."""
from __future__ import annotations

import numpy as np
import pytest

from gru_xp.errors import UserError
from gru_xp.text import PAD, UNK, Vocabulary, load_text, negation_corpus, tokenize, write_text_folder


def test_tokenize():
    assert tokenize("This movie WASN'T good.<br /><br />Not at all!! 3.5") == \
        ["this", "movie", "wasn't", "good", ".", "not", "at", "all", "!", "!", "3", ".", "5"]
    assert tokenize("  ") == [] and tokenize("a_b") == ["a", "_", "b"]


def test_vocabulary():
    v = Vocabulary.build([["b", "a", "c", "b"], ["c", "d", "a"]], 4)
    assert v.words == ["a", "b"] and v.size == 4  # a, b, c tie at 2: alphabetical
    ids, lengths = v.encode_many([["b", "zzz", "a"], ["a"]], max_length=2)
    assert ids.tolist() == [[3, UNK], [2, PAD]] and lengths.tolist() == [2, 1]
    assert Vocabulary.from_dict(v.to_dict()).words == v.words
    bow = v.bag_of_words(ids)
    assert bow.tolist() == [[0, 1, 0, 1], [0, 0, 1, 0]]
    for bad in (1, 0, True, 2.5):
        with pytest.raises(UserError, match="vocab-size must be at least 2"):
            Vocabulary.build([["a"]], bad)
    assert Vocabulary.build([["a"]], 2).encode(["a"]) == [UNK]


def test_folder_layout_and_unsup(tmp_path):
    write_text_folder(tmp_path / "train", [("good film", "pos"), ("bad film", "neg"), ("no label", "unsup")])
    (tmp_path / "train" / "urls_pos.txt").write_text("http://x")  # a file beside the class folders: ignored
    d = load_text(tmp_path / "train")
    assert d.labels == ["neg", "pos"] and d.texts == ["bad film", "good film"]
    d = load_text(tmp_path / "train", classes=["pos", "unsup"])
    assert d.labels == ["pos", "unsup"]
    with pytest.raises(UserError, match="not found"):
        load_text(tmp_path / "train", classes=["neutral"])


def test_csv(tmp_path):
    (tmp_path / "a.csv").write_text('review,sentiment\n"Great, really.",pos\nAwful,neg\n')
    d = load_text(tmp_path / "a.csv", text_col="review", label_col="sentiment")
    assert d.texts == ["Great, really.", "Awful"] and d.labels == ["pos", "neg"] and d.names[0].endswith(":2")
    with pytest.raises(UserError, match="no text column 'text'"):
        load_text(tmp_path / "a.csv")
    with pytest.raises(UserError, match="no label column 'label'"):
        load_text(tmp_path / "a.csv", text_col="review")
    assert load_text(tmp_path / "a.csv", text_col="review", need_labels=False).labels is None
    (tmp_path / "b.csv").write_text('review;sentiment\n"Great; really, 1,5 stars";pos\nAwful;neg\n')  # ; separated
    d = load_text(tmp_path / "b.csv", text_col="review", label_col="sentiment")
    assert d.texts == ["Great; really, 1,5 stars", "Awful"] and d.labels == ["pos", "neg"]


def test_empty_documents_are_user_errors(tmp_path):
    write_text_folder(tmp_path / "f", [("fine", "pos"), (" \n\t ", "neg")])
    with pytest.raises(UserError, match=r"empty document .*neg.*00001.txt"):
        load_text(tmp_path / "f")
    (tmp_path / "b.csv").write_text("text,label\nok,pos\n,neg\n")
    with pytest.raises(UserError, match=r"empty document b.csv:3"):
        load_text(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("text,label\nok,\n")
    with pytest.raises(UserError, match="empty label"):
        load_text(tmp_path / "c.csv")


def test_negation_corpus_hides_the_label_from_a_bag_of_words():
    """Every review: one positive word, one negative word, one 'not' right before one of them; the label is
    which one. Counted per review, the words say nothing: same counts in both classes."""
    from gru_xp.text import NEGATIVE, POSITIVE

    docs = negation_corpus(400, seed=1)
    labels = np.array([lab for _, lab in docs])
    assert 0.4 < np.mean(labels == "pos") < 0.6
    for text, label in docs:
        toks = tokenize(text)
        assert sum(t in POSITIVE for t in toks) == 1 and sum(t in NEGATIVE for t in toks) == 1
        assert toks.count("not") == 1
        after = toks[toks.index("not") + 1]
        assert (label == "neg") == (after in POSITIVE)
    assert negation_corpus(5, 3) == negation_corpus(5, 3)

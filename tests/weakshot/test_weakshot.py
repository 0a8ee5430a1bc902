"""Weak-shot learning: the similarity net learned on base classes tells same from different pairs (also of novel
classes it never saw), its weights rank injected noise below clean items, the graph term matches a hand
computation, and the similarity weights beat plain training on a noisy toy set (the graph term is measured by
the benchmark, not asserted here: on a toy set of 72 test items its effect is within the noise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.weakshot.conftest import FAST, base_and_similarity, fake_step
from transferkit.errors import DataError
from transferkit.weakshot import (NovelSet, WEAKSHOT_METHODS, inject_noise, split_from_web_labels, train_novel,
                                  weight_auc)
from transferkit.weakshot.noise import OUTSIDE
from transferkit.weakshot.objectives import GraphRegularizer, relax
from transferkit.weakshot.similarity import SimilarityNet, heldout_pairs


@pytest.fixture(scope="module")
def trained(with_outliers):
    return base_and_similarity(with_outliers)


def test_the_similarity_net_beats_chance_on_held_out_base_pairs_and_on_novel_pairs(with_outliers, trained):
    _, fit = trained
    assert fit.scores["pair_balanced_accuracy"] > 0.8  # held-out base pairs, chance 0.5
    sp = with_outliers.split
    clean = sp.novel_test  # novel classes the net never saw
    pairs, same = heldout_pairs(with_outliers.X[clean], sp.novel_y_test, 600, seed=1)
    with torch.no_grad():
        pred = fit.net.eval()(torch.as_tensor(pairs)).argmax(1).numpy() == 1
    balanced = 0.5 * ((pred & same).sum() / same.sum() + (~pred & ~same).sum() / (~same).sum())
    assert balanced > 0.72


def test_weights_rank_injected_outliers_below_clean_samples(with_outliers, trained):
    _, fit = trained
    sp = with_outliers.split
    novel = NovelSet(with_outliers.X[sp.novel_train], sp.novel_noisy, fit.net, sp.clean, 0)
    sim = WEAKSHOT_METHODS.create("simtrans").weights(novel)
    dens = WEAKSHOT_METHODS.create("density").weights(novel)
    outlier = sp.novel_true == OUTSIDE
    assert outlier.sum() > 20
    assert weight_auc(sim, ~outlier) > 0.85
    assert weight_auc(dens, ~outlier) > 0.7
    for c in np.unique(sp.novel_noisy):  # mean 1 within every class
        assert sim[sp.novel_noisy == c].mean() == pytest.approx(1.0)
    assert np.all(WEAKSHOT_METHODS.create("plain").weights(novel) == 1)
    oracle = WEAKSHOT_METHODS.create("oracle").weights(novel)
    assert np.all(oracle[outlier] == 0) and np.all(oracle[~outlier] > 0)


def test_the_graph_term_matches_a_hand_computation():
    torch.manual_seed(0)
    net = SimilarityNet(4, hidden=8).eval()
    Z = torch.randn(6, 4)
    term = GraphRegularizer(net, Z.numpy(), alpha=0.1, mu=-4.0)
    f = torch.randn(3, 5, requires_grad=True)
    idx = torch.tensor([4, 0, 2])

    got = term(fake_step(idx, torch.tensor([0, 1, 0]), f))["graph"]
    P = net.matrix(Z[idx])
    A = (torch.exp(-4 * P) - 1) / (np.exp(-4) - 1)
    D = torch.cdist(f.detach(), f.detach()) ** 2
    assert float(got.detach()) == pytest.approx(float(0.1 * (A * D).mean()), rel=1e-4)
    assert float(relax(torch.tensor(0.5), -4.0)) == pytest.approx((np.exp(-2) - 1) / (np.exp(-4) - 1))
    # the reference schedule: off for the first half, then every other epoch
    late = GraphRegularizer(net, Z.numpy(), alpha=0.1, mu=-4.0, start_epoch=2, every=2)
    assert [late.active(e) for e in range(6)] == [False, False, True, False, True, False]
    assert float(late(fake_step(idx, torch.tensor([0, 1, 0]), f))["graph"].detach()) == 0.0
    masked = GraphRegularizer(net, Z.numpy(), alpha=0.1, mu=-4.0, eye=0.0)
    A0 = masked.similarities(idx, torch.tensor([0, 1, 0]))
    assert float(A0[0, 1]) == 0.0 and float(A0[0, 2]) > 0


def test_similarity_weights_beat_plain_training_on_noisy_labels(flipped_fit):
    flipped, base, fit = flipped_fit
    plain = train_novel(flipped, "plain", base, None, FAST, seed=0)
    weighted = train_novel(flipped, "simtrans-weights", base, fit.net, FAST, seed=0)
    oracle = train_novel(flipped, "oracle", base, None, FAST, seed=0)
    assert weighted.weights_auc > 0.7 and plain.weights_auc is None  # flips rank below clean items
    # the transferred weights recover part of the gap between plain training and the clean subset
    assert weighted.accuracy >= plain.accuracy + 0.03, (weighted.accuracy, plain.accuracy)
    assert oracle.accuracy >= weighted.accuracy


def test_injected_noise_is_what_was_asked():
    from tests.weakshot.conftest import blobs

    X, y = blobs()
    classes = [f"c{i}" for i in range(16)]
    for kind in ("flip", "outlier", "mixed"):
        sp = inject_noise(y, classes, classes[:8], classes[8:12], rate=0.3, kind=kind,
                          outlier_rows=np.flatnonzero(y >= 12), seed=3)
        noisy = sp.novel_true != sp.novel_noisy
        assert noisy.mean() == pytest.approx(0.3, abs=0.03)
        flips = noisy & (sp.novel_true >= 0)
        outs = sp.novel_true == OUTSIDE
        assert flips.sum() == {"flip": noisy.sum(), "outlier": 0, "mixed": sp.noise["flipped"]}[kind]
        assert np.all(y[sp.novel_train[outs]] >= 12)  # outliers come from outside base and novel
        assert not set(sp.novel_test) & set(sp.novel_train)  # the test split stays clean and apart
        assert np.all(np.isin(y[sp.novel_test], [8, 9, 10, 11])) and np.all(y[sp.base_train] < 8)
    with pytest.raises(DataError, match="outliers"):
        inject_noise(y, classes, classes[:8], classes[8:12], rate=0.3, kind="outlier", seed=0)


def test_web_labels_split():
    classes = ["a", "b", "c", "d"]
    y_true = np.array([0, 0, 1, 1, 2, 2, 3, 3, -1, 0, 2, -1])
    web = np.array([-1, -1, -1, -1, -1, -1, -1, -1, 2, 3, 3, 2])
    sp = split_from_web_labels(y_true, web, classes, ["a", "b"], ["c", "d"], seed=0)
    assert sorted(sp.novel_train) == [8, 9, 10, 11] and sorted(sp.novel_test) == [4, 5, 6, 7]
    assert sp.clean is None  # two web items were never checked
    assert sp.noise["measured_rate"] == pytest.approx(1.0)  # item 9 (an 'a' under 'd'), item 10 (a 'c' under 'd')


@pytest.fixture(scope="module")
def four_classes(tmp_path_factory):
    """A tiny image folder with 4 classes of 14 images."""
    from PIL import ImageOps

    from tests.conftest import make_image

    root = tmp_path_factory.mktemp("four")
    for c, name in enumerate(["squares", "discs", "stripes", "negatives"]):
        (root / name).mkdir(parents=True)
        for i in range(14):
            img = make_image(c if c < 3 else 0, seed=100 * c + i)
            (ImageOps.invert(img) if c == 3 else img).save(root / name / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("end_to_end", [False, True], ids=["probe", "end-to-end"])
def test_fit_weakshot_writes_a_run_that_predicts_like_it_scored(four_classes, tmp_path, end_to_end):
    """The whole pipeline on a tiny image folder (2 base, 2 novel classes, flips injected), on cached features and
    end to end: the saved SimTrans model, read back by load_run, predicts the novel test items as the run
    recorded."""
    import pandas as pd

    from tests.conftest import TINY
    from transferkit import load_run
    from transferkit.weakshot import WeakShotConfig, fit_weakshot

    root = four_classes
    cfg = WeakShotConfig(hidden=16, base_epochs=5, sim_steps=20, sim_eval_every=10, sim_batch_size=12,
                         novel_epochs=5, batch_size=16, image_size=32, e2e_base_epochs=1, e2e_epochs=2,
                         e2e_batch_size=8, num_workers=0)
    res = fit_weakshot(str(root), base="squares,discs", novel="stripes,negatives", backbone=TINY, noise=0.3,
                       methods=["plain", "simtrans", "oracle"] if not end_to_end else ["simtrans"], config=cfg,
                       out=tmp_path / "run", num_workers=0, end_to_end=end_to_end)
    assert [r.method for r in res.results] == (["plain", "simtrans", "oracle"] if not end_to_end else ["simtrans"])
    assert res.split["noise"]["measured_rate"] == pytest.approx(0.3, abs=0.1)
    preds = pd.read_csv(res.out / "predictions.csv")
    run = load_run(res.out)
    assert run.classes == ["stripes", "negatives"] and run.kind == ("finetuned" if end_to_end else "probe")
    out = run.predict(list(preds["input"]), num_workers=0)
    assert (out["prediction"].to_numpy() == preds["simtrans"].to_numpy()).all()


def test_web_labels_from_a_table(four_classes, tmp_path):
    """A table with checked labels (empty for web items) and a web-label column: base training, the noisy novel
    set and the clean novel test split come from the right rows; the noise is measured where labels were checked."""
    import pandas as pd

    from tests.conftest import TINY
    from transferkit.weakshot import prepare_weakshot

    rows = []
    for name in ["squares", "discs", "stripes", "negatives"]:
        for i, f in enumerate(sorted((four_classes / name).iterdir())):
            if name in ("squares", "discs"):
                rows.append({"path": str(f), "label": name, "web": None})
            elif i < 6:
                rows.append({"path": str(f), "label": name, "web": None})  # checked: the novel test split
            else:  # web items: two of each class filed under the other class, half of them never checked
                web = name if i < 11 else ("negatives" if name == "stripes" else "stripes")
                rows.append({"path": str(f), "label": name if i % 2 else None, "web": web})
    p = tmp_path / "web.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    wd = prepare_weakshot(p, TINY, base="squares,discs", noisy_labels="web", num_workers=0)
    sp = wd.split
    assert sp.novel_classes == ["negatives", "stripes"] and len(sp.novel_train) == 16 and len(sp.novel_test) == 12
    assert len(sp.base_train) + len(sp.base_val) == 28
    assert sp.clean is None  # some web items were never checked
    checked = sp.novel_true >= 0
    assert sp.noise["checked"] == int(checked.sum()) == 8
    assert sp.noise["measured_rate"] == pytest.approx(np.mean(sp.novel_true[checked] != sp.novel_noisy[checked]))


def test_cli_weakshot_runs_and_writes_what_it_prints(four_classes, tmp_path):
    """The command's success path: the flags reach the run (its recorded settings), the table names every method,
    and the files it promises are there."""
    import json

    from tests.conftest import TINY
    from tests.test_cli import tk

    out = tmp_path / "ws"
    p = tk("weakshot", four_classes, "-b", TINY, "--base", "squares,discs", "--novel", "stripes,negatives",
           "--noise", "0.3", "--noise-kind", "flip", "--methods", "plain,simtrans", "--epochs", "3", "--drop", "0.2",
           "--drop-rule", "lowest", "--alpha", "0.5", "--graph-on", "features", "--seed", "1", "--workers", "0",
           "--out", out, "-q")
    assert p.returncode == 0, p.stderr
    assert "plain" in p.stdout and "simtrans" in p.stdout and "Traceback" not in p.stderr
    rec = json.loads((out / "weakshot.json").read_text())
    cfg = rec["config"]
    assert (cfg["novel_epochs"], cfg["sim_drop"], cfg["sim_drop_rule"], cfg["alpha"], cfg["graph_on"]) == \
        (3, 0.2, "lowest", 0.5, "features")
    assert [r["method"] for r in rec["results"]] == ["plain", "simtrans"]
    assert (out / "predictions.csv").exists() and (out / "weights.csv").exists()

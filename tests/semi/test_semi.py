"""Semi-supervised training: each method learns from unlabelled data where it carries the signal, the EMA of the
weights, resumption with the masks' state, and the classic baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.errors import DataError, TransferkitError
from transferkit.semi.baselines import label_spreading, self_training
from transferkit.semi.fit import SemiConfig, train_semi_head
from transferkit.train.loop import LoopSettings, Plan, run_loop
from transferkit.train.objectives import CrossEntropy
from transferkit.train.streams import TensorStream

C, D = 3, 16


def _blobs(rng, n, m=3.0, s=0.7):
    """Three tight, well-separated clusters (class c around m * e_c): the unlabelled pool shows where they are."""
    y = np.arange(n) % C
    X = rng.normal(0, s, (n, D))
    X[np.arange(n), y] += m
    return X.astype(np.float32), y


def _banks(X, rng, draws=2):
    """A weak view (small noise) and a strong one (larger noise) of each item, ``draws`` of each."""
    return {"eval": X,
            "weak": np.stack([X + rng.normal(0, 0.1, X.shape).astype(np.float32) for _ in range(draws)]),
            "strong": np.stack([X + rng.normal(0, 0.5, X.shape).astype(np.float32) for _ in range(draws)])}


@pytest.fixture(scope="module")
def toy():
    """One label per class, and each labelled item atypical: pushed by 4 along a direction of its own that the
    clusters do not vary in. A head on the three labels alone leans on those directions (about 58 % on test); the
    unlabelled pool carries the clusters, so a method that uses it must move the boundary between them."""
    rng = np.random.default_rng(0)
    X, y = _blobs(rng, 200)
    Xt, yt = _blobs(rng, 400)
    lab, unl = np.arange(C), np.arange(C, len(y))
    U = rng.normal(0, 1, (C, D))
    U[:, :C] = 0
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    X[lab] += 4.0 * U[y[lab]].astype(np.float32)
    return {"bl": _banks(X[lab], rng), "yl": y[lab], "bu": _banks(X[unl], rng), "Xt": Xt, "yt": yt,
            "X": X, "y": y, "lab": lab, "unl": unl}


# the objectives are checked on the first version's head (linear on standardised features, FixMatch's labelled
# views, no alignment): on this toy it leans on the labelled items' atypical directions, so only the unlabelled pool
# can fix it. The default cosine head starts at the class means of CL2N features centred on the pool, which this
# toy already separates (96.5 % from the labels alone): it is checked by the tests further down.
CFG = dict(steps=150, eval_every=150, batch_size=4, mu=8, hidden=(), ema_decay=0.99, head="linear", init="random",
           labelled_views=("weak",), align=False, ensemble=1)


def _accuracy(head, X, y) -> float:
    with torch.no_grad():
        return float((head(torch.as_tensor(X)).argmax(1).numpy() == y).mean())


@pytest.fixture(scope="module")
def labelled_only(toy):
    fit = train_semi_head(toy["bl"], toy["yl"], toy["bu"], "fixmatch", n_classes=C, config=SemiConfig(**CFG),
                          lambda_u=0.0)
    return _accuracy(fit.head, toy["Xt"], toy["yt"])


# FixMatch's fixed 0.95 rarely fires on a linear toy head at one label per class (its mask stays near empty: see
# the next test), so its objective is checked at tau 0.7; FlexMatch, FreeMatch and SoftMatch run with their papers'
# defaults.
@pytest.mark.parametrize("method,params", [("fixmatch", {"tau": 0.7}), ("flexmatch", {}), ("freematch", {}),
                                           ("softmatch", {})])
def test_each_method_learns_from_the_unlabelled_pool(toy, labelled_only, method, params):
    fit = train_semi_head(toy["bl"], toy["yl"], toy["bu"], method, n_classes=C, config=SemiConfig(**CFG), **params)
    acc = _accuracy(fit.head, toy["Xt"], toy["yt"])
    assert acc >= labelled_only + 0.1, (method, acc, labelled_only)
    assert 0 < fit.history[-1]["metric_mask_rate"] <= 1


def test_flexmatch_admits_more_of_the_pool_than_a_fixed_threshold(toy):
    """The curriculum's point (Zhang et al. 2021): classes still learning get lower thresholds, so more of the pool
    is used than under FixMatch's fixed 0.95."""
    rates = {}
    for method in ("fixmatch", "flexmatch"):
        fit = train_semi_head(toy["bl"], toy["yl"], toy["bu"], method, n_classes=C, config=SemiConfig(**CFG))
        rates[method] = fit.history[-1]["metric_mask_rate"]
    assert rates["flexmatch"] > rates["fixmatch"] + 0.2, rates


def test_validation_logs_pseudo_label_accuracy_and_thresholds_from_validation_labels_only(toy):
    rng = np.random.default_rng(5)
    Xv, yv = toy["X"][toy["unl"][:30]], toy["y"][toy["unl"][:30]]
    fit = train_semi_head(toy["bl"], toy["yl"], toy["bu"], "flexmatch", n_classes=C, val=(Xv, yv),
                          config=SemiConfig(**{**CFG, "eval_every": 50}))
    assert len(fit.history) == 3
    last = fit.history[-1]
    probs = torch.softmax(fit.head(torch.as_tensor(Xv)).detach(), 1)  # the EMA head the last evaluation used
    assert last["val_accuracy"] == pytest.approx(float((probs.argmax(1).numpy() == yv).mean()))
    # by hand: the items whose confidence clears the threshold of their predicted class, and how many are right
    thresholds = np.asarray(last["thresholds"])
    conf, pred = probs.max(1).values.numpy(), probs.argmax(1).numpy()
    assert len(thresholds) == C and np.abs(conf - thresholds[pred]).min() > 1e-3  # no item on the (rounded) edge
    sel = conf >= thresholds[pred]
    assert last["val_mask_rate"] == pytest.approx(sel.mean())
    assert last["val_pseudo_accuracy"] == (pytest.approx((pred[sel] == yv[sel]).mean()) if sel.any() else None)
    del rng


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_head_and_mask_state(toy, tmp_path):
    cfg = SemiConfig(**{**CFG, "steps": 60, "eval_every": 20})
    val = (toy["X"][toy["unl"][:30]], toy["y"][toy["unl"][:30]])  # thresholds are logged at evaluations
    full = train_semi_head(toy["bl"], toy["yl"], toy["bu"], "flexmatch", n_classes=C, config=cfg, val=val,
                           run_dir=tmp_path / "full")

    def stop(info):
        if info["epoch"] == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_semi_head(toy["bl"], toy["yl"], toy["bu"], "flexmatch", n_classes=C, config=cfg, val=val,
                        run_dir=tmp_path / "cut", callbacks=(stop,))
    resumed = train_semi_head(toy["bl"], toy["yl"], toy["bu"], "flexmatch", n_classes=C, config=cfg, val=val,
                              run_dir=tmp_path / "cut", resume=True)
    for k, v in full.head.state_dict().items():
        assert torch.equal(v, resumed.head.state_dict()[k]), k
    assert [r["thresholds"] for r in full.history] == [r["thresholds"] for r in resumed.history]
    assert [r["metric_mask_rate"] for r in full.history] == [r["metric_mask_rate"] for r in resumed.history]


def test_bad_settings_and_inputs_fail_with_a_clear_message(toy):
    with pytest.raises(TransferkitError, match="steps must be an integer >= 1"):
        SemiConfig(steps=0).validate()
    with pytest.raises(TransferkitError, match="optimizer must be 'sgd' or 'adamw'"):
        SemiConfig(optimizer="adam").validate()
    with pytest.raises(DataError, match="3 labelled items but 2 labels"):
        train_semi_head(toy["bl"], toy["yl"][:2], toy["bu"], n_classes=C)
    empty = {k: v[..., :0, :] for k, v in toy["bu"].items()}
    with pytest.raises(DataError, match="unlabelled pool is empty"):
        train_semi_head(toy["bl"], toy["yl"], empty, n_classes=C)


def test_classic_baselines_run_on_the_same_split(toy):
    """Both baselines learn something from one random label per class of the clusters (well above chance)."""
    rng = np.random.default_rng(1)
    X, y = _blobs(rng, 200)
    lab, unl = np.arange(C), np.arange(C, len(y))
    for fn, floor in ((self_training, 1 / C + 0.1), (label_spreading, 1 / C + 0.2)):
        acc = float((fn(X[lab], y[lab], X[unl]).predict(toy["Xt"]) == toy["yt"]).mean())
        assert acc > floor, fn.__name__
    with pytest.raises(DataError, match="fewer than 2 classes"):
        self_training(X[:1], y[:1], X[unl])


def test_the_loop_evaluates_and_returns_the_moving_average_of_the_weights():
    """Raw weights after 1, 2, 3 steps (three runs of the same seed) give the expected average after 3 steps with
    decay 0.5 and the warm-up min(decay, (1 + t) / (10 + t))."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 2, 32)

    def run(steps, ema):
        def factory(fabric):
            torch.manual_seed(0)
            model = torch.nn.Linear(4, 2)
            return Plan(model=_Wrap(model), objective=CrossEntropy("labelled"),
                        streams={"labelled": TensorStream("labelled", X, y, batch_size=8)},
                        param_groups=[{"params": list(model.parameters()), "lr": 0.5, "weight_decay": 0.0}],
                        optimizer=lambda g: torch.optim.SGD(g, lr=0.5))
        r = run_loop(factory, LoopSettings(epochs=1, steps_per_epoch=steps, seed=0, accelerator="cpu",
                                           ema_decay=ema))
        return {k: v.clone() for k, v in r.model.state_dict().items()}

    torch.manual_seed(0)
    w0 = {f"net.{k}": v for k, v in torch.nn.Linear(4, 2).state_dict().items()}
    raw = [run(k, None) for k in (1, 2, 3)]
    e = {k: v.clone() for k, v in w0.items()}
    for t, w in enumerate(raw, start=1):
        d = min(0.5, (1 + t) / (10 + t))
        e = {k: d * e[k] + (1 - d) * w[k] for k in e}
    got = run(3, 0.5)
    for k in e:
        torch.testing.assert_close(got[k], e[k])
    assert not torch.allclose(got["net.weight"], raw[-1]["net.weight"])


class _Wrap(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, return_features=False):
        out = self.net(x)
        return (out, x) if return_features else out


def test_distribution_alignment_matches_a_hand_computation():
    """ReMixMatch's alignment: p * target / p_model, renormalised; the running mean moves with momentum 0.999 and
    starts at the labelled class shares."""
    from transferkit.semi import create_semi_objective
    from transferkit.semi.objective import align_distribution

    p = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    got = align_distribution(p, torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.25, 0.5]))
    raw = np.array([[0.6 * 0.5, 0.3 * 1.0, 0.1 * 2.0], [0.2 * 0.5, 0.2 * 1.0, 0.6 * 2.0]])
    np.testing.assert_allclose(got.numpy(), raw / raw.sum(1, keepdims=True), rtol=1e-6)

    obj = create_semi_objective("fixmatch", 10, 3, 100, align=True)
    assert obj.config()["align"] is True
    obj.set_target([2, 1, 1])  # labelled counts -> shares 0.5, 0.25, 0.25
    out = obj._aligned(p, lambda t: t)
    p_model = 0.999 * np.array([0.5, 0.25, 0.25]) + 0.001 * p.numpy().mean(0)
    np.testing.assert_allclose(obj.p_model.numpy(), p_model, rtol=1e-6)
    want = p.numpy() * (np.array([0.5, 0.25, 0.25]) / p_model)
    np.testing.assert_allclose(out.numpy(), want / want.sum(1, keepdims=True), rtol=1e-5)
    with pytest.raises(TransferkitError, match="class shares must be a non-negative vector"):
        obj.set_target([1.0])


def test_usb_alignment_starts_at_the_first_batch_and_moves_with_its_momentum():
    """align_start='batch' (USB's DistAlignEMAHook): p_model is the first batch's mean probabilities, then a running
    mean at the given momentum; the plan passes SemiConfig's momentum, or the run-scaled one for None."""
    from transferkit.semi import create_semi_objective
    from transferkit.semi.fit import SemiConfig, _SemiPlan

    p1 = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    p2 = torch.tensor([[0.1, 0.8, 0.1]])
    target = np.full(3, 1 / 3)
    obj = create_semi_objective("softmatch", 10, 3, 100, align=True)
    obj.set_target([2, 2, 2])
    obj.set_alignment("batch", 0.9)
    out = obj._aligned(p1, lambda t: t)
    first = p1.numpy().mean(0)  # not the target: the batch's mean
    np.testing.assert_allclose(obj.p_model.numpy(), first, rtol=1e-6)
    want = p1.numpy() * target / first
    np.testing.assert_allclose(out.numpy(), want / want.sum(1, keepdims=True), rtol=1e-5)
    obj._aligned(p2, lambda t: t)
    np.testing.assert_allclose(obj.p_model.numpy(), 0.9 * first + 0.1 * p2.numpy().mean(0), rtol=1e-6)
    assert obj.config()["align_start"] == "batch" and obj.config()["align_momentum"] == 0.9
    with pytest.raises(TransferkitError, match="alignment's start must be one of target, batch"):
        obj.set_alignment("first")

    rng = np.random.default_rng(0)
    banks = {"eval": rng.normal(size=(6, 4)).astype(np.float32), "weak": rng.normal(size=(2, 6, 4)).astype(np.float32),
             "strong": rng.normal(size=(2, 6, 4)).astype(np.float32)}
    y = np.array([0, 0, 1, 1, 2, 2])
    for momentum, want_m in ((None, 0.98), (0.5, 0.5)):
        cfg = SemiConfig(steps=1000, align_start="batch", align_momentum=momentum, graph_weight=0)
        plan = _SemiPlan(banks, y, banks, None, "fixmatch", {}, 3, cfg)(None)
        term = plan.objective.terms[1]
        assert (term.align_start, term.align_momentum) == ("batch", pytest.approx(want_m))
    for method, start in (("softmatch", "batch"), ("fixmatch", "target"), ("freematch", "target")):
        plan = _SemiPlan(banks, y, banks, None, method, {}, 3, SemiConfig(align_start=None, graph_weight=0))(None)
        assert plan.objective.terms[1].align_start == start, method  # each method's own (SoftMatch: USB's)


def test_the_cosine_head_starts_at_the_class_means_of_cl2n_features(tmp_path):
    """init='prototypes': logits are 30 * cos(x - centre, class mean of the labelled CL2N features), the centre the
    mean of labelled and unlabelled features; it saves and loads as a head module with the same outputs. The default
    head is this cosine head started from the logistic rows (tested below)."""
    from transferkit.heads.modules import load_head, save_head
    from transferkit.semi.fit import _make_head

    rng = np.random.default_rng(3)
    Xl, yl = rng.normal(size=(6, 5)).astype(np.float32), np.array([0, 0, 1, 1, 2, 2])
    Xu = rng.normal(size=(20, 5)).astype(np.float32) + 1.0
    default = SemiConfig().validate()
    assert (default.head, default.init, default.scale, default.align) == ("cosine", "logistic", 30.0, True)
    cfg = SemiConfig(init="prototypes").validate()
    head = _make_head(cfg, np.concatenate([Xl, Xu]), Xl, yl, 3)
    c = np.concatenate([Xl, Xu]).mean(0)
    z = (Xl - c) / np.linalg.norm(Xl - c, axis=1, keepdims=True)
    P = np.stack([z[yl == k].mean(0) for k in range(3)])
    Xt = rng.normal(size=(7, 5)).astype(np.float32)
    zt = (Xt - c) / np.linalg.norm(Xt - c, axis=1, keepdims=True)
    want = 30 * zt @ (P / np.linalg.norm(P, axis=1, keepdims=True)).T
    with torch.no_grad():
        got = head(torch.as_tensor(Xt)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    info = save_head(tmp_path, head)
    with torch.no_grad():
        np.testing.assert_allclose(load_head(tmp_path, info)(torch.as_tensor(Xt)).numpy(), got, rtol=1e-6)


@pytest.mark.parametrize("kwargs,needle", [
    ({"head": "mlp"}, "head must be one of cosine, linear"),
    ({"init": "zeros"}, "init must be one of prototypes, logistic, random"),
    ({"head": "linear"}, "init='logistic' needs head='cosine'"),
    ({"hidden": (8,)}, "need head='linear'"),
    ({"labelled_views": ("weak", "rotated")}, "labelled_views must be a non-empty subset"),
    ({"scale": 0}, "scale must be a positive number"),
    ({"align_start": "first"}, "align_start must be one of target, batch or None"),
    ({"align_momentum": 1.0}, "align_momentum must be in")])
def test_bad_head_settings_fail_with_a_clear_message(kwargs, needle):
    with pytest.raises(TransferkitError, match=needle):
        SemiConfig(**kwargs).validate()


def test_the_logistic_start_puts_a_logistic_probe_on_cl2n_features_into_the_cosine_head():
    """init='logistic': the rows are scikit-learn's no-intercept logistic regression (C=100) on the labelled CL2N
    features, unit-normalised; a class without labels keeps its class-mean row. On a toy whose classes differ most along
    a direction in which they also vary widely, the class means misclassify where the logistic rows do not."""
    from sklearn.linear_model import LogisticRegression

    from transferkit.semi.fit import _make_head, logistic_rows

    rng = np.random.default_rng(5)
    Xl = rng.normal(size=(9, 6))
    yl = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    model = LogisticRegression(C=100.0, fit_intercept=False, max_iter=2000).fit(Xl, yl)
    want = model.coef_ / np.linalg.norm(model.coef_, axis=1, keepdims=True)
    fallback = np.ones((4, 6))
    got = logistic_rows(Xl, yl, 4, fallback)
    np.testing.assert_allclose(got[:3], want, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(got[3], fallback[3])  # class 3 has no label

    # two classes whose means differ most along x0, where each class also varies widely, and a little along x1,
    # where they barely vary: the class means (cosine) follow x0 and err often, the logistic rows use x1
    def draw(n):
        y = np.repeat([0, 1], n)
        sign = np.where(y == 0, 1.0, -1.0)
        X = np.stack([sign + rng.normal(0, 2.0, 2 * n), 0.5 * sign + rng.normal(0, 0.05, 2 * n),
                      rng.normal(0, 0.05, 2 * n)], 1)
        return X.astype(np.float32), y

    Xl, yl = draw(10)
    Xt, yt = draw(200)
    pooled = np.zeros((1, 3), dtype=np.float32)  # centre 0: the classes lie either side of it
    acc = {}
    for init in ("prototypes", "logistic"):
        head = _make_head(SemiConfig(init=init).validate(), pooled, Xl, yl, 2)
        acc[init] = _accuracy(head, Xt, yt)
    assert acc["logistic"] >= acc["prototypes"] + 0.1, acc



def test_view_averaging_matches_a_hand_computation_and_can_change_the_prediction():
    from transferkit.semi.fit import head_proba, view_averaged_proba

    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # logits = the features
    banks = {"eval": np.array([[1.0, 0.0]], np.float32),                         # softmax: [e/(e+1), 1/(e+1)]
             "weak": np.array([[[0.0, 2.0]], [[0.0, 0.0]]], np.float32)}          # [1/(1+e^2), e^2/(1+e^2)], [.5, .5]
    e = np.e
    want = np.array([[e / (e + 1) + 1 / (1 + e ** 2) + 0.5, 1 / (e + 1) + e ** 2 / (1 + e ** 2) + 0.5]]) / 3
    got = view_averaged_proba(head_proba(head), banks)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got.argmax(1)[0] == 1 and head_proba(head)(banks["eval"]).argmax(1)[0] == 0  # the views changed the call
    np.testing.assert_allclose(view_averaged_proba(head_proba(head), banks, views=()), head_proba(head)(banks["eval"]))
    with pytest.raises(DataError, match="no cached 'strong' view"):
        view_averaged_proba(head_proba(head), banks, views=("strong",))
    with pytest.raises(DataError, match="expected \\(draws, 1, D\\)"):
        view_averaged_proba(head_proba(head), {"eval": banks["eval"], "weak": banks["weak"][:, [0, 0]]})
    with pytest.raises(TransferkitError, match="tta must be True or False"):
        SemiConfig(tta="yes").validate()

"""SimTrans: similarity transfer from clean base classes to noisy novel classes.

A similarity net learned on the base classes scores pairs of the novel classes' noisy items. Each item's weight
comes from those similarities (:func:`similarity_weights`), normalised to mean 1 per class (the reference code's
``one_mean``), and the novel classifier trains with the weighted cross-entropy plus the graph regulariser
``alpha * mean_ij A_ij ||f_i - f_j||^2`` over the relaxed similarities of each batch
(:class:`~transferkit.weakshot.objectives.GraphRegularizer`).

What we take from the reference code (github.com/bcmi/SimTrans-Weak-Shot-Classification: ``_scripts/CUB/*.sh``,
``GCN_reg/alternate_with_GCN.py``, ``GCN_reg/graph_modules.py``) and where we depart from it:

- the adversarial term: the paper adds one that aligns the similarity net's pair features between base and novel
  classes; the published script trains the similarity net with ``--beta 0.`` (the term off). We follow the script.
- the graph term: the script averages (not sums) ``A_ij ||f_i - f_j||^2`` over the ``B * B`` pairs of a batch
  (``GCN_loss.mean()``), ``A`` relaxed with ``mu = -4``, no label mask (``eye = 1``), alternating epochs without and
  with the term; we do the same. It measures distances between raw pooled ResNet features with ``alpha = 0.1``; on
  our features (a head's hidden layer) that scale pulled whole batches together and cost 7 to 31 points, so we
  measure the distances between L2-normalised features (``graph_normalize``, at most 4 per pair). On a head's
  hidden layer the term never paid (every variant of alpha, mu and label mask tried on development seeds cost 0.1
  to 1 point against the weights alone), so by default it acts on the classifier's softmax outputs
  (``graph_on="outputs"``: similar items are pulled towards the same prediction, the neighbour consistency of Iscen
  et al., CVPR 2022) with ``mu = +8`` instead of -4 (only the most similar pairs count, as in a nearest-neighbour
  graph) and ``alpha = 3``; chosen on development seeds 100-105 (branch s6: +0.5 point over the weights alone).
  The reference code's schedule (the term off in the first half of the epochs, then every other epoch) is an
  option; by default the term is on in every epoch (``graph_schedule="always"``, branch s8: +1.0 point over the
  weights alone on development seeds, against +0.5 with the reference schedule).
- the weights: the paper's (and script's ``avg1``) weight is an item's mean similarity to its class; by default we
  use its *share* of similarity that goes to its own class rather than to the other novel classes (``contrast``),
  which also ranks look-alike outliers low (see :func:`similarity_weights`); ``sim_weighting="mean"`` is the
  paper's.
- the similarity net reads ``[|a - b|, a * b]`` of L2-normalised trunk features instead of the concatenation
  (``sim_pair``; see :class:`~transferkit.weakshot.similarity.SimilarityNet`).
- the similarity SimTrans reads (weights and graph term) is by default a blend: a quarter the net's same-class
  probability, three quarters the cosine of the frozen features (centred on the base classes, as SimpleShot's CL2N)
  calibrated into a probability on base pairs (``sim_blend``; see
  :class:`~transferkit.weakshot.similarity.BlendedSimilarity`). A net learned on 5-6 base classes transferred worse
  to novel pairs than that cosine (development seeds: novel-pair ROC-AUC 0.63-0.71 against 0.70-0.77); the paper
  learns from tens to hundreds of base classes. ``sim_blend=1`` is the paper's net alone.
- the weights keep the reference code's ``one_mean`` normalisation (its other option, ``max`` with a relaxation,
  is not used by its scripts), but of each class's lowest-weighted 10 % (``sim_drop``) the items another novel
  class claims get weight 0 and the unclaimed items weigh at least the class mean (``sim_drop_rule="claimed"``,
  branch s6, :func:`claimed`: noise far from every novel class, such as clip art among digits, did not hurt plain
  training, so it is trained as plain training does). Before it, the whole lowest 10 % got weight 0 (``lowest``):
  soft weights barely moved accuracy even when they ranked the noisy items well, leaving the worst out did (chosen on
  development seeds 100-105, see ``benchmarks/bench_weakshot_dev.py``: 20 % gained more on flipped labels but lost
  up to 1.9 points to plain training where the noise is outliers; 10 % lost at most 0.7). ``sim_drop=0`` keeps every
  item. Two more rules (``sim_drop_rule``) were tried there and not chosen: ``confusable`` (only the items
  significantly more similar to another novel class, meant to keep harmless outliers) and ``mixture`` (DivideMix's
  two-component split of each class's weights).
- the open-set gate (``sim_gate``, branch s8, :func:`open_set_test`): before any item is left out, a one-sided
  binomial test asks whether the items the weights suspect (each class's lowest-weighted ``sim_drop`` share) are
  claimed by another novel class less often than half the time, the rate of the clean-looking items. If so, the
  noise is open-set (items of no novel class, far from all of them), which plain training shrugs off (Wei et al.;
  on such splits plain training matches the clean-subset oracle), and SimTrans trains as plain training: every
  weight 1, no graph term. Closed-set noise (flips) and outliers that resemble a novel class keep the gate open.

References:
    Chen, Niu, Liu & Zhang, "Weak-shot Fine-grained Classification via Similarity Transfer", NeurIPS 2021.
    Iscen, Valmadre, Arnab & Schmid, "Learning with Neighbor Consistency for Noisy Labels", CVPR 2022 (the graph
    term on the outputs). Wei, Tay, Liu, Pan, Zhou & An, "Open-set Label Noise Can Improve Robustness Against
    Inherent Label Noise", NeurIPS 2021 (why far outliers are kept).
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .methods import WEAKSHOT_METHODS, NovelSet, WeakShotMethod, per_class_mean_one
from .similarity import same_class_probabilities

PAPER = "Chen et al., Weak-shot Fine-grained Classification via Similarity Transfer, NeurIPS 2021"


#: how SimTrans turns the similarity matrix into weights (see :func:`similarity_weights`)
WEIGHTINGS = ("mean", "contrast")
#: which of each class's items get weight 0 (see :func:`similarity_weights`)
DROP_RULES = ("lowest", "confusable", "mixture", "claimed")


def similarity_weights(novel: NovelSet, weighting: str = "contrast", iterations: int = 0,
                       drop: float = 0.0, drop_rule: str = "lowest", gate: float = 0.0,
                       return_gate: bool = False) -> np.ndarray | tuple[np.ndarray, dict | None]:
    """One weight per noisy item from the similarity net's same-class probabilities, normalised to mean 1 per class.

    ``S[i, c]`` is item ``i``'s mean similarity to the items labelled ``c`` (the mean of its row and column
    entries, the item itself left out).

    - ``mean`` (the paper's): ``S[i, y_i]``, how similar the item is to the rest of its class.
    - ``contrast`` (an addition): ``S[i, y_i] / sum_c S[i, c]``, the share of the item's similarity that goes to
      its own class rather than to the other novel classes. A flipped item is more similar to the class it
      really belongs to; an outlier from a source that fills every class (e.g. clip art among digits) is as
      similar to every class, since the outliers of the other classes look like it, so its share falls to about
      ``1 / k`` while the mean alone would rank it high when outliers are many.

    Args:
        novel: the noisy items and the similarity (a net or a blend, see
            :class:`~transferkit.weakshot.similarity.BlendedSimilarity`).
        weighting: ``mean`` or ``contrast``.
        iterations: re-estimate each class from its weighted items this many times: ``S[i, c]`` becomes the
            *weighted* mean similarity to the items labelled ``c`` (the weights of the previous round), so the
            noisy items that the first round found pull each class's similarity less (0: the plain means).
        drop: per class, the share of its items with the lowest weights that get weight 0 (the rest keep theirs,
            then mean 1 per class again; 0: none dropped); with ``drop_rule="mixture"`` the most a class may lose.
        drop_rule: which items ``drop`` leaves out (see :func:`drop_items`): ``lowest`` (the lowest-weighted
            share), ``confusable`` (of that share, only the items more similar to another novel class than to their
            own: flips, not outliers that resemble no class), ``claimed`` (of that share, only the items another
            novel class claims, :func:`claimed`; the unclaimed items weigh at least the class mean) or ``mixture``
            (the share a two-component mixture of the class's weights puts in its low component, DivideMix's rule).
        gate: the level of the open-set gate (:func:`open_set_test`; 0: no gate). When the items the weights
            suspect (each class's lowest-weighted ``drop`` share) are claimed by another novel class significantly
            *less* often than a clean-looking item is, the noise is judged open-set, which does not hurt plain
            training, and every weight is 1 (plain training). With ``drop = 0`` there are no suspects: the gate
            never closes.
        return_gate: also return the gate's test (None without a gate).

    Returns:
        ``(N,)`` the weights; with ``return_gate``, ``(weights, test)`` (see :func:`open_set_test`).

    Raises:
        DataError: no similarity net, an unknown ``weighting`` or ``drop_rule``, a negative ``iterations``,
            ``drop`` or ``gate`` outside ``[0, 1)``.
    """
    if novel.similarity is None:
        raise DataError("SimTrans weights need the similarity net trained on the base classes")
    if weighting not in WEIGHTINGS:
        raise DataError(f"weighting must be one of {', '.join(WEIGHTINGS)}; got {weighting!r}")
    if int(iterations) != iterations or iterations < 0:
        raise DataError(f"iterations must be an integer >= 0; got {iterations!r}")
    if not 0 <= drop < 1:
        raise DataError(f"drop must be a share in [0, 1); got {drop!r}")
    if drop_rule not in DROP_RULES:
        raise DataError(f"drop_rule must be one of {', '.join(DROP_RULES)}; got {drop_rule!r}")
    if isinstance(gate, bool) or not isinstance(gate, (int, float)) or not 0 <= gate < 1:
        raise DataError(f"gate must be a test level in [0, 1) (0: no open-set gate; 0.05 is usual); got {gate!r}")
    Z = novel.X if novel.Z is None else novel.Z
    y = np.asarray(novel.y)
    classes = np.unique(y)
    member = (y[:, None] == classes[None, :]).astype(np.float64)  # (N, k) one-hot labels
    full = drop > 0 and (drop_rule in ("confusable", "claimed") or gate > 0)  # needs pairs across classes
    if weighting == "mean" and not full:  # within-class blocks
        P = np.zeros((len(y), len(y)))
        for c in classes:
            m = np.flatnonzero(y == c)
            P[np.ix_(m, m)] = same_class_probabilities(novel.similarity, Z[m])
    else:
        P = same_class_probabilities(novel.similarity, Z).astype(np.float64)
    P = 0.5 * (P + P.T)  # the mean of the row and column entries
    np.fill_diagonal(P, 0.0)
    col = np.searchsorted(classes, y)
    w = np.ones(len(y))
    for _ in range(int(iterations) + 1):
        mass = member * w[:, None]  # (N, k): each item's weight in its class's column
        S = (P @ mass) / np.maximum(mass.sum(0)[None, :] - mass, 1e-12)  # self left out of its own class
        own = S[np.arange(len(y)), col]
        scores = own if weighting == "mean" else own / np.maximum(S.sum(1), 1e-12)
        w = per_class_mean_one(scores, y)
    test = None
    if gate > 0:
        test = open_set_test(P, y, w, drop, gate)
        if test["open_set"]:
            w = np.ones(len(y))
            return (w, test) if return_gate else w
    if drop > 0:
        flags = confusable(P, y) if drop_rule == "confusable" else claimed(P, y, w) if drop_rule == "claimed" else None
        w = drop_items(w, y, drop, drop_rule, confusable=flags)
    return (w, test) if return_gate else w


def open_set_test(P: np.ndarray, y: np.ndarray, weights: np.ndarray, share: float, level: float = 0.05) -> dict:
    """Is the noise the weights find open-set (items of no novel class) rather than items of another novel class?

    The *suspects* are each class's lowest-weighted ``share`` of items (:func:`drop_lowest`). An item is *claimed*
    when another novel class pulls it harder than it pulls the median clean-looking item of the item's own class
    (:func:`claimed`), so about half of those clean-looking items are claimed by construction. A flipped item is
    claimed by the class it belongs to; an open-set item far from every novel class (clip art among digits) by none.
    The test is one-sided binomial: are fewer than half of the suspects claimed, beyond chance at ``level``? If so
    the noise is open-set, which barely moves the boundaries between the novel classes (Wei et al. find open-set
    noise benign, even helpful; on such splits plain training matches the clean subset), so SimTrans trains as
    plain training: every weight 1 and no graph term. The test is over the whole run (every class's suspects
    together): one class holds a few suspects only (3-4 on a clip-art class of 35 items).

    Args:
        P: ``(N, N)`` symmetric similarities, zero diagonal.
        y: ``(N,)`` labels.
        weights: ``(N,)`` the weights before any item is left out.
        share: the suspects' share of each class (SimTrans's ``drop``); 0: no suspects, the test never rejects.
        level: the test's level.

    Returns:
        ``{"level", "suspects", "claimed", "share_claimed", "p_value", "open_set"}``.

    References:
        Wei, Tay, Liu, Pan, Zhou & An, "Open-set Label Noise Can Improve Robustness Against Inherent Label Noise",
        NeurIPS 2021; Sachdeva et al., "EvidentialMix", WACV 2021 (open-set and closed-set noise told apart).
    """
    from scipy.stats import binomtest

    y = np.asarray(y)
    suspects = drop_lowest(weights, y, share) == 0 if share > 0 else np.zeros(len(y), bool)
    n = int(suspects.sum())
    k = int((suspects & claimed(P, y, weights)).sum()) if n else 0
    p = float(binomtest(k, n, 0.5, alternative="less").pvalue) if n else 1.0
    return {"level": float(level), "suspects": n, "claimed": k, "share_claimed": k / n if n else None,
            "p_value": p, "open_set": bool(n and p < level)}


def claimed(P: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """True for the items that another novel class claims: items that sit where another class's items live.

    Each class's *core* is its upper half by weight. ``M[i, c]`` is item ``i``'s mean similarity to the core of class
    ``c`` (itself left out), and its *claim* the largest ``M[i, c]`` over the classes ``c`` other than its label. An
    item is claimed when its claim exceeds the median claim of its own class's core items, i.e. another class pulls
    it harder than it pulls a typical clean-looking member of the item's class.

    A flipped item is claimed by the class it really belongs to. An outlier that resembles no novel class (open-set
    noise far from every class: clip art among digits) is claimed by no class more than a clean item is, and such
    noise barely moves the boundaries between the novel classes (Wei et al., NeurIPS 2021, find open-set noise
    benign, even helpful); an outlier that does look like another novel class is claimed like a flip.

    Args:
        P: ``(N, N)`` symmetric similarities, zero diagonal.
        y: ``(N,)`` labels.
        weights: ``(N,)`` the items' weights (which items form each class's core).

    References:
        Wei, Tay, Liu, Pan, Zhou & An, "Open-set Label Noise Can Improve Robustness Against Inherent Label Noise",
        NeurIPS 2021; Sachdeva, Cordeiro, Belagiannis, Reid & Carneiro, "EvidentialMix: Learning with Combined
        Open-set and Closed-set Noisy Labels", WACV 2021 (treating the two kinds of noise differently).
    """
    y = np.asarray(y)
    w = np.asarray(weights, np.float64)
    classes = np.unique(y)
    col = np.searchsorted(classes, y)
    rows = np.arange(len(y))
    core = np.zeros((len(y), len(classes)))
    for j, c in enumerate(classes):
        m = y == c
        core[m & (w >= np.median(w[m])), j] = 1.0
    M = (P @ core) / np.maximum(core.sum(0)[None, :] - core, 1.0)  # self left out of its own core
    M[rows, col] = -np.inf
    claim = M.max(1) if len(classes) > 1 else np.full(len(y), -np.inf)
    out = np.zeros(len(y), bool)
    for j, c in enumerate(classes):
        m = y == c
        out[m] = claim[m] > np.median(claim[m & (core[:, j] > 0)])
    return out


def confusable(P: np.ndarray, y: np.ndarray, z: float = 2.0) -> np.ndarray:
    """True for the items significantly more similar to another class than to their own: for some class ``c`` other
    than the item's label, ``S[i, c] - S[i, y_i] > z * SE``, with ``S`` the mean similarity to the items of a class
    (the item itself left out) and ``SE`` the standard error of that difference of two means (Welch). A flipped
    item passes; an outlier that resembles no novel class (as similar to each) rarely does.

    Args:
        P: ``(N, N)`` symmetric similarities, zero diagonal.
        y: ``(N,)`` labels.
        z: the threshold in standard errors (2: about 2 % one-sided per class compared).
    """
    y = np.asarray(y)
    classes = np.unique(y)
    member = (y[:, None] == classes[None, :]).astype(np.float64)
    n = np.maximum(member.sum(0)[None, :] - member, 1.0)  # self left out of its own class
    mean = (P @ member) / n
    var = np.maximum((P * P) @ member / n - mean ** 2, 0.0) * n / np.maximum(n - 1, 1.0)
    col = np.searchsorted(classes, y)
    rows = np.arange(len(y))
    own, own_var = mean[rows, col][:, None], (var / n)[rows, col][:, None]
    t = (mean - own) / np.sqrt(np.maximum(var / n + own_var, 1e-12))
    t[rows, col] = -np.inf
    return t.max(1) > z


def drop_items(weights: np.ndarray, y: np.ndarray, share: float, rule: str = "lowest",
               confusable: np.ndarray | None = None) -> np.ndarray:
    """Per class, weight 0 for some items, the others renormalised to mean 1 over the class (at least one kept).

    - ``lowest``: the ``round(share * n_c)`` lowest-weighted items (:func:`drop_lowest`).
    - ``confusable``: of those, only the items flagged in ``confusable`` (more similar to another novel class than
      to their own); the others keep their soft weight.
    - ``claimed``: of those, only the items flagged in ``confusable`` (here: :func:`claimed`, another novel class
      claims them); the items not claimed get at least the class's mean weight (a floor of 1 before the final
      normalisation), so open-set noise that resembles no novel class trains as in plain training.
    - ``mixture``: a two-component Gaussian mixture fitted to the class's weights (DivideMix's clean/noisy split of
      per-sample losses, here of weights); the items whose posterior of the low-mean component exceeds 0.5, at most
      ``round(share * n_c)`` of them (the lowest-weighted first).

    References:
        Li, Socher & Hoi, "DivideMix: Learning with Noisy Labels as Semi-supervised Learning", ICLR 2020 (the
        two-component mixture).
    """
    if rule == "lowest":
        return drop_lowest(weights, y, share)
    w = np.asarray(weights, np.float64).copy()
    if rule in ("confusable", "claimed"):
        if confusable is None:
            raise DataError(f"drop_rule {rule!r} needs each item's flag (more similar to another class)")
        flag = np.asarray(confusable, bool)
        low = drop_lowest(w, y, share) == 0
        if rule == "claimed":
            w[~flag] = np.maximum(w[~flag], 1.0)
        w[low & flag] = 0.0
        return per_class_mean_one(w, y)
    if rule != "mixture":
        raise DataError(f"drop_rule must be one of {', '.join(DROP_RULES)}; got {rule!r}")
    for c in np.unique(y):
        m = np.flatnonzero(y == c)
        n = min(int(round(share * len(m))), len(m) - 1)
        low = low_component(w[m])
        order = np.argsort(w[m], kind="stable")
        w[m[order[:min(n, int(low.sum()))]]] = 0.0
    return per_class_mean_one(w, y)


def low_component(values: np.ndarray) -> np.ndarray:
    """True where a two-component 1-D Gaussian mixture (DivideMix's settings: ``reg_covar=5e-4``, 10 EM steps from a
    fixed start) gives the low-mean component a posterior above 0.5; all False for fewer than 4 values or values
    that do not differ."""
    from sklearn.mixture import GaussianMixture

    v = np.asarray(values, np.float64).reshape(-1, 1)
    if len(v) < 4 or np.ptp(v) == 0:
        return np.zeros(len(v), bool)
    gm = GaussianMixture(2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0).fit(v)
    post = gm.predict_proba(v)[:, int(np.argmin(gm.means_[:, 0]))]
    return post > 0.5


def drop_lowest(weights: np.ndarray, y: np.ndarray, share: float) -> np.ndarray:
    """Per class, weight 0 for the ``round(share * n_c)`` items with the lowest weights (at least one kept), the
    others renormalised to mean 1 over the class."""
    w = np.asarray(weights, np.float64).copy()
    for c in np.unique(y):
        m = np.flatnonzero(y == c)
        n = min(int(round(share * len(m))), len(m) - 1)
        if n > 0:
            w[m[np.argsort(w[m], kind="stable")[:n]]] = 0.0
    return per_class_mean_one(w, y)


@WEAKSHOT_METHODS.register("simtrans", graph=True, uses_similarity=True, oracle=False, baseline="plain", paper=PAPER)
class SimTrans(WeakShotMethod):
    """Similarity-transfer weights and the graph regulariser (the full method).

    Args:
        weighting: ``contrast`` or ``mean``; iterations: re-estimates of each class from its weighted items; drop:
            the share of each class's lowest-weighted items left out; drop_rule: which of them; gate: the level of
            the open-set gate, 0: none (see :func:`similarity_weights` and :func:`open_set_test`).

    Attributes (after :meth:`weights`):
        gate_: the open-set test (None without a gate).
        trains_plain_: the gate judged the noise open-set: every weight is 1 and the graph term is off.
    """

    name = "simtrans"

    def __init__(self, weighting: str = "contrast", iterations: int = 0, drop: float = 0.0,
                 drop_rule: str = "lowest", gate: float = 0.0):
        self.weighting, self.iterations, self.drop, self.drop_rule = weighting, int(iterations), float(drop), drop_rule
        self.gate = gate

    def weights(self, novel: NovelSet) -> np.ndarray:
        w, self.gate_ = similarity_weights(novel, self.weighting, self.iterations, self.drop, self.drop_rule,
                                           self.gate, return_gate=True)
        self.trains_plain_ = bool(self.gate_ and self.gate_["open_set"])
        return w


@WEAKSHOT_METHODS.register("simtrans-weights", graph=False, uses_similarity=True, oracle=False, baseline="plain",
                           paper=PAPER + " (ablation: weights only, no graph term)")
class SimTransWeights(SimTrans):
    """Similarity-transfer weights without the graph regulariser (the ablation that measures the graph term)."""

    name = "simtrans-weights"

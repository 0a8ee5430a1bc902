"""Pseudo-labels by label propagation on a k-nearest-neighbour graph of frozen features, with the certainty and
class weights of Iscen, Tolias, Avrithis & Chum (CVPR 2019).

The graph's nodes are the labelled and unlabelled items (their eval-view features, L2-normalised); each item keeps
its ``k`` most similar neighbours with affinity ``max(cos, 0) ** gamma``, the affinity matrix is made symmetric
``W = A + A^T`` and normalised ``D^-1/2 W D^-1/2``, and the labels diffuse by solving ``(I - alpha W) Z = Y``
(Zhou et al.'s closed form, solved by conjugate gradient, one system per class). Each unlabelled item gets the
class of its largest ``Z`` entry, a certainty weight ``1 - H(z) / log C`` (``z``: its row of ``Z`` normalised to sum
to 1) and a class weight inversely proportional to the number of items (labelled and pseudo-labelled) of its class.

References:
    Iscen, Tolias, Avrithis & Chum, "Label Propagation for Deep Semi-supervised Learning", CVPR 2019 (eq. 9-11 and
    section 3.3: the entropy weights and the class balancing).
    Zhou, Bousquet, Lal, Weston & Schoelkopf, "Learning with Local and Global Consistency", NeurIPS 2003.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError, TransferkitError

__all__ = ["GraphLabels", "check_graph_settings", "knn_neighbours", "knn_affinity", "propagate_labels"]


@dataclass
class GraphLabels:
    """Label propagation's output for the unlabelled items: ``labels`` ``(N,)``, the certainty ``weights``
    ``(N,)`` in [0, 1], the ``class_weights`` ``(C,)`` (mean 1 over the pool's items) and the row-normalised
    scores ``scores`` ``(N, C)``."""

    labels: np.ndarray
    weights: np.ndarray
    class_weights: np.ndarray
    scores: np.ndarray

    def item_weights(self) -> np.ndarray:
        """Each unlabelled item's weight in the loss: its certainty times its pseudo-class's weight."""
        return self.weights * self.class_weights[self.labels]


def check_graph_settings(k: int = 10, gamma: float = 3.0, alpha: float = 0.99) -> None:
    """A :class:`TransferkitError` naming the first bad setting of the graph: ``k`` neighbours (an integer >= 1),
    the affinity's exponent ``gamma`` (> 0) and the diffusion's ``alpha`` (in (0, 1))."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise TransferkitError(f"k (neighbours) must be an integer >= 1, got {k!r}")
    if isinstance(gamma, bool) or not (isinstance(gamma, (int, float)) and gamma > 0):
        raise TransferkitError(f"gamma must be > 0, got {gamma!r}")
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise TransferkitError(f"alpha must be in (0, 1), got {alpha!r}")


def knn_neighbours(z: np.ndarray, k: int = 10, gamma: float = 3.0, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Each item's ``k`` nearest neighbours by the dot product (itself excluded) and their affinities
    ``max(z_i . z_j, 0) ** gamma``; ``z`` should be L2-normalised rows (the dot product is then the cosine). The
    similarities are computed ``block`` rows at a time (memory ``block * N``, time ``N^2 D``).

    Shape:
        z ``(N, D)`` -> index ``(N, k)`` and affinity ``(N, k)`` (``k`` capped at ``N - 1``).
    """
    z = np.asarray(z, dtype=np.float64)
    n = len(z)
    check_graph_settings(k, gamma)
    if n < 2:
        raise DataError(f"a neighbour graph needs at least 2 items, got {n}")
    k = min(int(k), n - 1)
    nn = np.zeros((n, k), dtype=np.int64)
    aff = np.zeros((n, k))
    for lo in range(0, n, block):
        s = z[lo:lo + block] @ z.T
        rows = np.arange(len(s))
        s[rows, lo + rows] = -np.inf
        idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
        nn[lo:lo + block] = idx
        aff[lo:lo + block] = np.clip(np.take_along_axis(s, idx, 1), 0, None) ** float(gamma)
    return nn, aff


def knn_affinity(z: np.ndarray, k: int = 10, gamma: float = 3.0):
    """The symmetric affinity ``W = A + A^T`` (a scipy sparse ``(N, N)`` matrix) of :func:`knn_neighbours`:
    ``A_ij`` is the affinity of ``j`` when ``j`` is among the ``k`` nearest neighbours of ``i``, else 0 (Iscen et al.,
    eq. 9).

    Shape:
        z ``(N, D)`` -> ``(N, N)``.
    """
    from scipy.sparse import csr_matrix

    nn, aff = knn_neighbours(z, k, gamma)
    n = len(nn)
    a = csr_matrix((aff.ravel(), (np.repeat(np.arange(n), nn.shape[1]), nn.ravel())), shape=(n, n))
    return (a + a.T).tocsr()


def propagate_labels(z_l: np.ndarray, y_l: np.ndarray, z_u: np.ndarray, n_classes: int, *, k: int = 10,
                     gamma: float = 3.0, alpha: float = 0.99) -> GraphLabels:
    """Label propagation from the labelled items ``(z_l, y_l)`` to the unlabelled ``z_u`` over their joint kNN graph
    (:func:`knn_affinity`), Iscen et al.'s pseudo-labels and weights (see the module).

    Args:
        z_l, z_u: features, L2-normalised rows (e.g. CL2N, SimpleShot's centred and normalised features).
        y_l: integer labels of ``z_l`` in ``[0, n_classes)``.
        k: neighbours per item (Iscen et al. use 50 on CIFAR's 50,000 images; 10, scikit-learn's default, on
            pools of a few hundred items).
        gamma: the affinity's exponent (3, the paper's).
        alpha: the diffusion's ``alpha`` in (0, 1) (0.99, the paper's).

    Raises:
        DataError: mismatched labels or an empty pool; TransferkitError: bad settings.
    """
    from scipy.sparse.linalg import LinearOperator, cg

    z_l, z_u = np.asarray(z_l, dtype=np.float64), np.asarray(z_u, dtype=np.float64)
    y_l = np.asarray(y_l, dtype=np.int64)
    if len(z_l) != len(y_l):
        raise DataError(f"{len(z_l)} labelled feature rows but {len(y_l)} labels")
    if len(z_u) == 0:
        raise DataError("the unlabelled pool is empty: label propagation needs unlabelled items")
    if len(y_l) and (y_l.min() < 0 or y_l.max() >= n_classes):
        raise DataError(f"labels must be in [0, {n_classes}), got {y_l.min()}..{y_l.max()}")
    check_graph_settings(k, gamma, alpha)
    from scipy.sparse import diags

    z = np.concatenate([z_l, z_u])
    w = knn_affinity(z, k, gamma)
    d = np.asarray(w.sum(1)).ravel()
    inv = np.where(d > 0, 1.0 / np.sqrt(np.maximum(d, 1e-300)), 0.0)
    wn = (diags(inv) @ w @ diags(inv)).tocsr()
    n, nl = len(z), len(z_l)
    op = LinearOperator((n, n), matvec=lambda v: v - alpha * (wn @ v), dtype=np.float64)
    scores = np.zeros((n, n_classes))
    for c in range(n_classes):
        y = np.zeros(n)
        y[:nl][y_l == c] = 1.0
        if y.any():
            scores[:, c], _ = cg(op, y, rtol=1e-6, maxiter=50)
    zu = np.clip(scores[nl:], 0, None)
    tot = zu.sum(1, keepdims=True)
    zu = np.where(tot > 0, zu / np.where(tot > 0, tot, 1), 1.0 / n_classes)  # an isolated item: uniform
    labels = zu.argmax(1)
    ent = -(zu * np.log(np.clip(zu, 1e-12, None))).sum(1)
    certainty = np.clip(1.0 - ent / np.log(n_classes), 0.0, 1.0)
    counts = np.bincount(labels, minlength=n_classes) + np.bincount(y_l, minlength=n_classes)
    cw = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    cw = cw / max(float(cw[labels].mean()), 1e-12)  # mean class weight over the pool's items is 1
    return GraphLabels(labels=labels, weights=certainty, class_weights=cw, scores=zu)

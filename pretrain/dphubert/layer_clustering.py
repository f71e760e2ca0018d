"""The arithmetic of SKILL's layer analysis (``layer_similarity.py``): pairwise similarity of hidden states (linear
CKA, time-averaged cosine) and the grouping of layers by agglomerative clustering of ``1 - similarity``. NumPy only
(SciPy for the unconstrained linkage); no teacher, no files, so it is tested on hand-made matrices.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .options import LINKAGES, MEASURES

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, "torch.Tensor"]

# ----------------------------------------------------------------------------------------------------------------------
# Similarity
# ----------------------------------------------------------------------------------------------------------------------

def _as_matrix(x: ArrayLike, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    array = np.asarray(x, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name}: expected (frames, features), got shape {array.shape}")
    return array


def _centre(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0, keepdims=True)


def linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Linear CKA of two representations of the same N frames, (N, Dx) and (N, Dy) (1-D: one feature):
    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred Xc, Yc."""
    return float(similarity_matrix([x, y], "linear_cka")[0, 1])


def similarity_matrix(states: Sequence[ArrayLike], measure: str = "linear_cka") -> np.ndarray:
    """(L, L) float64 similarity of L representations of the same frames, each (N, D_l); symmetric, 1 on the diagonal.

    ``linear_cka``: linear CKA of every pair. ``cosine``: mean over frames of cos(x_t, y_t) (equal widths needed)."""
    if measure not in MEASURES:
        raise ValueError(f"--measure {measure!r}: expected one of {', '.join(MEASURES)}")
    matrices = [_as_matrix(state, f"hidden state {index}") for index, state in enumerate(states)]
    if not matrices:
        raise ValueError("no hidden states to compare")
    frames = {matrix.shape[0] for matrix in matrices}
    if len(frames) != 1:
        raise ValueError(f"hidden states have different frame counts {sorted(frames)}; they must cover the same frames")
    if matrices[0].shape[0] < 2:
        raise ValueError("similarity needs at least 2 frames")
    count = len(matrices)
    result = np.eye(count, dtype=np.float64)
    if measure == "cosine":
        widths = {matrix.shape[1] for matrix in matrices}
        if len(widths) != 1:
            raise ValueError(f"--measure cosine needs hidden states of one width, got widths {sorted(widths)}")
        unit = []
        for matrix in matrices:
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            unit.append(matrix / np.maximum(norms, 1e-12))
        for i in range(count):
            for j in range(i + 1, count):
                result[i, j] = result[j, i] = float(np.mean(np.sum(unit[i] * unit[j], axis=1)))
        return result

    centred = [_centre(matrix) for matrix in matrices]
    frames_count = centred[0].shape[0]
    if frames_count < max(matrix.shape[1] for matrix in centred):
        # Fewer frames than features: the N x N Gram form is cheaper; tr(Kx Ky) = ||Y^T X||_F^2.
        grams = [matrix @ matrix.T for matrix in centred]

        def cross(i: int, j: int) -> float:
            return float(np.sum(grams[i] * grams[j]))
    else:
        def cross(i: int, j: int) -> float:
            return float(np.sum(np.square(centred[j].T @ centred[i])))

    self_norms = [math.sqrt(cross(i, i)) for i in range(count)]
    constant = [index for index, norm in enumerate(self_norms) if norm == 0.0]
    if constant:
        raise ValueError(f"hidden state(s) {constant} are constant over all frames: CKA is undefined for them")
    for i in range(count):
        for j in range(i + 1, count):
            result[i, j] = result[j, i] = cross(i, j) / (self_norms[i] * self_norms[j])
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Clustering
# ----------------------------------------------------------------------------------------------------------------------

def _distances(similarity: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    """1 - similarity between ``layers``: clipped at 0, symmetric, zero diagonal."""
    sub = np.asarray(similarity, dtype=np.float64)[np.ix_(list(layers), list(layers))]
    distance = np.clip(1.0 - sub, 0.0, None)
    distance = (distance + distance.T) / 2.0
    np.fill_diagonal(distance, 0.0)
    return distance


def _check_clustering(similarity: np.ndarray, layers: Sequence[int], k: Optional[int], threshold: Optional[float],
                      linkage: str) -> None:
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square matrix, got shape {similarity.shape}")
    if not np.all(np.isfinite(similarity)):
        raise ValueError("similarity has non-finite entries")
    if linkage not in LINKAGES:
        raise ValueError(f"--linkage {linkage!r}: expected one of {', '.join(LINKAGES)}")
    if not layers:
        raise ValueError("no layers to cluster")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers {list(layers)} repeat a layer")
    outside = [layer for layer in layers if not 0 <= layer < similarity.shape[0]]
    if outside:
        raise ValueError(f"layers {outside} are outside the {similarity.shape[0]} x {similarity.shape[0]} similarity")
    if (k is None) == (threshold is None):
        raise ValueError("give exactly one of --groups K and --distance-threshold T")
    if k is not None:
        if k < 1:
            raise ValueError(f"--groups {k}: must be at least 1")
        if k > len(layers):
            raise ValueError(f"--groups {k}: more groups than the {len(layers)} layers being clustered "
                             f"({list(layers)})")
    if threshold is not None and not threshold >= 0:
        raise ValueError(f"--distance-threshold {threshold}: must be >= 0 (distances are 1 - similarity)")


def _run_distance(distance: np.ndarray, first: List[int], second: List[int], method: str) -> float:
    block = distance[np.ix_(first, second)]
    if method == "single":
        return float(block.min())
    if method == "complete":
        return float(block.max())
    return float(block.mean())


def _contiguous_merges(distance: np.ndarray, method: str) -> List[Tuple[int, float]]:
    """Constrained agglomeration down to one run: at each step the adjacent pair of runs with the smallest linkage
    distance merges (the leftmost on ties). Returns (index of the left run in the current list, distance) per step."""
    runs: List[List[int]] = [[position] for position in range(distance.shape[0])]
    merges = []
    while len(runs) > 1:
        gaps = [_run_distance(distance, runs[i], runs[i + 1], method) for i in range(len(runs) - 1)]
        best = int(np.argmin(gaps))
        merges.append((best, gaps[best]))
        runs[best:best + 2] = [runs[best] + runs[best + 1]]
    return merges


def _contiguous_tree(distance: np.ndarray, merges: List[Tuple[int, float]]) -> np.ndarray:
    """The merges as a SciPy linkage matrix (for the dendrogram)."""
    count = distance.shape[0]
    ids = list(range(count))
    sizes = [1] * count
    rows = []
    for step, (left, height) in enumerate(merges):
        rows.append([ids[left], ids[left + 1], height, sizes[left] + sizes[left + 1]])
        ids[left:left + 2] = [count + step]
        sizes[left:left + 2] = [sizes[left] + sizes[left + 1]]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def _effective_method(linkage: str, contiguous: bool) -> str:
    if linkage == "ward":
        if contiguous:
            logger.warning("--linkage ward with --contiguous: merging adjacent runs by average linkage instead")
            return "average"
        logger.warning("--linkage ward assumes Euclidean distances; 1 - similarity is not one, so read the groups "
                       "with care (average linkage is the usual choice)")
    return linkage


def cluster_with_tree(similarity: ArrayLike, layers: Sequence[int], k: Optional[int], threshold: Optional[float],
                      linkage: str, contiguous: bool) -> Tuple[List[List[int]], Optional[np.ndarray]]:
    """:func:`cluster_layers`' groups, and the full linkage tree over ``layers`` for the dendrogram (None for a
    single layer)."""
    matrix = _as_matrix(similarity, "similarity")
    layers = [int(layer) for layer in layers]
    _check_clustering(matrix, layers, k, threshold, linkage)
    method = _effective_method(linkage, contiguous)
    order = sorted(layers) if contiguous else layers
    if len(order) == 1:
        return [list(order)], None
    distance = _distances(matrix, order)

    if contiguous:
        merges = _contiguous_merges(distance, method)
        runs: List[List[int]] = [[position] for position in range(len(order))]
        for left, height in merges:
            if k is not None and len(runs) <= k:
                break
            if threshold is not None and height > threshold:
                break
            runs[left:left + 2] = [runs[left] + runs[left + 1]]
        groups = [[order[position] for position in run] for run in runs]
        tree = _contiguous_tree(distance, merges)
    else:
        from scipy.cluster.hierarchy import fcluster
        from scipy.cluster.hierarchy import linkage as scipy_linkage
        from scipy.spatial.distance import squareform

        tree = scipy_linkage(squareform(distance, checks=False), method=method)
        if k is not None:
            labels = fcluster(tree, k, criterion="maxclust")
        else:
            labels = fcluster(tree, threshold, criterion="distance")
        by_label: Dict[int, List[int]] = {}
        for layer, label in zip(order, labels):
            by_label.setdefault(int(label), []).append(layer)
        groups = list(by_label.values())
        if k is not None and len(groups) != k:
            logger.warning("--groups %d: the clustering gives %d groups (tied distances)", k, len(groups))

    groups = sorted((sorted(group) for group in groups), key=lambda group: group[0])
    return groups, tree


def cluster_layers(
    similarity: ArrayLike,
    layers: Sequence[int],
    k: Optional[int] = None,
    threshold: Optional[float] = None,
    linkage: str = "average",
    contiguous: bool = False,
) -> List[List[int]]:
    """Group ``layers`` by agglomerative clustering of the distance ``1 - similarity`` (clipped at 0).

    ``similarity`` is the full (L, L) matrix indexed by layer (s3prl indexing); ``layers`` are the indices to cluster
    (the others are in no group). Exactly one of ``k`` (number of groups, SciPy ``maxclust``) and ``threshold``
    (merge while the linkage distance is <= it, SciPy ``distance``). ``contiguous``: every group is a run of adjacent
    layers (constrained merging of adjacent runs with the same linkage rule; ward falls back to average).

    Returns the groups, each sorted, ordered by their first layer."""
    return cluster_with_tree(similarity, layers, k, threshold, linkage, contiguous)[0]


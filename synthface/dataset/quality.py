"""Dataset quality metrics in face-embedding space, the figures synthetic face datasets are compared by.

All functions take L2-normalisable embeddings (N, D) with integer identity labels (N,) and return
plain dicts of floats, so ``synthface inspect`` can put them in inspect.json and the card.

- **Consistency** (DCFace, IDiff-Face, Vec2Face report it as identity consistency): the cosine of
  each image to its identity centre (the normalised mean of the identity's images), averaged per
  identity; and the fraction of images whose cosine is at least ``threshold``.
- **Separability**: for each identity centre, the cosine of the nearest other identity centre
  (its distribution), and the identities that sit closer than ``duplicate_threshold`` to an
  earlier one (duplicates).
- **Intra-class variation**: the spread of each identity's embeddings, 1 - mean cosine to the
  centre (0 = every image the same embedding); and the pose spread from five facial landmarks
  (:func:`head_pose`), the standard deviation of yaw, pitch and roll within an identity.
- **Against a reference set** (real faces): the Frechet distance between Gaussians fitted to the
  two sets' embeddings (Heusel et al. 2017, "FID", here in face-embedding space rather than
  Inception features), and k-NN precision and recall (Kynkaenniemi et al. 2019): precision is the
  fraction of generated embeddings that fall inside the k-NN ball of some reference embedding,
  recall the fraction of reference embeddings inside the k-NN ball of some generated one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synthface.errors import InputError
from synthface.faces.align import ARCFACE_TEMPLATE
from synthface.identities import l2n as _normalise


def _check(emb: np.ndarray, labels: np.ndarray | None = None) -> None:
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise InputError(f"embeddings must be a non-empty (N, D) array, got shape {emb.shape}")
    if labels is not None and labels.shape != (emb.shape[0],):
        raise InputError(f"labels must have shape ({emb.shape[0]},), got {labels.shape}")


def quantiles(x: np.ndarray) -> dict[str, Any]:
    """Count, mean, min, 5th percentile, median, 95th percentile and max of the finite values."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"count": 0}
    q = np.quantile(x, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {"count": int(len(x)), "mean": float(x.mean()), "min": float(q[0]), "p05": float(q[1]),
            "median": float(q[2]), "p95": float(q[3]), "max": float(q[4])}  # fmt: skip


def identity_centres(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(identities, centres): the sorted distinct labels and each one's normalised mean embedding."""
    emb, labels = _normalise(emb), np.asarray(labels)
    _check(emb, labels)
    ids, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(ids), emb.shape[1]))
    np.add.at(sums, inverse, emb)
    return ids, _normalise(sums)


def cos_to_centre(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(identities, per-image cosine to its identity centre, each image's index into identities)."""
    emb, labels = _normalise(emb), np.asarray(labels)
    ids, centres = identity_centres(emb, labels)
    inverse = np.searchsorted(ids, labels)
    return ids, np.einsum("nd,nd->n", emb, centres[inverse]), inverse


def per_identity_consistency(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(identities, mean cosine of each identity's images to its centre)."""
    ids, cos, inverse = cos_to_centre(emb, labels)
    return ids, np.bincount(inverse, weights=cos) / np.bincount(inverse)


def consistency(emb: np.ndarray, labels: np.ndarray, threshold: float | None = None) -> dict[str, Any]:
    """Cosine of each image to its identity centre: per-identity means, and the fraction >= ``threshold``."""
    ids, cos, inverse = cos_to_centre(emb, labels)
    per_identity = np.bincount(inverse, weights=cos) / np.bincount(inverse)
    out: dict[str, Any] = {"identities": int(len(ids)), "images": int(len(cos)), "cos_to_centre": quantiles(per_identity)}
    if threshold is not None:
        out["threshold"] = float(threshold)
        out["within_threshold"] = float((cos >= threshold).mean())
    return out


def nearest_other(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(identities, cosine of each identity centre to the nearest other one; NaN with one identity)."""
    ids, centres = identity_centres(emb, labels)
    if len(ids) < 2:
        return ids, np.full(len(ids), np.nan)
    sim = centres @ centres.T
    np.fill_diagonal(sim, -np.inf)
    return ids, sim.max(axis=1)


def separability(emb: np.ndarray, labels: np.ndarray, duplicate_threshold: float | None = None) -> dict[str, Any]:
    """Nearest-other-identity centre cosines; identities closer than ``duplicate_threshold`` to an earlier one."""
    ids, centres = identity_centres(emb, labels)
    if len(ids) < 2:
        return {"identities": int(len(ids)), "nearest_other": {}, "duplicates": 0}
    sim = centres @ centres.T
    np.fill_diagonal(sim, -np.inf)
    out: dict[str, Any] = {"identities": int(len(ids)), "nearest_other": quantiles(sim.max(axis=1))}
    if duplicate_threshold is not None:
        earlier = np.tril(sim, k=-1)
        earlier[np.triu_indices(len(ids))] = -np.inf
        dup = earlier.max(axis=1) >= duplicate_threshold
        out["duplicate_threshold"] = float(duplicate_threshold)
        out["duplicates"] = int(dup.sum())
    return out


def embedding_spread(emb: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Per identity with 2+ images: 1 - mean cosine to the centre (0 = no variation)."""
    _, cos, inverse = cos_to_centre(emb, labels)
    counts = np.bincount(inverse)
    spread = 1.0 - np.bincount(inverse, weights=cos) / counts
    return {"identities": int((counts >= 2).sum()), "spread": quantiles(spread[counts >= 2])}


def head_pose(landmarks: np.ndarray) -> np.ndarray:
    """(N, 3) yaw, pitch, roll in degrees from (N, 5, 2) landmarks (eyes, nose, mouth corners; image coords).

    A geometric estimate, not a fitted 3-D model: roll is the angle of the eye line; yaw is the
    nose's horizontal offset from the eye-mouth midline over half the inter-ocular distance, and
    pitch the nose's vertical position between the eye line and the mouth line relative to the
    ArcFace template's (0.494 of the way), both mapped through arcsin.
    Frontal faces give about (0, 0, 0); the sign follows the image axes.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (5, 2):
        raise InputError(f"landmarks must have shape (N, 5, 2), got {lm.shape}")
    left_eye, right_eye, nose, left_mouth, right_mouth = (lm[:, i] for i in range(5))
    eye_mid, mouth_mid = (left_eye + right_eye) / 2, (left_mouth + right_mouth) / 2
    eye_vec = right_eye - left_eye
    roll = np.degrees(np.arctan2(eye_vec[:, 1], eye_vec[:, 0]))
    # undo the roll so yaw and pitch are measured in the face's own frame
    c, s = np.cos(np.radians(-roll)), np.sin(np.radians(-roll))

    def rotate(p: np.ndarray) -> np.ndarray:
        q = p - eye_mid
        return np.stack([c * q[:, 0] - s * q[:, 1], s * q[:, 0] + c * q[:, 1]], axis=1)

    n, m = rotate(nose), rotate(mouth_mid)
    half_iod = np.clip(np.linalg.norm(eye_vec, axis=1) / 2, 1e-6, None)
    depth = np.clip(m[:, 1], 1e-6, None)
    midline_x = m[:, 0] * n[:, 1] / depth  # the eye-mouth midline's x at the nose's height
    yaw = np.degrees(np.arcsin(np.clip((n[:, 0] - midline_x) / half_iod, -1, 1)))
    pitch = np.degrees(np.arcsin(np.clip(2 * (n[:, 1] / depth - _FRONTAL_NOSE_RATIO), -1, 1)))
    return np.stack([yaw, pitch, roll], axis=1)


def _frontal_nose_ratio() -> float:
    t = ARCFACE_TEMPLATE
    eyes, mouth = (t[0, 1] + t[1, 1]) / 2, (t[3, 1] + t[4, 1]) / 2
    return float((t[2, 1] - eyes) / (mouth - eyes))


_FRONTAL_NOSE_RATIO = _frontal_nose_ratio()  # 0.494: where the ArcFace template's nose sits between eyes and mouth


def pose_spread(poses: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Within-identity standard deviation of yaw, pitch and roll (degrees), over identities with 2+ images."""
    poses, labels = np.asarray(poses, dtype=np.float64), np.asarray(labels)
    if poses.ndim != 2 or poses.shape[1] != 3 or poses.shape[0] != labels.shape[0]:
        raise InputError(f"poses must have shape ({labels.shape[0]}, 3), got {poses.shape}")
    out: dict[str, Any] = {}
    ids, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse)
    for k, name in enumerate(("yaw", "pitch", "roll")):
        x = poses[:, k]
        mean = np.bincount(inverse, weights=x) / counts
        var = np.bincount(inverse, weights=(x - mean[inverse]) ** 2) / counts
        out[name] = {"within_identity_std": quantiles(np.sqrt(var[counts >= 2])), "overall": quantiles(x)}
    return out


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two sets of normalised embeddings."""
    a, b = _normalise(a), _normalise(b)
    _check(a)
    _check(b)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"the two sets have different embedding sizes ({a.shape[1]} and {b.shape[1]})")
    if min(len(a), len(b)) < 2:
        raise InputError("the Frechet distance needs at least 2 embeddings in each set")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    from scipy import linalg

    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(root).all():  # near-singular product: the usual epsilon on the diagonals
        eps = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    root = np.real(root)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def knn_precision_recall(generated: np.ndarray, reference: np.ndarray, k: int = 3) -> dict[str, float]:
    """k-NN precision and recall of ``generated`` against ``reference`` (Euclidean on normalised embeddings)."""
    from sklearn.neighbors import NearestNeighbors

    g, r = _normalise(generated), _normalise(reference)
    _check(g)
    _check(r)
    if min(len(g), len(r)) <= k:
        raise InputError(f"k-NN precision/recall with k={k} needs more than {k} embeddings in each set")

    def radii(x: np.ndarray) -> np.ndarray:
        dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
        return dist[:, k]  # column 0 is the point itself

    def covered(points: np.ndarray, support: np.ndarray, support_radii: np.ndarray) -> float:
        dist = np.sqrt(np.clip(2.0 - 2.0 * points @ support.T, 0.0, None))
        return float((dist <= support_radii[None, :]).any(axis=1).mean())

    return {"k": k, "precision": covered(g, r, radii(r)), "recall": covered(r, g, radii(g))}

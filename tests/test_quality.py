"""Quality metrics of a dataset in face-embedding space (synthface.dataset.quality)."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.dataset.quality import (
    consistency,
    embedding_spread,
    frechet_distance,
    head_pose,
    knn_precision_recall,
    pose_spread,
    separability,
)
from synthface.errors import InputError
from synthface.faces.align import ARCFACE_TEMPLATE


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _people(n_ids: int, per: int, noise: float, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((n_ids, dim)))
    emb = np.repeat(centres, per, axis=0) + noise * rng.standard_normal((n_ids * per, dim))
    return _unit(emb), np.repeat(np.arange(n_ids), per)


def test_consistency_and_spread_follow_the_noise():
    tight, labels = _people(10, 5, 0.01)
    loose, _ = _people(10, 5, 0.3)
    ct, cl = consistency(tight, labels, threshold=0.9), consistency(loose, labels, threshold=0.9)
    assert ct["cos_to_centre"]["mean"] > 0.99 and ct["within_threshold"] == 1.0
    assert cl["cos_to_centre"]["mean"] < ct["cos_to_centre"]["mean"] and cl["within_threshold"] < 1.0
    assert ct["identities"] == 10 and ct["images"] == 50
    st, sl = embedding_spread(tight, labels)["spread"]["mean"], embedding_spread(loose, labels)["spread"]["mean"]
    assert st < 0.01 < sl
    # identical images of a person: no spread at all
    same = np.repeat(_unit(np.ones((1, 8))), 4, axis=0)
    assert embedding_spread(same, np.zeros(4, int))["spread"]["mean"] == pytest.approx(0.0, abs=1e-12)


def test_separability_finds_a_duplicate_identity():
    emb, labels = _people(6, 4, 0.05)
    assert separability(emb, labels, duplicate_threshold=0.9)["duplicates"] == 0
    dup = emb.copy()
    dup[labels == 5] = emb[labels == 1]  # identity 5 is identity 1 again
    out = separability(dup, labels, duplicate_threshold=0.9)
    assert out["duplicates"] == 1 and out["nearest_other"]["p95"] > 0.99


def test_head_pose_of_the_template_and_a_rolled_face():
    assert np.allclose(head_pose(ARCFACE_TEMPLATE[None]), 0.0, atol=0.5)
    angle = np.radians(20)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rolled = (ARCFACE_TEMPLATE - 56) @ rot.T + 56
    yaw, pitch, roll = head_pose(rolled[None])[0]
    assert roll == pytest.approx(20, abs=0.6) and abs(yaw) < 0.5 and abs(pitch) < 0.5
    turned = ARCFACE_TEMPLATE.copy()
    turned[2, 0] += 8  # the nose moves towards one eye: a turned head
    assert head_pose(turned[None])[0, 0] > 15
    with pytest.raises(InputError, match=r"\(N, 5, 2\)"):
        head_pose(np.zeros((2, 4, 2)))


def test_pose_spread_is_within_identity():
    poses = np.array([[0, 0, 0], [10, 0, 0], [50, 5, 0], [50, 5, 0]], float)
    out = pose_spread(poses, np.array([0, 0, 1, 1]))
    assert out["yaw"]["within_identity_std"]["mean"] == pytest.approx(2.5)  # identity 0: std 5, identity 1: 0
    assert out["pitch"]["within_identity_std"]["mean"] == pytest.approx(0.0)


def test_frechet_distance_is_zero_for_one_set_and_grows_with_the_shift():
    a, _ = _people(40, 5, 0.3, seed=1)
    b, _ = _people(40, 5, 0.3, seed=2)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    near = frechet_distance(a, b)
    shifted = _unit(b + 0.8 * _unit(np.ones(b.shape[1])))
    assert frechet_distance(a, shifted) > near > 0
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    with pytest.raises(InputError, match="different embedding sizes"):
        frechet_distance(a, a[:, :16])


def test_knn_precision_recall_separates_fidelity_from_coverage():
    real, _ = _people(30, 4, 0.2, seed=3)
    same = knn_precision_recall(real, real, k=3)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    collapsed = np.repeat(real[:2], 60, axis=0) + 1e-4  # faithful but covering two images only
    out = knn_precision_recall(collapsed, real, k=3)
    assert out["precision"] == 1.0 and out["recall"] < 0.2
    rng = np.random.default_rng(4)
    cap = _unit(np.eye(32)[0] * 3 + rng.standard_normal((100, 32)) * 0.3)  # faces near one direction
    opposite = _unit(-np.eye(32)[0] * 3 + rng.standard_normal((100, 32)) * 0.3)
    assert knn_precision_recall(opposite, cap, k=3) == {"k": 3, "precision": 0.0, "recall": 0.0}
    with pytest.raises(InputError, match="more than 3"):
        knn_precision_recall(real[:3], real, k=3)

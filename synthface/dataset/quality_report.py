"""The quality section of ``synthface inspect``'s report: what each figure means, the thresholds
they are measured against, head pose and detection, the comparison with a reference set of real
faces, quality.png, and the per-identity figures.

The quality metrics (``quality`` in inspect.json; definitions in :data:`QUALITY_DEFINITIONS`) are
the functions of :mod:`synthface.dataset.quality` on the embeddings of the stored crops. Pose and
detection come from MTCNN run on the stored crops: the shards keep the detector's score
(``det_score``, NaN when the filter's detector did not run) but not its landmarks, and a crop warped
to the template keeps the nose-to-eyes geometry yaw and pitch are read from, so the landmarks are
detected again there. :mod:`synthface.dataset.inspect` runs the report and calls these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synthface.dataset import quality as q
from synthface.dataset.quality import quantiles
from synthface.dataset.writer import VARIATION_COLUMNS
from synthface.errors import InputError
from synthface.figures import hist_png
from synthface.runtime import Progress


# What each quality figure in inspect.json means and where it comes from (the HTML table and the card show these).
QUALITY_DEFINITIONS: dict[str, dict[str, str]] = {
    "consistency": {
        "definition": "cosine of each image to its identity centre (the normalised mean of the identity's embeddings), "
        "averaged per identity; quantiles over identities (1 = every image embeds the same)",
        "source": "identity consistency as DCFace (Kim et al. 2023), IDiff-Face (Boutros et al. 2023) and Vec2Face report it",
    },
    "within_threshold": {
        "definition": "fraction of images whose cosine to their identity centre is at least the threshold: the dataset's "
        "filter threshold when inspect embeds with the filter embedder, else the embedder's default",
        "source": "synthface's filter thresholds (docs/filter.md)",
    },
    "nearest_other": {
        "definition": "for each identity centre, the cosine of the nearest other identity centre (lower: identities "
        "further apart)",
        "source": "inter-class separability, as synthetic face datasets are compared (DCFace, Vec2Face)",
    },
    "duplicates": {
        "definition": "identities whose centre is at least duplicate_threshold from an earlier identity's centre: the "
        "filter's merge threshold when inspect embeds with the filter embedder, else the identity threshold",
        "source": "synthface's separation check (docs/filter.md)",
    },
    "spread": {
        "definition": "1 - mean cosine to the identity centre, per identity with 2+ images (0 = no variation)",
        "source": "intra-class variation in face-embedding space",
    },
    "pose": {
        "definition": "within-identity standard deviation of yaw, pitch and roll (degrees), each estimated from MTCNN's "
        "five landmarks on the stored crop: roll is the eye line's angle; yaw the nose's offset from the "
        "eye-mouth midline over half the eye distance; pitch the nose's height between eye and mouth lines "
        "against the ArcFace template's; both through arcsin",
        "source": "five-point geometry (synthface.dataset.quality.head_pose); landmarks by MTCNN (Zhang et al. 2016)",
    },
    "detection_rate": {
        "definition": "fraction of the stored crops in which the detector finds a face",
        "source": "MTCNN (Zhang et al. 2016), facenet-pytorch's bundled weights",
    },
    "detection_confidence": {
        "definition": "the detector's face probability of the faces found",
        "source": "MTCNN (Zhang et al. 2016), facenet-pytorch's bundled weights",
    },
    "frechet_distance": {
        "definition": "Frechet distance between Gaussians fitted to this set's and the reference set's normalised "
        "embeddings: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2); 0 = same mean and covariance",
        "source": "Heusel et al. 2017 (FID), computed on face embeddings instead of Inception features",
    },
    "knn_precision": {
        "definition": "fraction of this set's embeddings inside the k-NN ball (radius: distance to the k-th nearest "
        "neighbour) of some reference embedding: how much of the set looks like real faces",
        "source": "improved precision, Kynkaanniemi et al. 2019, in face-embedding space",
    },
    "knn_recall": {
        "definition": "fraction of the reference embeddings inside the k-NN ball of some embedding of this set: how "
        "much of the real face space the set covers",
        "source": "improved recall, Kynkaanniemi et al. 2019, in face-embedding space",
    },
    "variation": {
        "definition": "what the run's variation controls drew per stored image: the conditioning vector's cosine to its "
        "identity, the guidance scale, and whether it started from a style image (shard columns condition_cosine, "
        "guidance_scale, style)",
        "source": "synthface generate's variation section (docs/generate.md)",
    },
    "leakage": {
        "definition": "cosine of each identity centre to its nearest real person of the gallery",
        "source": "synthface's leakage check (docs/filter.md)",
    },
}


def quality_thresholds(config: dict[str, Any], embedder: str) -> tuple[float, float]:
    """(identity threshold, duplicate threshold) for the quality figures: the dataset's filter threshold
    and merge threshold when the filter ran with ``embedder``, else that embedder's default threshold for both."""
    from synthface.faces.embedders import default_threshold

    filt = config.get("filter") or {}
    same = bool(filt.get("enabled")) and filt.get("embedder") == embedder
    threshold = float(filt["threshold"]) if same and filt.get("threshold") is not None else default_threshold(embedder)
    merge = float(filt["merge_threshold"]) if same and filt.get("merge_threshold") is not None else threshold
    return threshold, merge


def variation_figures(rows: Any) -> dict[str, Any] | None:
    """What the run's variation controls drew for the stored images (None when none was on)."""
    if VARIATION_COLUMNS[0] not in rows.column_names:
        return None
    style = np.asarray(rows.column("style").to_numpy(), np.int64)
    return {
        "condition_cosine": quantiles(rows.column("condition_cosine").to_numpy(zero_copy_only=False)),
        "guidance_scale": quantiles(rows.column("guidance_scale").to_numpy(zero_copy_only=False)),
        "style_started": float((style >= 0).mean()) if len(style) else 0.0,
        "styles_used": int(len(np.unique(style[style >= 0]))),
    }


def get_detector(detector: Any, device: str = "auto") -> tuple[str, Any]:
    """(name, detector) for the pose and detection figures: "mtcnn", "none" (skip them) or an object with
    ``detect(images) -> [Face | None]`` (named by its class)."""
    if detector is None or detector == "none":
        return "none", None
    if isinstance(detector, str):
        if detector != "mtcnn":
            raise InputError(f"unknown detector '{detector}': use mtcnn or none")
        from synthface.faces.align import FaceDetector

        return "mtcnn", FaceDetector(device=device)
    return type(detector).__name__, detector


def detect_poses(det: Any, det_name: str, crops: list[np.ndarray], lab: np.ndarray,
                 bar: Progress) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """Head pose (yaw, pitch, roll in degrees; NaN where ``det`` finds no face) of each crop, and the
    quality figures "detection" and, when a face was found, "pose"."""
    poses = np.full((len(crops), 3), np.nan)
    scores = np.full(len(crops), np.nan)
    bar.start(len(crops), f"inspect: detecting faces with {det_name}")
    faces: list[Any] = []
    for start in range(0, len(crops), 64):
        faces += det.detect(crops[start : start + 64])
        bar.advance(len(crops[start : start + 64]))
    bar.finish()
    found = np.array([f is not None for f in faces], bool)
    if found.any():
        poses[found] = q.head_pose(np.stack([np.asarray(f.landmarks, np.float64) for f in faces if f is not None]))
        scores[found] = [float(f.score) for f in faces if f is not None]
    figures: dict[str, Any] = {"detection": {"images": len(crops), "detected": int(found.sum()), "rate": float(found.mean()),
                                             "confidence": quantiles(scores)}}  # fmt: skip
    if found.any():
        figures["pose"] = {"images": int(found.sum()), **q.pose_spread(poses[found], lab[found])}
    return poses, figures


# Below this share of images with a detected face, the quality figures describe non-faces.
MIN_FACE_RATE = 0.5


def non_face_warning(quality: dict[str, Any]) -> str | None:
    """The report's first line when the detector found a face in fewer than MIN_FACE_RATE of the images."""
    rate = (quality.get("detection") or {}).get("rate")
    if rate is None or rate >= MIN_FACE_RATE:
        return None
    return f"faces found in {100 * rate:.0f}% of images: the figures below describe non-faces"


def reference_crops(data: Any, limit: int, seed: int, side: int, per_person: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Up to ``limit`` reference images as uint8 HWC at ``side`` px: people in a seeded order, at most
    ``per_person`` images each; their labels."""
    from PIL import Image

    order = np.random.default_rng(seed).permutation(int(data.labels.max()) + 1 if len(data) else 0)
    by_person: dict[int, list[int]] = {}
    for i, label in enumerate(data.labels):
        by_person.setdefault(int(label), []).append(i)
    chosen: list[int] = []
    for person in order:
        chosen += by_person.get(int(person), [])[: max(1, per_person)][: limit - len(chosen)]
        if len(chosen) >= limit:
            break
    crops = []
    for i in chosen:
        img = data[i][0].permute(1, 2, 0).numpy()  # the readers decode to uint8 (3, H, W)
        if img.shape[:2] != (side, side):
            img = np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BICUBIC))
        crops.append(np.ascontiguousarray(img, np.uint8))
    return crops, np.asarray(data.labels[chosen], np.int64)


def embed_crops(model: Any, crops: list[np.ndarray], bar: Progress, what: str, chunk: int = 256) -> np.ndarray:
    """Embeddings of template crops, with progress."""
    from synthface.faces.embedders import embed_aligned

    bar.start(len(crops), what)
    out = []
    for start in range(0, len(crops), chunk):
        out.append(embed_aligned(model, crops[start : start + chunk]))
        bar.advance(len(out[-1]))
    bar.finish()
    return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)


def _with_several(labels: np.ndarray) -> np.ndarray:
    """Mask of the images whose label has 2+ images."""
    ids, counts = np.unique(labels, return_counts=True)
    return np.isin(labels, ids[counts >= 2])


def reference_figures(emb: np.ndarray, ref_emb: np.ndarray, ref_labels: np.ndarray, reference: str | None, embedder: str,
                      k: int, threshold: float, duplicate: float) -> dict[str, Any]:  # fmt: skip
    """The distances of the dataset's embeddings to the reference's, and the reference's own figures
    (consistency and spread over its people with 2+ images, separability over all of them)."""
    out: dict[str, Any] = {"path": reference, "embedder": embedder, "images": int(len(ref_emb)),
                           "identities": int(len(np.unique(ref_labels))), "dataset_images": int(len(emb))}  # fmt: skip
    notes = []
    if min(len(emb), len(ref_emb)) >= 2:
        out["frechet_distance"] = q.frechet_distance(emb, ref_emb)
    else:
        notes.append("Frechet distance: needs 2+ images in each set")
    if min(len(emb), len(ref_emb)) > k:
        out["knn"] = q.knn_precision_recall(emb, ref_emb, k)
    else:
        notes.append(f"k-NN precision/recall: needs more than k={k} images in each set")
    several = _with_several(ref_labels)
    figures: dict[str, Any] = {"separability": q.separability(ref_emb, ref_labels, duplicate)}
    if several.any():
        figures["consistency"] = q.consistency(ref_emb[several], ref_labels[several], threshold)
        figures["spread"] = q.embedding_spread(ref_emb[several], ref_labels[several])
    out["figures"] = figures
    if notes:
        out["notes"] = notes
    return out


def quality_figure(stage: Path, quality: dict[str, Any], emb: np.ndarray | None, lab: np.ndarray, cos_centre: np.ndarray,
                     poses: np.ndarray, ref_emb: np.ndarray | None, ref_labels: np.ndarray | None) -> Path | None:  # fmt: skip
    """quality.png: each image vs its identity centre, each identity vs the nearest other (beside the
    reference's, when given), and the head pose distribution; None when there is nothing to draw."""
    panels: list[tuple[Any, ...]] = []
    if emb is not None:
        cons, near = {"this dataset": cos_centre}, {"this dataset": q.nearest_other(emb, lab)[1]}
        if ref_emb is not None and ref_labels is not None:
            several = _with_several(ref_labels)
            if several.any():
                cons["reference"] = q.cos_to_centre(ref_emb[several], ref_labels[several])[1]
            near["reference"] = q.nearest_other(ref_emb, ref_labels)[1]
        thr = quality["consistency"].get("threshold")
        panels.append((cons, "identity consistency: each image vs its identity centre", "cosine",
                       {"threshold": thr} if thr is not None else None, "images"))  # fmt: skip
        dup = quality["separability"].get("duplicate_threshold")
        panels.append((near, "separability: each identity centre vs the nearest other", "cosine",
                       {"duplicate": dup} if dup is not None else None, "identities",
                       "one identity: there is no other identity to compare with"))  # fmt: skip
    found = np.isfinite(poses[:, 0])
    if found.any():
        panels.append(({n: poses[found, i] for i, n in enumerate(("yaw", "pitch", "roll"))},
                       "head pose from five landmarks", "degrees", None, "images"))  # fmt: skip
    return hist_png(stage / "quality.png", *panels) if panels else None


def per_identity(rows: Any, sampled: list[int], lab: np.ndarray, emb: np.ndarray | None, cos_centre: np.ndarray,
                  poses: np.ndarray, quality: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """One record per sampled identity: label, plan identity, images, and its own figures where measured."""
    table_labels = rows.column("label").to_pylist()
    identity_of = dict(zip(table_labels, rows.column("identity").to_pylist()))
    nearest = dict(zip(*q.nearest_other(emb, lab))) if emb is not None and len(lab) else {}
    out = []
    for label in sampled:
        idx = np.flatnonzero(lab == label)
        entry: dict[str, Any] = {"label": label, "identity": int(identity_of[label]), "images": int(len(idx))}
        if emb is not None and len(idx):
            entry["cos_to_centre"] = float(cos_centre[idx].mean())
            near = float(nearest.get(label, np.nan))
            entry["nearest_other"] = near if np.isfinite(near) else None
        if "detection" in quality:
            yaw = poses[idx, 0][np.isfinite(poses[idx, 0])]
            entry["detected"] = int(len(yaw))
            entry["yaw_std"] = float(yaw.std()) if len(yaw) >= 2 else None
            entry["yaw_range"] = [float(yaw.min()), float(yaw.max())] if len(yaw) else None
        out.append(entry)
    return out


def by_yaw(yaw: np.ndarray, limit: int) -> np.ndarray:
    """Indices of up to ``limit`` images in increasing yaw, images without a face (NaN) last. With more
    faces than ``limit`` they are thinned evenly over that order, so the row still spans the
    identity's pose range; faceless images only fill what faces leave free."""
    yaw = np.asarray(yaw, np.float64)
    face = np.flatnonzero(np.isfinite(yaw))
    face = face[np.argsort(yaw[face], kind="stable")]
    if len(face) > limit:
        face = face[np.unique(np.linspace(0, len(face) - 1, limit).round().astype(int))]
    return np.concatenate([face, np.flatnonzero(~np.isfinite(yaw))])[:limit]

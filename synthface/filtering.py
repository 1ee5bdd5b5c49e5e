"""Filtering of generated samples: detection, identity consistency, oversampling, separation, leakage.

Per identity (inside its shard, on the process that renders it):

1. Alignment and detection. Models whose faces sit at a known place (``model.template_scale``,
   native models) are aligned from that template; MTCNN still scores each image when
   ``filter.detector_threshold`` > 0 (at 0 the detector is skipped and ``det_score`` is NaN).
   Other models (Arc2Face) are detected with MTCNN and aligned from its five landmarks; an image
   without a face, or whose score is below ``detector_threshold``, is rejected.
2. Consistency. The filter embedder embeds each sample through its own alignment; ``id_score`` is
   the cosine to the identity anchor: the identity embedding when the filter embedder is the
   conditioning embedder (``anchor: identity``), else a robust centre of the identity's own
   candidates (:func:`robust_centre`). A sample passes at ``id_score >= threshold``.
3. Oversampling. ``ceil(oversample x images_per_identity)`` candidates are rendered, the best
   ``images_per_identity`` passing ones (highest ``id_score``, ties by sample index) are kept; an
   identity with fewer than ``min_images`` passing samples is dropped.

Every candidate's scores and fate go to a per-shard record ``OUT/filter/<shard>.parquet``
(written before the shard, so a committed shard always has its record).

Across identities, once every shard is committed, :mod:`synthface.filtering_final` runs the final
pass (leakage, separation, contiguous labels; :meth:`FilterSelector.finalize`).

The records' on-disk reading is in :mod:`synthface.dataset.filter_records`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from synthface.errors import ConfigError, SynthfaceError
from synthface.dataset.layout import DATA_DIR, FILTER_DIR
from synthface.embeddings import fixed_list_array, l2n
from synthface.filter_settings import FilterSettings
from synthface.filtering_final import FinalReport, finalize
from synthface.selection import Candidate, Selected, Selector


KEPT, SURPLUS, NO_FACE, LOW_DETECTION, LOW_IDENTITY, DROPPED = (
    "kept", "surplus", "no_face", "detector", "identity", "identity_dropped"
)  # fmt: skip


# --------------------------------------------------------------------------- scores


def medoid(x: np.ndarray) -> int:
    """Index of the row with the highest summed cosine to the others (robust to < 50% outliers)."""
    g = x @ x.T
    return int(np.argmax(g.sum(1) - np.diag(g)))


def robust_centre(x: np.ndarray, threshold: float, max_iter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Robust centre of one identity's embeddings and each row's leave-one-out score.

    Start from the medoid; then iterate a hard-re-weighted mean: the centre is the normalised
    mean of the rows whose score is >= ``threshold``, where a row's score is its cosine to the
    mean of the *other* such rows (leave-one-out, so a sample never vouches for itself, which
    matters with few samples). Stops when the set of inliers no longer changes. The medoid start
    makes it robust to up to half of the samples being other people; the mean over the inliers
    is less noisy than the medoid alone. Returns (centre (D,), scores (N,)).

    With one row there is nothing to compare with: its score is 1.
    """
    x = l2n(x)
    n = len(x)
    if n == 0:
        return np.zeros(x.shape[1] if x.ndim == 2 else 0), np.zeros(0)
    if n == 1:
        return x[0].copy(), np.ones(1)
    scores = x @ x[medoid(x)]
    w = scores >= threshold
    if w.sum() < 2:  # the medoid alone: keep its nearest neighbours to have a mean at all
        w = scores >= np.sort(scores)[-2]
    for _ in range(max_iter):
        total = (x * w[:, None]).sum(0)
        loo = total[None, :] - x * w[:, None]
        norms = np.linalg.norm(loo, axis=1)
        scores = np.where(norms > 1e-12, (x * loo).sum(1) / np.maximum(norms, 1e-12), -1.0)
        new = scores >= threshold
        if new.sum() < 2 or np.array_equal(new, w):
            break
        w = new
    centre = l2n((x * w[:, None]).sum(0))
    return centre, scores


def choose_best(passed: np.ndarray, scores: np.ndarray, samples: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the best ``keep`` passing rows: highest score first, ties by sample index; sorted."""
    idx = np.flatnonzero(passed)
    order = np.lexsort((samples[idx], -scores[idx]))
    return np.sort(idx[order[:keep]])


# --------------------------------------------------------------------------- per identity


@dataclass
class Scored:
    """One identity's candidates after detection and embedding."""

    samples: np.ndarray  # (n,) int64
    det: np.ndarray  # (n,) float32 (NaN: not measured)
    ok: np.ndarray  # (n,) bool: a face was found with enough detector confidence
    embeddings: np.ndarray  # (n, D) float32 (NaN rows where not ok)
    landmarks: np.ndarray  # (n, 5, 2)
    status: list[str]


@dataclass
class IdentityRecord:
    identity: int
    samples: np.ndarray
    det_scores: np.ndarray
    id_scores: np.ndarray
    status: list[str]
    kept: int
    passed: int
    reason: str
    centre: np.ndarray  # (D,) float32; zeros where nothing was kept


class FaceScorer:
    """Detection, alignment and embedding of one identity's candidates (the filter's face tools)."""

    def __init__(self, settings: FilterSettings, template_scale: float | None, device: str = "auto",
                 embedder: Any = None, detector: Any = None) -> None:  # fmt: skip
        self.settings = settings
        self.template_scale = template_scale
        self.device = device
        self._embedder = embedder
        self._detector = detector

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from synthface.faces.embedders import get_embedder

            self._embedder = get_embedder(self.settings.embedder, device=self.device)
        return self._embedder

    @property
    def detector(self) -> Any:
        if self._detector is None:
            from synthface.faces.align import FaceDetector

            self._detector = FaceDetector(device=self.device)
        return self._detector

    def needs_detector(self) -> bool:
        return self.template_scale is None or self.settings.detector_threshold > 0

    def score(self, images: Sequence[np.ndarray], samples: Sequence[int]) -> Scored:
        from synthface.faces.align import template_landmarks

        n = len(images)
        det = np.full(n, np.nan, np.float32)
        ok = np.ones(n, bool)
        status = [""] * n
        lms = np.zeros((n, 5, 2), np.float32)
        boxes: np.ndarray | None = None
        if self.template_scale is not None:
            for k, img in enumerate(images):
                lms[k] = template_landmarks(img.shape[0], 1, self.template_scale)[0]
        if self.needs_detector():
            faces = self.detector.detect(list(images))
            if self.template_scale is None:
                boxes = np.zeros((n, 4), np.float32)
            for k, face in enumerate(faces):
                if face is None:
                    det[k], ok[k], status[k] = 0.0, False, NO_FACE
                    continue
                det[k] = face.score
                if self.template_scale is None:
                    lms[k], boxes[k] = face.landmarks, face.box  # type: ignore[index]
                if face.score < self.settings.detector_threshold:
                    ok[k], status[k] = False, LOW_DETECTION
        emb = np.full((n, self.embedder.dim), np.nan, np.float32)
        idx = np.flatnonzero(ok)
        for start in range(0, len(idx), self.settings.batch_size):
            part = idx[start : start + self.settings.batch_size]
            emb[part] = self.embedder.embed([images[k] for k in part], lms[part], None if boxes is None else boxes[part])
        return Scored(np.asarray(samples, np.int64), det, ok, emb, lms, status)


def judge(
    identity: int, scored: Scored, anchor: np.ndarray | None, settings: FilterSettings
) -> tuple[IdentityRecord, np.ndarray]:
    """Consistency + oversampling decision for one identity; returns (record, indices of kept candidates)."""
    n = len(scored.samples)
    id_scores = np.full(n, np.nan, np.float32)
    ok = scored.ok
    if ok.any():
        x = scored.embeddings[ok].astype(np.float64)
        if anchor is None:
            _, s = robust_centre(x, settings.threshold)
        else:
            s = l2n(x) @ l2n(anchor)
        id_scores[ok] = s.astype(np.float32)
    passed = ok & (id_scores >= settings.threshold)
    status = list(scored.status)
    for k in np.flatnonzero(ok & ~passed):
        status[k] = LOW_IDENTITY
    n_passed = int(passed.sum())
    keep = choose_best(passed, id_scores.astype(np.float64), scored.samples, settings.images_per_identity)
    reason = ""
    if n_passed < settings.min_images:
        reason = (
            f"filter: {n_passed} of {n} candidates passed (detector >= {settings.detector_threshold:g}, "
            f"identity cosine >= {settings.threshold:g}); min_images is {settings.min_images}"
        )
        for k in np.flatnonzero(passed):
            status[k] = DROPPED
        keep = np.zeros(0, np.int64)
    else:
        for k in np.flatnonzero(passed):
            status[k] = SURPLUS
        for k in keep:
            status[k] = KEPT
    dim = scored.embeddings.shape[1]
    centre = l2n(scored.embeddings[keep].astype(np.float64).sum(0)).astype(np.float32) if len(keep) else np.zeros(dim, np.float32)
    record = IdentityRecord(identity, scored.samples, scored.det, id_scores, status, len(keep), n_passed, reason, centre)
    return record, keep


# --------------------------------------------------------------------------- the selector


class FilterSelector(Selector):
    """The ``generate`` selection stage with filtering on (see the module docstring)."""

    def __init__(self, settings: FilterSettings, model: Any, identity_embeddings: np.ndarray | None = None,
                 scorer: FaceScorer | None = None, device: str = "auto") -> None:  # fmt: skip
        self.settings = settings
        self.model = model
        self.identity_embeddings = identity_embeddings
        self.scorer = scorer or FaceScorer(settings, model.template_scale, device=device)
        self.records: dict[int, IdentityRecord] = {}

    def candidates_per_identity(self, images_per_identity: int) -> int:
        return self.settings.candidates(images_per_identity)

    def select(self, identity: int, candidates: list[Candidate]) -> list[Selected]:
        scored = self.scorer.score([c.image for c in candidates], [c.sample for c in candidates])
        return self.decide(identity, candidates, scored)

    def decide(self, identity: int, candidates: list[Candidate], scored: Scored) -> list[Selected]:
        """The selection of :meth:`select` once the candidates are scored (detected and embedded)."""
        from synthface.faces.align import warp_face

        anchor = None
        if self.settings.anchor == "identity":
            if self.identity_embeddings is None:
                raise SynthfaceError("filter.anchor=identity needs the identity embeddings")
            anchor = self.identity_embeddings[identity]
            if anchor.shape[0] != scored.embeddings.shape[1]:
                raise ConfigError(
                    f"filter.anchor=identity: the filter embedder gives {scored.embeddings.shape[1]}-d embeddings but "
                    f"identities are {anchor.shape[0]}-d: set filter.anchor=centre"
                )
        record, keep = judge(identity, scored, anchor, self.settings)
        self.records[identity] = record
        size = self.settings.image_size
        out = []
        for k in keep:
            c = candidates[k]
            image = warp_face(c.image, scored.landmarks[k], size=size)
            out.append(Selected(c, image, id_score=float(record.id_scores[k]), det_score=float(record.det_scores[k])))
        return out

    def shard_extra(self, out: Path, shard: Any) -> dict[str, Any]:
        """Write the shard's filter record (before the shard itself); returns what its marker notes."""
        from synthface.dataset.writer import write_parquet

        records = [self.records.pop(i) for i in shard.identities if i in self.records]
        path = Path(out) / FILTER_DIR / f"{shard.name}.parquet"
        dim = self.scorer.embedder.dim if not records else len(records[0].centre)
        sha, size = write_parquet(path, records_table(records, dim, self.settings))
        return {"filter": {"file": f"{FILTER_DIR}/{path.name}", "sha256": sha, "bytes": size}}

    def finalize(self, out: Path, plan: Any, shards: Sequence[Any], config_hash: str) -> "FinalReport | None":
        """The final pass, once every shard is committed (else None: the run then reports the missing ones)."""
        from synthface.dataset.writer import shard_done

        data_dir = Path(out) / DATA_DIR
        if not all(shard_done(data_dir, s, config_hash) is not None for s in shards):
            return None
        return finalize(Path(out), plan, shards, config_hash, self.settings, self.scorer)


def make_selector(recipe: Any, model: Any, plan: Any = None) -> FilterSelector:
    """The selector ``generate`` uses with ``filter.enabled`` (called by synthface.generator.selection)."""
    settings = FilterSettings.from_recipe(recipe, getattr(model, "embedder", None))
    embeddings = None if plan is None else plan.embeddings
    return FilterSelector(settings, model, identity_embeddings=embeddings, device=str(model.device))


# --------------------------------------------------------------------------- records on disk


def records_table(records: Sequence[IdentityRecord], dim: int, settings: FilterSettings | None = None) -> pa.Table:
    centres = np.stack([r.centre for r in records]) if records else np.zeros((0, dim), np.float32)
    table = pa.table(
        {
            "identity": pa.array([r.identity for r in records], pa.int64()),
            "candidates": pa.array([len(r.samples) for r in records], pa.int32()),
            "passed": pa.array([r.passed for r in records], pa.int32()),
            "kept": pa.array([r.kept for r in records], pa.int32()),
            "reason": pa.array([r.reason for r in records], pa.string()),
            "centre": fixed_list_array(centres),
            "samples": pa.array([r.samples.tolist() for r in records], pa.list_(pa.int64())),
            "det_scores": pa.array([r.det_scores.tolist() for r in records], pa.list_(pa.float32())),
            "id_scores": pa.array([r.id_scores.tolist() for r in records], pa.list_(pa.float32())),
            "status": pa.array([list(r.status) for r in records], pa.list_(pa.string())),
        }
    )
    meta = {"settings": settings.as_dict() if settings else {}}
    return table.replace_schema_metadata({b"synthface_filter": json.dumps(meta, sort_keys=True).encode()})

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

Across identities (:func:`finalize`, process 0, after every shard is committed):

4. Leakage (first, so a leaked identity never pushes another out). With a real gallery, an
   identity whose centre's nearest real person is closer than ``leakage`` is dropped; every
   identity's nearest-real cosine is recorded (the distribution).
5. Separation. Identity centres (normalised mean filter embedding of the kept samples) are
   compared in plan order; an identity whose centre is closer than ``merge_threshold`` to an
   earlier kept one is dropped (the earlier one keeps its label), with the reason recorded.
6. Labels. Contiguous labels over the finally kept identities, in plan order. Shards were written
   with provisional labels; each shard whose rows differ from the final ones (dropped identities,
   shifted labels) is rewritten atomically, then its marker
   (:func:`synthface.dataset.writer.relabel_shards`). The pass depends only on the
   committed shards and their records, so it is idempotent: a run killed during it, or a resume
   with any number of processes, ends with the same files as an uninterrupted run.

Longer than most modules: the per-identity stage and the final pass share their thresholds, records
and reasons, and are read together; the records' on-disk reading is in
:mod:`synthface.dataset.filter_records`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from synthface.errors import ConfigError, SynthfaceError
from synthface.dataset.filter_records import FILTER_DIR, leakage_summary, read_records
from synthface.dataset.writer import relabel_shards
from synthface.embeddings import fixed_list, fixed_list_array, l2n
from synthface.faces.embedders import DEFAULT_THRESHOLDS, FALLBACK_THRESHOLD, default_threshold  # noqa: F401 (public here too)
from synthface.identities import plan_labels
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


# --------------------------------------------------------------------------- settings


@dataclass
class FilterSettings:
    embedder: str
    threshold: float
    detector_threshold: float
    oversample: float
    min_images: int
    images_per_identity: int
    anchor: str  # identity | centre
    merge_threshold: float
    leakage: float
    gallery: str | None
    image_size: int
    batch_size: int = 64

    @classmethod
    def from_recipe(cls, recipe: Any, conditioning_embedder: str | None) -> "FilterSettings":
        f = recipe.filter
        threshold = f.threshold if f.threshold is not None else default_threshold(f.embedder)
        same = conditioning_embedder is not None and f.embedder == conditioning_embedder
        anchor = f.anchor if f.anchor != "auto" else ("identity" if same else "centre")
        if anchor == "identity" and not same:
            raise ConfigError(
                f"filter.anchor=identity needs the filter embedder to be the conditioning embedder "
                f"('{conditioning_embedder}', not '{f.embedder}'): set filter.anchor=centre or "
                f"filter.embedder={conditioning_embedder}"
            )
        if f.leakage is not None:
            leakage = f.leakage
        else:
            leakage = recipe.identities.leakage if same else threshold
        m = recipe.images_per_identity
        return cls(
            embedder=f.embedder,
            threshold=float(threshold),
            detector_threshold=float(f.detector_threshold),
            oversample=float(f.oversample),
            min_images=min(int(f.min_images), m),
            images_per_identity=m,
            anchor=anchor,
            merge_threshold=float(f.merge_threshold if f.merge_threshold is not None else threshold),
            leakage=float(leakage),
            gallery=f.gallery or recipe.identities.gallery,
            image_size=int(recipe.output.image_size),
            batch_size=int(f.batch_size),
        )

    def candidates(self, images_per_identity: int) -> int:
        return int(math.ceil(round(self.oversample * images_per_identity, 9)))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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

        data_dir = Path(out) / "data"
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


# --------------------------------------------------------------------------- the final pass


@dataclass
class FinalReport:
    """What the final pass decided, for identities.parquet, summary.json and the dataset card."""

    kept: np.ndarray
    reasons: list[str]
    columns: dict[str, pa.Array] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def extend(self, table: pa.Table) -> pa.Table:
        """identities.parquet with the filter's verdict: kept, reason, label and the per-identity figures."""
        labels = plan_labels(self.kept)
        for name, values in (("kept", pa.array(self.kept)), ("reason", pa.array(self.reasons, pa.string())),
                             ("label", pa.array(labels))):  # fmt: skip
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, values)
            else:
                table = table.append_column(name, values)
        for name, values in self.columns.items():
            table = table.append_column(name, values)
        return table


def _sequential_separation(centres: np.ndarray, active: np.ndarray, limit: float, block: int = 1024,
                           measured: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Keep identities in order unless their centre is closer than ``limit`` to an earlier kept one.

    ``active``: identities that may be kept; ``measured`` (default ``active``): identities whose
    nearest earlier kept identity is reported (a superset, e.g. every identity with a centre).
    Returns (kept mask, nearest earlier kept identity (-1), its cosine (NaN)).
    """
    measured = active if measured is None else measured | active
    n = len(centres)
    kept = np.zeros(n, bool)
    nearest = np.full(n, -1, np.int64)
    near_cos = np.full(n, np.nan, np.float32)
    c = centres.astype(np.float64)
    for start in range(0, n, block):
        stop = min(start + block, n)
        before = np.flatnonzero(kept[:start])
        prev = c[start:stop] @ c[before].T if len(before) else np.zeros((stop - start, 0))
        for k, i in enumerate(range(start, stop)):
            if not measured[i]:
                continue
            inside = np.flatnonzero(kept[start:i]) + start
            cand_idx = np.concatenate([before, inside])
            cos = np.concatenate([prev[k], c[inside] @ c[i]]) if len(cand_idx) else np.zeros(0)
            if len(cos):
                j = int(np.argmax(cos))
                nearest[i], near_cos[i] = int(cand_idx[j]), float(cos[j])
            kept[i] = bool(active[i]) and not (len(cos) and cos.max() > limit)
    return kept, nearest, near_cos


def load_leakage_gallery(path: str, scorer: FaceScorer) -> Any:
    """The real gallery in the filter embedder's space: a `synthface embed` Parquet of that embedder, or a folder."""
    from synthface.gallery import LEAKAGE_GALLERY, FaceEmbedding, load_gallery

    def embed() -> FaceEmbedding:
        return FaceEmbedding(scorer.embedder, detector=scorer.detector)

    return load_gallery(path, embed, scorer.settings.embedder, scorer.embedder.dim, LEAKAGE_GALLERY)


def finalize(out: Path, plan: Any, shards: Sequence[Any], config_hash: str, settings: FilterSettings,
             scorer: FaceScorer | None = None) -> FinalReport:  # fmt: skip
    """Separation, leakage and contiguous labels over every committed shard (see the module docstring)."""
    n = len(plan)
    records = read_records(out)
    candidates = np.zeros(n, np.int32)
    passed = np.zeros(n, np.int32)
    images = np.zeros(n, np.int32)
    reasons = list(plan.reasons)
    seen = np.zeros(n, bool)
    dim = 0
    centres = np.zeros((n, 0), np.float32)
    if records is not None and records.num_rows:
        ids = np.asarray(records.column("identity").to_numpy(), np.int64)
        cen = fixed_list(records.column("centre"))
        dim = cen.shape[1]
        centres = np.zeros((n, dim), np.float32)
        centres[ids] = cen
        candidates[ids] = records.column("candidates").to_numpy()
        passed[ids] = records.column("passed").to_numpy()
        images[ids] = records.column("kept").to_numpy()
        seen[ids] = True
        for i, r in zip(ids, records.column("reason").to_pylist()):
            if r and not reasons[i]:
                reasons[i] = r
    active = np.asarray(plan.kept, bool) & seen & (images > 0)
    for i in np.flatnonzero(np.asarray(plan.kept, bool) & ~seen):
        reasons[i] = reasons[i] or "filter: no record (shard missing)"
    # leakage first: a leaked identity must not push a later one out through separation
    leak_cos = np.full(n, np.nan, np.float32)
    leak_person = [""] * n
    leakage: dict[str, Any] = {"gallery": settings.gallery, "threshold": settings.leakage}
    leaked = np.zeros(n, bool)
    if settings.gallery and dim:
        if scorer is None:
            raise SynthfaceError("the leakage check needs the filter's face tools")
        gallery = load_leakage_gallery(settings.gallery, scorer)
        has = np.flatnonzero(images > 0)
        if len(has):
            sims = centres[has].astype(np.float64) @ gallery.persons.T
            best = sims.argmax(1)
            leak_cos[has] = sims[np.arange(len(has)), best]
            for i, b in zip(has, best):
                leak_person[i] = gallery.names[b]
        leaked = active & (leak_cos > settings.leakage)
        for i in np.flatnonzero(leaked):
            reasons[i] = f"leakage: centre cosine {leak_cos[i]:.3f} to real person '{leak_person[i]}' > {settings.leakage:g}"
        leakage.update(leakage_summary(leak_cos[has], settings.leakage))
        leakage["dropped"] = int(leaked.sum())
        leakage["persons"] = len(gallery.names)
    active &= ~leaked
    if dim:
        # an identity dropped by an earlier final pass (a rerun reads the plan it wrote) is still measured
        sep_kept, nearest, near_cos = _sequential_separation(centres, active, settings.merge_threshold, measured=images > 0)
    else:
        sep_kept, nearest, near_cos = active.copy(), np.full(n, -1, np.int64), np.full(n, np.nan, np.float32)
    for i in np.flatnonzero(active & ~sep_kept):
        reasons[i] = (
            f"separation: centre cosine {near_cos[i]:.3f} to identity {nearest[i]} > filter.merge_threshold "
            f"{settings.merge_threshold:g} (the earlier identity is kept)"
        )
    kept = active & sep_kept
    labels = plan_labels(kept)
    rewritten = relabel_shards(Path(out) / "data", shards, labels, config_hash)
    columns = {
        "filter_candidates": pa.array(candidates),
        "filter_passed": pa.array(passed),
        "images": pa.array(np.where(kept, images, 0).astype(np.int32)),
        "nearest_identity": pa.array(nearest),
        "nearest_identity_cosine": pa.array(near_cos),
        "leakage_cosine": pa.array(leak_cos),
        "leakage_person": pa.array(leak_person, pa.string()),
    }
    dropped_by: dict[str, int] = {}
    for i in range(n):
        if not kept[i] and reasons[i]:
            key = reasons[i].split(":", 1)[0]
            dropped_by[key] = dropped_by.get(key, 0) + 1
    summary = {
        "settings": settings.as_dict(),
        "candidates": int(candidates.sum()),
        "passed": int(passed.sum()),
        "kept_images": int(np.where(kept, images, 0).sum()),
        "acceptance_rate": float(passed.sum() / candidates.sum()) if candidates.sum() else None,
        "identities_planned": n,
        "identities_kept": int(kept.sum()),
        "identities_dropped": dropped_by,
        "shards_relabelled": rewritten,
        "leakage": leakage,
    }
    return FinalReport(kept, reasons, columns, summary)

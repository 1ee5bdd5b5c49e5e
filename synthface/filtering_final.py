"""The filter's final pass over a dataset (process 0, after every shard is committed): leakage,
separation and contiguous labels, from the committed shards and their filter records. The
per-identity stage that writes those records (steps 1-3) is :mod:`synthface.filtering`.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import pyarrow as pa

from synthface.dataset.layout import DATA_DIR
from synthface.dataset.filter_records import leakage_summary, read_records
from synthface.dataset.writer import relabel_shards
from synthface.embeddings import fixed_list
from synthface.errors import SynthfaceError
from synthface.filter_settings import FilterSettings
from synthface.identities import plan_labels


class FaceTools(Protocol):
    """What the final pass uses of the filter's face tools (:class:`synthface.filtering.FaceScorer`):
    the leakage gallery is embedded with the filter's own embedder and detector."""

    settings: FilterSettings

    @property
    def embedder(self) -> Any: ...

    @property
    def detector(self) -> Any: ...


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


def sequential_separation(centres: np.ndarray, active: np.ndarray, limit: float, block: int = 1024,
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


def load_leakage_gallery(path: str, scorer: FaceTools) -> Any:
    """The real gallery in the filter embedder's space: a `synthface embed` Parquet of that embedder, or a folder."""
    from synthface.gallery import LEAKAGE_GALLERY, FaceEmbedding, load_gallery

    def embed() -> FaceEmbedding:
        return FaceEmbedding(scorer.embedder, detector=scorer.detector)

    return load_gallery(path, embed, scorer.settings.embedder, scorer.embedder.dim, LEAKAGE_GALLERY)


def finalize(out: Path, plan: Any, shards: Sequence[Any], config_hash: str, settings: FilterSettings,
             scorer: FaceTools | None = None) -> FinalReport:  # fmt: skip
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
        sep_kept, nearest, near_cos = sequential_separation(centres, active, settings.merge_threshold, measured=images > 0)
    else:
        sep_kept, nearest, near_cos = active.copy(), np.full(n, -1, np.int64), np.full(n, np.nan, np.float32)
    for i in np.flatnonzero(active & ~sep_kept):
        reasons[i] = (
            f"separation: centre cosine {near_cos[i]:.3f} to identity {nearest[i]} > filter.merge_threshold "
            f"{settings.merge_threshold:g} (the earlier identity is kept)"
        )
    kept = active & sep_kept
    labels = plan_labels(kept)
    rewritten = relabel_shards(Path(out) / DATA_DIR, shards, labels, config_hash)
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

"""Embed many image files: threaded decoding, batched detection, batched embedding, optional flip-TTA."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from synthface.embeddings import l2n
from synthface.errors import InputError
from synthface.faces.align import FaceDetector, flip_inputs, load_image, template_landmarks
from synthface.faces.protocol import Embedder
from synthface.runtime import Progress, progress_or_null

OK, NO_FACE, UNREADABLE = "ok", "no_face", "unreadable"
TOO_SMALL = "too small"  # the start of the error of an image under the detector's minimum face size
MIN_ALIGNED_SIDE = 16  # an aligned crop smaller than this holds no face an embedder can read


@dataclass
class EmbedResult:
    """Embeddings of each input (NaN rows where it failed) and why each failed."""

    embeddings: np.ndarray
    status: list[str]
    det_scores: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> np.ndarray:
        return np.array([s == OK for s in self.status], dtype=bool)

    def counts(self) -> dict[str, int]:
        """Images per outcome, each counted once: ``ok``, ``unreadable``, ``too_small`` (status no_face,
        under the detector's minimum face size) and ``no_face`` (the other no-face images)."""
        out = {k: sum(s == k for s in self.status) for k in (OK, NO_FACE, UNREADABLE)}
        out["too_small"] = sum(str(e).startswith(TOO_SMALL) for e in self.errors.values())
        out[NO_FACE] -= out["too_small"]
        return out


def _load(path: str | Path) -> tuple[np.ndarray | None, str | None]:
    try:
        return load_image(path), None
    except InputError as exc:
        return None, str(exc)


def iter_loaded(
    paths: Sequence[str | Path], batch_size: int, workers: int
) -> Iterator[tuple[int, list[tuple[np.ndarray | None, str | None]]]]:
    """Yield (start index, decoded batch), decoding ahead in a thread pool."""
    if workers <= 0:
        for start in range(0, len(paths), batch_size):
            yield start, [_load(p) for p in paths[start : start + batch_size]]
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        starts = list(range(0, len(paths), batch_size))
        pending = [pool.map(_load, paths[s : s + batch_size]) for s in starts[:2]]
        for k, start in enumerate(starts):
            batch = list(pending[k])
            if k + 2 < len(starts):
                nxt = starts[k + 2]
                pending.append(pool.map(_load, paths[nxt : nxt + batch_size]))
            yield start, batch


def embed_files(
    paths: Sequence[str | Path],
    embedder: Embedder,
    detector: FaceDetector | None = None,
    *,
    aligned: bool = False,
    flip: bool = False,
    batch_size: int = 32,
    workers: int = 2,
    progress: Progress | None = None,
) -> EmbedResult:
    """Embed every file; with `aligned`, inputs are ArcFace-template crops and no detector runs.

    With `flip`, the embedding is the normalised sum of the image's and its mirror's embeddings.
    """
    if not aligned and detector is None:
        raise InputError("embedding raw photos needs a face detector (or pass aligned crops)")
    progress = progress_or_null(progress)
    n = len(paths)
    emb = np.full((n, embedder.dim), np.nan, dtype=np.float32)
    det = np.full(n, np.nan, dtype=np.float32)
    status = [UNREADABLE] * n
    errors: dict[int, str] = {}
    progress.start(n, "embedding")
    done_ok = 0
    for start, batch in iter_loaded(paths, batch_size, workers):
        idx, imgs, lms, boxes = [], [], [], []
        readable = [(start + j, img) for j, (img, err) in enumerate(batch) if img is not None]
        for j, (img, err) in enumerate(batch):
            if img is None:
                errors[start + j] = err or "unreadable"
        if aligned:
            for i, img in readable:
                if img.shape[0] != img.shape[1]:
                    status[i], errors[i] = NO_FACE, f"aligned input is not square: {img.shape[1]}x{img.shape[0]}"
                    continue
                if img.shape[0] < MIN_ALIGNED_SIDE:
                    status[i] = NO_FACE
                    errors[i] = f"{TOO_SMALL}: {img.shape[1]}x{img.shape[0]} px, under {MIN_ALIGNED_SIDE} px for an aligned crop"
                    continue
                idx.append(i)
                imgs.append(img)
                lms.append(template_landmarks(img.shape[0], 1)[0])
                boxes.append(None)
                det[i] = 1.0
        elif readable:
            faces = detector.detect([img for _, img in readable])  # type: ignore[union-attr]
            for (i, img), face in zip(readable, faces):
                if face is None:
                    status[i] = NO_FACE
                    if detector.too_small(img):  # type: ignore[union-attr]
                        errors[i] = f"{TOO_SMALL}: {img.shape[1]}x{img.shape[0]} px, under the detector's minimum face size"
                    continue
                idx.append(i)
                imgs.append(img)
                lms.append(face.landmarks)
                boxes.append(face.box)
                det[i] = face.score
        if idx:
            lm_arr = np.stack(lms).astype(np.float32)
            box_arr = None if aligned else np.stack(boxes).astype(np.float32)
            vec = embedder.embed(imgs, lm_arr, box_arr)
            if flip:
                f_imgs, f_lms, f_boxes = flip_inputs(imgs, lm_arr, box_arr)
                vec = l2n(vec + embedder.embed(f_imgs, f_lms, f_boxes), np.float32)
            emb[idx] = vec
            for i in idx:
                status[i] = OK
            done_ok += len(idx)
        progress.advance(len(batch), ok=done_ok)
    progress.finish()
    return EmbedResult(embeddings=emb, status=status, det_scores=det, errors=errors)

"""Align a folder tree of photos to template crops, keeping identity sub-folders; resumable."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from synthface.atomic import atomic_file
from synthface.config import AlignRecipe
from synthface.errors import InputError
from synthface.faces.align import FaceDetector, warp_face
from synthface.faces.batch import iter_loaded
from synthface.files import IMAGE_SUFFIXES, list_images
from synthface.runtime import Progress, progress_or_null


@dataclass
class AlignSummary:
    src: str
    dst: str
    total: int = 0
    aligned: int = 0
    skipped_existing: int = 0
    no_face: int = 0
    too_small: int = 0  # a side under min_face_size: no face can be found
    unreadable: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "src": self.src,
            "dst": self.dst,
            "total": self.total,
            "aligned": self.aligned,
            "skipped_existing": self.skipped_existing,
            "no_face": self.no_face,
            "too_small": self.too_small,
            "unreadable": self.unreadable,
            "failures": self.failures,
        }


def _atomic_save(array: np.ndarray, path: Path, fmt: str) -> None:
    img = Image.fromarray(array)
    with atomic_file(path) as handle:
        if fmt == "jpeg":
            img.save(handle, format="JPEG", quality=95)
        else:
            img.save(handle, format="PNG", compress_level=1)


def check_folders(src: Path, dst: Path) -> None:
    """Refuse an output folder that is the input folder or inside it (touches nothing)."""
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise InputError("the output folder must not be the input folder or inside it")


def align_folder(src: str | Path, dst: str | Path, recipe: AlignRecipe, progress: Progress | None = None) -> AlignSummary:
    """Detect the chosen face of every image under `src` and write its aligned crop under `dst`.

    Existing outputs are kept (a rerun resumes); files are written atomically.
    """
    src, dst = Path(src), Path(dst)
    check_folders(src, dst)
    files = list_images(src)
    if not files:
        raise InputError(f"no images found under {src} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    ext = ".png" if recipe.image_format == "png" else ".jpg"
    summary = AlignSummary(src=str(src), dst=str(dst), total=len(files))
    targets = [dst / f.relative_to(src).with_suffix(ext) for f in files]
    todo = [(f, t) for f, t in zip(files, targets) if not t.exists()]
    summary.skipped_existing = len(files) - len(todo)
    progress = progress_or_null(progress)
    progress.start(len(files), "aligning")
    progress.advance(summary.skipped_existing)
    if not todo:
        progress.finish()
        return summary
    detector = FaceDetector(
        device=recipe.device,
        min_face_size=recipe.min_face_size,
        select=recipe.select,
        score_threshold=recipe.detector_threshold,
    )
    paths = [f for f, _ in todo]
    for start, batch in iter_loaded(paths, recipe.batch_size, recipe.workers):
        readable = []
        for j, (img, err) in enumerate(batch):
            rel = str(paths[start + j].relative_to(src))
            if img is None:
                summary.unreadable += 1
                summary.failures[rel] = "unreadable"
            else:
                readable.append((start + j, img))
        faces = detector.detect([img for _, img in readable]) if readable else []
        for (i, img), face in zip(readable, faces):
            rel = str(paths[i].relative_to(src))
            if face is None and detector.too_small(img):
                summary.too_small += 1
                summary.failures[rel] = "too_small"
                continue
            if face is None:
                summary.no_face += 1
                summary.failures[rel] = "no_face"
                continue
            crop = warp_face(img, face.landmarks, size=recipe.image_size, scale=recipe.template_scale)
            _atomic_save(crop, todo[i][1], recipe.image_format)
            summary.aligned += 1
        progress.advance(len(batch), aligned=summary.aligned, no_face=summary.no_face)
    progress.finish()
    if summary.aligned == 0 and summary.skipped_existing == 0:
        raise InputError(
            f"no face was aligned in {src} (no face {summary.no_face}, too small {summary.too_small}, unreadable "
            f"{summary.unreadable} of {summary.total}): check it holds photos of faces, or lower "
            "--set detector_threshold=0.7 / --set min_face_size=12 for small or hard faces"
        )
    return summary

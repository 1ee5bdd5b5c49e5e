"""Real faces as embeddings: galleries (a `synthface embed` Parquet file or a folder of faces), and embedding images.

A :class:`Gallery` holds every image's embedding (to fit a distribution) and one mean per person
(for leakage checks). :func:`load_gallery` is the one loader; its :class:`GalleryUse` says what the
gallery is for (identity planning, the filter's leakage check) in the words of its errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from synthface.embeddings import fixed_list, l2n
from synthface.errors import ConfigError, InputError, ModelMismatchError, SynthfaceError
from synthface.files import IMAGE_SUFFIXES, images_in, list_images

ImageEmbedFn = Callable[[list[np.ndarray]], np.ndarray]
"""HxWx3 uint8 images -> (B, D) L2-normalised float32 embeddings, NaN rows where no face was found."""


@dataclass
class Gallery:
    """Real embeddings: every image (to fit a distribution) and one mean per person (for leakage)."""

    embeddings: np.ndarray  # (n, D) float64 normalised
    persons: np.ndarray  # (p, D) float64 normalised per-person means
    names: list[str]
    embedder: str | None = None
    source: str = ""

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def from_rows(cls, embeddings: np.ndarray, identities: Sequence[str] | None, embedder: str | None, source: str) -> "Gallery":
        emb = l2n(embeddings)
        if identities is None:
            names = [str(i) for i in range(len(emb))]
            return cls(emb, emb.copy(), names, embedder, source)
        names = sorted(set(identities))
        index = {n: k for k, n in enumerate(names)}
        sums = np.zeros((len(names), emb.shape[1]))
        np.add.at(sums, [index[n] for n in identities], emb)
        return cls(emb, l2n(sums), names, embedder, source)


def _parquet_embedder_name(schema: Any) -> str | None:
    meta = schema.metadata or {}
    for key in (b"synthface", b"embedder"):
        raw = meta.get(key)
        if raw is None:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")
        if isinstance(value, dict) and isinstance(value.get("embedder"), str):
            return value["embedder"]
        if isinstance(value, str):
            return value
    return None


def read_embeddings_parquet(path: str | Path) -> Gallery:
    """Real embeddings written by `synthface embed`: columns path, identity, embedding (fixed-size list)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise InputError(
            f"cannot read embeddings Parquet {path} ({type(exc).__name__}): write it with `synthface embed`"
        ) from None
    if "embedding" not in table.column_names:
        raise InputError(f"{path} has no 'embedding' column: write it with `synthface embed`")
    col = table.column("embedding").combine_chunks()
    if table.num_rows == 0:
        raise InputError(f"{path} holds no embeddings")
    if pa.types.is_fixed_size_list(col.type):
        emb = fixed_list(col, dtype=np.float64)
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        rows = col.to_pylist()
        if len({len(r) for r in rows if r is not None}) != 1 or any(r is None for r in rows):
            raise InputError(f"{path}: embeddings have differing lengths or missing values")
        emb = np.asarray(rows, np.float64)
    else:
        raise InputError(f"{path}: 'embedding' must be a list of floats, not {col.type}")
    emb = np.asarray(emb, np.float64)
    good = np.isfinite(emb).all(axis=1) & (np.linalg.norm(emb, axis=1) > 0)
    ids = None
    if "identity" in table.column_names:
        ids = [str(v) for v, g in zip(table.column("identity").to_pylist(), good) if g]
    return Gallery.from_rows(emb[good], ids, _parquet_embedder_name(table.schema), str(path))


def reference_groups(folder: str | Path) -> list[tuple[str, list[Path]]]:
    """Identities of a reference folder: one per sub-folder (its images), else one per image file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"reference folder not found: {folder}")
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and list_images(d))
    if subdirs:
        return [(d.name, list_images(d)) for d in subdirs]
    files = images_in(folder)
    if not files:
        raise InputError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) nor sub-folders of images")
    return [(p.name, [p]) for p in files]


def embed_paths(paths: Sequence[Path], embed: ImageEmbedFn, batch_size: int = 32) -> np.ndarray:
    """(len(paths), D) embeddings of image files; NaN rows where no face was found."""
    from synthface.faces.align import load_image

    out = []
    for start in range(0, len(paths), batch_size):
        out.append(np.asarray(embed([load_image(p) for p in paths[start : start + batch_size]]), np.float64))
    return np.concatenate(out) if out else np.zeros((0, 0))


def embed_groups(groups: list[tuple[str, list[Path]]], embed: ImageEmbedFn, batch_size: int = 32) -> tuple[np.ndarray, list[str]]:
    """Per-image embeddings of reference groups and each row's group name (faceless images dropped)."""
    paths = [p for _, files in groups for p in files]
    names = [n for n, files in groups for _ in files]
    emb = embed_paths(paths, embed, batch_size)
    good = np.isfinite(emb).all(axis=1) if len(emb) else np.zeros(0, bool)
    return emb[good], [n for n, g in zip(names, good) if g]


@dataclass(frozen=True)
class GalleryUse:
    """What a gallery is loaded for, in the words of its errors: ``label`` names it, ``setting`` is the
    recipe key that points at it, ``user`` and ``user_dim`` say what its embeddings must match,
    ``fix`` how to make one that does, ``error`` the exception a mismatch raises."""

    label: str
    setting: str
    user: str
    user_dim: str
    fix: str
    error: type[SynthfaceError]


IDENTITY_GALLERY = GalleryUse(
    "gallery", "identities.gallery", "the model is conditioned on", "the model expects",
    "embed the gallery with `synthface embed --set embedder={embedder}`", ModelMismatchError,
)  # fmt: skip
LEAKAGE_GALLERY = GalleryUse(
    "leakage gallery", "filter.gallery", "the filter embedder is", "the filter embedder gives",
    "pass filter.gallery=<a `synthface embed --set embedder={embedder}` Parquet or a folder of faces>", ConfigError,
)  # fmt: skip


def load_gallery(
    path: str | Path, embed: Callable[[], ImageEmbedFn], embedder: str, dim: int, use: GalleryUse = IDENTITY_GALLERY
) -> Gallery:
    """Real embeddings from a `synthface embed` Parquet file or a folder of face images (embedded with
    ``embed()``), which must be ``dim``-d embeddings of ``embedder``."""
    path = Path(path)
    fix = use.fix.format(embedder=embedder)
    if path.is_file():
        gallery = read_embeddings_parquet(path)
        if gallery.embedder and gallery.embedder != embedder:
            raise use.error(f"{use.label} {path} holds '{gallery.embedder}' embeddings but {use.user} '{embedder}': {fix}")
    elif path.is_dir():
        emb, names = embed_groups(reference_groups(path), embed())
        if len(emb) == 0:
            raise InputError(f"no face was found in any image of the {use.label} folder {path}")
        gallery = Gallery.from_rows(emb, names, embedder, str(path))
    else:
        raise InputError(f"{use.setting} not found: {path} (a `synthface embed` Parquet file or a folder of faces)")
    if gallery.dim != dim:
        raise use.error(f"{use.label} {path} holds {gallery.dim}-d embeddings but {use.user_dim} {dim} ({embedder}): {fix}")
    return gallery


class FaceEmbedding:
    """An :data:`ImageEmbedFn` from an Embedder: landmarks from a detector, or from the template of
    already-aligned crops (``template_scale``: 1 = tight ArcFace crop, 0.6 = native loose crop)."""

    def __init__(self, embedder: Any, detector: Any = None, template_scale: float | None = None) -> None:
        if detector is None and template_scale is None:
            raise InputError("FaceEmbedding needs a face detector or a template scale")
        self.embedder = embedder
        self.detector = detector
        self.template_scale = template_scale
        self.name = embedder.name
        self.dim = embedder.dim

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        from synthface.faces.align import template_landmarks

        out = np.full((len(images), self.dim), np.nan, np.float32)
        if not images:
            return out
        if self.detector is not None:
            faces = self.detector.detect(images)
            idx = [k for k, f in enumerate(faces) if f is not None]
            lms = np.stack([faces[k].landmarks for k in idx]) if idx else np.zeros((0, 5, 2), np.float32)
            boxes = np.stack([faces[k].box for k in idx]) if idx else None
        else:
            idx = list(range(len(images)))
            lms = np.stack([template_landmarks(img.shape[0], 1, self.template_scale)[0] for img in images])  # type: ignore[arg-type]
            boxes = None
        if idx:
            out[idx] = self.embedder.embed([images[k] for k in idx], lms, boxes)
        return out

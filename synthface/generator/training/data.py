"""Training faces for the native generator: model-sized crops plus cached conditioning embeddings.

A source is an ImageFolder of faces (one sub-folder per identity) or synthface shards. Each image
is read once at its own resolution, embedded there by the conditioning embedder (through the
embedder's own alignment, from the image's template landmarks or, for photos, detected ones), and
cut to the model's crop:

* ``tight`` inputs are 112x112 ArcFace-template crops (what ``synthface align`` writes and shards
  store). They can only be resized, so they train a tight-crop model; a loose-crop model needs
  context around the face that a tight crop does not have.
* ``loose`` inputs are already aligned with the ArcFace points scaled by ``data.template_scale``.
* ``photos`` are detected (MTCNN) and warped to the model's crop.

Results are cached under the cache folder, keyed by a hash of the inputs (file names, sizes and
mtimes, or shard checksums), the embedder, and the crop geometry: ``faces-HASH.parquet`` (one row per
input: key, identity, status, embedding) and ``crops-HASH.npy`` (uint8 crops of the usable rows).
Images that cannot be read (or, for photos, hold no face) are skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from synthface.atomic import atomic_file
from synthface.embeddings import fixed_list, fixed_list_array, l2n
from synthface.errors import ConfigError, InputError
from synthface.faces.align import template_for
from synthface.runtime import Progress, progress_or_null

CACHE_VERSION = 1
OK, UNREADABLE, NO_FACE, BAD_SHAPE = "ok", "unreadable", "no_face", "bad_shape"


@dataclass
class SourceItems:
    """What a source holds: one entry per image, in a fixed order."""

    root: Path
    kind: str  # "folder" | "shards"
    keys: list[str]
    identities: list[str]
    fingerprint: list[str]
    fetch: Callable[[int], Any]  # index -> path or encoded bytes

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class FaceData:
    """Usable training faces: crops (N, S, S, 3) uint8, labels, per-image and per-identity embeddings."""

    crops: np.ndarray
    labels: np.ndarray
    identities: list[str]  # label -> identity name
    image_embeddings: np.ndarray  # (N, D)
    identity_embeddings: np.ndarray  # (num_identities, D), mean of the identity's images, L2-normalised
    keys: list[str]
    form: str
    template_scale: float  # ArcFace points scale of the crops (1.0 = tight)
    cache_key: str
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def num_identities(self) -> int:
        return len(self.identities)

    def conditions(self, mode: str) -> np.ndarray:
        """(N, D) conditioning vector of every image: its identity's mean, or its own embedding."""
        if mode == "identity":
            return self.identity_embeddings[self.labels]
        if mode == "image":
            if not np.isfinite(self.image_embeddings).all():
                raise ConfigError("data.condition=image needs every image embedded: unset data.embed_per_identity")
            return self.image_embeddings
        raise ConfigError(f"unknown data.condition '{mode}': use identity or image")

    def summary(self) -> dict[str, Any]:
        return {
            "images": len(self),
            "identities": self.num_identities,
            "form": self.form,
            "template_scale": self.template_scale,
            "skipped": {k: v for k, v in self.counts.items() if k not in (OK, "embedded")},
            "embedded": self.counts.get("embedded", len(self)),
            "cache_key": self.cache_key,
        }


# --------------------------------------------------------------------------- sources


def list_source(src: str | Path, people: Sequence[str] | None = None, min_images: int = 1) -> SourceItems:
    """List a folder of identity sub-folders or committed synthface shards (errors are one line)."""
    from synthface.dataset.reader import ImageFolderFaces, ShardFaces
    from synthface.dataset.shards import data_folder
    from synthface.dataset.writer import marker_path

    root = Path(src)
    if not root.exists():
        raise InputError(f"training data {root} does not exist: pass a folder of identity sub-folders or shards")
    if not root.is_dir():
        raise InputError(f"training data {root} is a file: pass a folder of identity sub-folders or synthface shards")
    if any(data_folder(root).glob("*.parquet")):
        if people is not None:
            raise InputError("data.people selects identity sub-folders; it does not apply to shards")
        shards = ShardFaces(root, None, min_images)
        files = shards.shards
        offsets = shards._offsets
        keys, fingerprint = [], []
        for raw in shards.index:
            s = int(np.searchsorted(offsets, raw, side="right") - 1)
            keys.append(f"{files[s].name}:{int(raw - offsets[s])}")
        for path in files:
            marker = marker_path(path)
            st = path.stat()
            fingerprint.append(f"{path.name}:{st.st_size}:{marker.read_text(encoding='utf-8') if marker.is_file() else ''}")
        names = [str(v) for v in shards.class_values]
        return SourceItems(
            root,
            "shards",
            keys,
            [names[label] for label in shards.labels],
            fingerprint,
            lambda i: shards.encoded(int(shards.index[i])),
        )
    folder = ImageFolderFaces(root, None, min_images, people=people)
    keys, fingerprint, identities = [], [], []
    for i, raw in enumerate(folder.index):
        path = folder.paths[int(raw)]
        rel = path.relative_to(root).as_posix()
        st = path.stat()
        keys.append(rel)
        fingerprint.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
        identities.append(folder.identities[int(folder.class_values[folder.labels[i]])])
    return SourceItems(root, "folder", keys, identities, fingerprint, lambda i: folder.paths[int(folder.index[i])])


def detect_form(items: SourceItems, form: str, probe: int = 16) -> str:
    """Resolve data.form 'auto': shards and square 112 px folders hold tight template crops."""
    if form != "auto":
        return form
    if items.kind == "shards":
        return "tight"
    step = max(1, len(items) // probe)
    sizes = set()
    for i in range(0, len(items), step)[:probe]:
        try:
            with Image.open(items.fetch(i)) as img:
                sizes.add(img.size)
        except (OSError, ValueError):
            continue
    if sizes == {(112, 112)}:
        return "tight"
    shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3]) or "unreadable"
    raise ConfigError(
        f"cannot tell what the images in {items.root} are ({shown}): state it with --set data.form=tight "
        "(ArcFace template crops), loose (with --set data.template_scale=S) or photos (detect and align)"
    )


# --------------------------------------------------------------------------- geometry


def crop_box(size: int, in_scale: float, out_scale: float) -> tuple[float, float, float, float]:
    """The square of an aligned ``size`` crop (points scaled by ``in_scale``) that a crop at ``out_scale`` covers."""
    side = size * in_scale / out_scale
    lo = (size - side) / 2.0
    return (lo, lo, lo + side, lo + side)


def model_crop(image: np.ndarray, in_scale: float, out_scale: float, size: int) -> np.ndarray:
    """Resize an aligned crop to the model's crop (antialiased), cutting the centre when zooming in."""
    h, w = image.shape[:2]
    box = crop_box(w, in_scale, out_scale)
    pil = Image.fromarray(image)
    return np.asarray(pil.resize((size, size), Image.Resampling.LANCZOS, box=box), dtype=np.uint8)


def check_geometry(form: str, in_scale: float, out_scale: float, crop: str) -> None:
    if form == "photos":
        return
    if out_scale < in_scale - 1e-6:
        what = "tight 112x112 template crops" if form == "tight" else f"crops with template scale {in_scale}"
        raise ConfigError(
            f"the training data holds {what}, with no context around the face for a {crop}-crop model at template "
            f"scale {out_scale}: set model.crop=tight, or train on loose crops or photos (data.form=photos)"
        )


# --------------------------------------------------------------------------- hashing and cache


def cache_key(
    items: SourceItems, embedder: str, form: str, in_scale: float, out_scale: float, size: int, per_identity: int | None = None
) -> str:
    digest = hashlib.sha256()
    head = {"v": CACHE_VERSION, "embedder": embedder, "form": form, "in": in_scale, "out": out_scale, "size": size}
    if per_identity is not None:
        head["per_identity"] = int(per_identity)
    digest.update(json.dumps(head, sort_keys=True).encode())
    for fp in items.fingerprint:
        digest.update(fp.encode())
        digest.update(b"\0")
    for key in items.keys:
        digest.update(key.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Save ``array`` as ``path`` (.npy) so a crash leaves the old file or the new one."""
    with atomic_file(path) as handle:
        np.save(handle, array)


_atomic_save_npy = atomic_save_npy  # the former private name, until training/loop.py imports atomic_save_npy


def _write_table(
    path: Path, keys: list[str], identities: list[str], status: list[str], emb: np.ndarray, embedder: str | None = None
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = emb.shape[1]
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "identity": pa.array(identities, pa.string()),
            "status": pa.array(status, pa.string()),
            "embedding": fixed_list_array(emb),
        }
    )
    if embedder is not None:  # lets the cache serve as an identity gallery (identities.py checks the embedder)
        table = table.replace_schema_metadata({b"synthface": json.dumps({"embedder": embedder, "dim": dim}).encode()})
    with atomic_file(path) as handle:
        pq.write_table(table, handle)


def _read_table(path: Path) -> tuple[list[str], list[str], list[str], np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return (
        table.column("key").to_pylist(),
        table.column("identity").to_pylist(),
        table.column("status").to_pylist(),
        fixed_list(table.column("embedding")),
    )


# --------------------------------------------------------------------------- building


def embed_selection(identities: Sequence[str], per_identity: int | None) -> np.ndarray | None:
    """Which items to embed: all (None), or ``per_identity`` of each identity spread evenly over its items."""
    if per_identity is None:
        return None
    mask = np.zeros(len(identities), dtype=bool)
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(identities):
        groups.setdefault(name, []).append(i)
    for members in groups.values():
        picks = np.unique(np.linspace(0, len(members) - 1, min(per_identity, len(members))).round().astype(int))
        mask[[members[k] for k in picks]] = True
    return mask


def _prepare(
    items: SourceItems,
    embedder: Any,
    form: str,
    in_scale: float,
    out_scale: float,
    size: int,
    batch_size: int,
    workers: int,
    device: str,
    progress: Progress,
    embed_mask: np.ndarray | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read, embed and crop every item: (status per item, embeddings (N, D), crops of the ok ones).

    Embeddings are NaN where an item failed or is left out by ``embed_mask``.
    """
    from synthface.faces.align import warp_face
    from synthface.faces.batch import iter_loaded

    detector = None
    if form == "photos":
        from synthface.faces.align import FaceDetector

        detector = FaceDetector(device=device)
    n = len(items)
    status = [UNREADABLE] * n
    emb = np.full((n, embedder.dim), np.nan, np.float32)
    crops: list[np.ndarray] = []
    sources = [items.fetch(i) for i in range(n)]
    progress.start(n, "reading and embedding faces")
    for start, batch in iter_loaded(sources, batch_size, workers):
        idx, imgs, lms, boxes = [], [], [], []
        readable = [(start + j, img) for j, (img, _err) in enumerate(batch) if img is not None]
        faces = detector.detect([img for _, img in readable]) if detector is not None and readable else None
        for k, (i, img) in enumerate(readable):
            if detector is not None:
                face = faces[k]
                if face is None:
                    status[i] = NO_FACE
                    continue
                lm, box = face.landmarks.astype(np.float32), face.box.astype(np.float32)
            else:
                h, w = img.shape[:2]
                if h != w:
                    status[i] = BAD_SHAPE
                    continue
                lm, box = template_for(w, in_scale), None
            idx.append(i)
            imgs.append(img)
            lms.append(lm)
            boxes.append(box)
        if idx:
            sel = [k for k, i in enumerate(idx) if embed_mask is None or embed_mask[i]]
            if sel:
                box_arr = np.stack([boxes[k] for k in sel]) if detector is not None else None
                lm_arr = np.stack([lms[k] for k in sel]).astype(np.float32)
                emb[[idx[k] for k in sel]] = embedder.embed([imgs[k] for k in sel], lm_arr, box_arr)
            for i, img, lm in zip(idx, imgs, lms):
                status[i] = OK
                if detector is not None:
                    big = warp_face(img, lm, size=max(size, 128), scale=out_scale)
                    crops.append(model_crop(big, out_scale, out_scale, size))
                else:
                    crops.append(model_crop(img, in_scale, out_scale, size))
        progress.advance(len(batch), ok=sum(s == OK for s in status[: start + len(batch)]))
    progress.finish()
    stacked = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    return status, emb, stacked


def load_faces(
    src: str | Path,
    embedder_name: str,
    *,
    image_size: int,
    crop: str,
    model_scale: float,
    form: str = "auto",
    data_scale: float = 0.6,
    people: Sequence[str] | None = None,
    min_images: int = 1,
    cache_dir: str | Path,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "auto",
    embedder: Any = None,
    progress: Progress | None = None,
    embed_per_identity: int | None = None,
) -> FaceData:
    """The training faces of ``src`` as model crops with embeddings, from the cache when it is current.

    ``embed_per_identity`` embeds only that many images of each identity (spread over its images);
    their mean is the identity's conditioning and every image still trains. Rows that were not
    embedded have NaN image embeddings.
    """
    progress = progress_or_null(progress)
    items = list_source(src, people, min_images)
    form = detect_form(items, form)
    in_scale = 1.0 if form == "tight" else float(data_scale)
    out_scale = 1.0 if crop == "tight" else float(model_scale)
    check_geometry(form, in_scale, out_scale, crop)
    key = cache_key(items, embedder_name, form, in_scale, out_scale, image_size, embed_per_identity)
    cache = Path(cache_dir)
    table_path, crops_path = cache / f"faces-{key}.parquet", cache / f"crops-{key}.npy"
    if table_path.is_file() and crops_path.is_file():
        keys, identities, status, emb = _read_table(table_path)
        crops = np.load(crops_path)
    else:
        if embedder is None:
            from synthface.faces.embedders import get_embedder

            embedder = get_embedder(embedder_name, device=device)
        mask = embed_selection(items.identities, embed_per_identity)
        status, emb, crops = _prepare(
            items, embedder, form, in_scale, out_scale, image_size, batch_size, workers, device, progress, mask
        )
        keys, identities = items.keys, items.identities
        cache.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(crops_path, crops)
        _write_table(table_path, keys, identities, status, emb, embedder_name)  # last: its presence marks the cache complete
    ok = np.array([s == OK for s in status], dtype=bool)
    counts = {s: int(sum(x == s for x in status)) for s in (OK, UNREADABLE, NO_FACE, BAD_SHAPE)}
    crop_row = np.cumsum(ok) - 1  # crops hold the ok rows only
    embedded = ok & np.isfinite(emb).all(axis=1)
    # an identity is usable when at least one of its images was embedded
    usable = {identities[i] for i in np.flatnonzero(embedded)}
    keep = ok & np.array([identities[i] in usable for i in range(len(status))], dtype=bool)
    counts["no_embedded_image"] = int((ok & ~keep).sum())
    counts["embedded"] = int(embedded.sum())
    if not keep.any():
        raise InputError(f"none of the {len(status)} images in {src} could be used (unreadable or no face)")
    rows = np.flatnonzero(keep)
    names, labels = np.unique(np.array([identities[i] for i in rows]), return_inverse=True)
    image_emb = emb[rows]
    sums = np.zeros((len(names), image_emb.shape[1]), np.float64)
    finite = np.isfinite(image_emb).all(axis=1)
    np.add.at(sums, labels[finite], image_emb[finite])
    id_emb = l2n(sums).astype(np.float32)
    crops = crops[crop_row[rows]]
    return FaceData(
        crops=crops,
        labels=labels.astype(np.int64),
        identities=[str(n) for n in names],
        image_embeddings=image_emb,
        identity_embeddings=id_emb,
        keys=[keys[i] for i in rows],
        form=form,
        template_scale=out_scale,
        cache_key=key,
        counts=counts,
    )

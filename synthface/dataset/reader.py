"""Torch Datasets of labelled face images: synthface Parquet shards, ImageFolder trees, InsightFace RecordIO.

Every reader yields ``(image, label)`` with ``image`` a uint8 tensor (3, S, S) (decoded,
RGB, resized to ``size`` when given) and ``label`` a contiguous int in
``[0, num_classes)``. The class count is read from the data (rows with a negative
label are skipped). ``min_images`` drops identities with fewer images (labels are
renumbered).

Formats:

* shards: ``DIR/data/*.parquet`` (or the Parquet files directly in ``DIR``), rows
  ``image {bytes, path}``, ``label``, ...; only shards whose JSON commit marker
  (``data/.train-SSSSS-of-NNNNN.json``, :mod:`synthface.dataset.shards`) exists are
  read, and a marker's ``sha256`` (when present) must match the file.
* ImageFolder: ``DIR/<identity>/<image>.{png,jpg,jpeg,webp,bmp}``, one sub-folder per
  identity (what ``synthface align`` writes and arcface_torch reads); ``people``
  restricts it to the named sub-folders.
* RecordIO: ``train.rec`` + ``train.idx`` as insightface ships them. Read with no
  MXNet: each record is magic ``0xced7230a``, a uint32 (3-bit continuation flag,
  29-bit length), the payload padded to 4 bytes (a payload holding the magic is
  split into parts that the reader joins back). An image payload starts with the
  ``IRHeader`` struct ``<IfQQ`` (flag, label, id, id2); ``flag > 0`` means ``flag``
  float32 labels follow. A record 0 with ``flag > 0`` and no image is insightface's
  header whose ``label[0]`` is the first non-image key: images are keys
  ``1 .. label[0]-1`` (later keys hold per-identity ranges); without it every key is an image.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from synthface.dataset.shards import committed_shards, data_folder
from synthface.errors import InputError
from synthface.files import images_in

RECORDIO_MAGIC = 0xCED7230A
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)


def decode_face(data: bytes | Path, size: int | None = None, what: str = "image") -> torch.Tensor:
    """Decode encoded bytes or a file to a uint8 (3, H, W) RGB tensor, resized to (size, size) if given;
    through the bounded loader (:func:`synthface.faces.align.load_image`: a pixel cap, JPEG draft downscaling)."""
    from PIL import Image

    from synthface.faces.align import load_image

    try:
        array = load_image(bytes(data) if isinstance(data, memoryview) else data)
    except InputError as exc:
        raise InputError(f"cannot decode {what}: {exc}; check the file is a valid JPEG/PNG image") from None
    if size is not None and array.shape[:2] != (size, size):
        array = np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class FaceImages(Dataset):
    """Base of the readers: encoded images plus contiguous labels; subclasses implement ``encoded``."""

    def __init__(self, raw_labels: np.ndarray, size: int | None = None, min_images: int = 1, name: str = "") -> None:
        raw_labels = np.asarray(raw_labels, dtype=np.int64)
        keep = raw_labels >= 0  # a negative label marks a row that belongs to no identity
        if min_images > 1 and keep.any():
            values, counts = np.unique(raw_labels[keep], return_counts=True)
            keep &= np.isin(raw_labels, values[counts >= min_images])
        self.index = np.flatnonzero(keep)
        self.name = name
        kept = raw_labels[self.index]
        if len(kept) == 0:
            raise InputError(
                f"training set {name or ''} has no images"
                + (f" of identities with >= {min_images} images (lower train.min_images)" if min_images > 1 else "")
            )
        self.class_values, self.labels = np.unique(kept, return_inverse=True)
        self.labels = self.labels.astype(np.int64)
        self.num_classes = int(len(self.class_values))
        self.size = size

    def __len__(self) -> int:
        return int(len(self.index))

    def encoded(self, raw_index: int) -> bytes | Path:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        raw = int(self.index[i])
        return decode_face(self.encoded(raw), self.size, what=f"{self.name} item {raw}"), int(self.labels[i])

    def describe(self) -> dict:
        return {"images": len(self), "identities": self.num_classes, "format": type(self).__name__}


# --------------------------------------------------------------------------- ImageFolder


def read_people(spec: str | Path) -> list[str]:
    """People names from a text file (one per line) or ``FILE.json:KEY`` (a list under KEY)."""
    text = str(spec)
    key = None
    path = Path(text)
    if not path.is_file() and ":" in text:
        head, _, key = text.rpartition(":")
        path = Path(head)
    if not path.is_file():
        raise InputError(f"people list {spec} not found: pass a text file (one name per line) or FILE.json:KEY")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read people list {path}: {exc}") from None
        if key is not None:
            if not isinstance(data, dict) or key not in data:
                raise InputError(f"people list {path} has no key '{key}'")
            data = data[key]
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise InputError(f"people list {spec} must be a JSON list of names (use FILE.json:KEY to pick one)")
        return list(data)
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class ImageFolderFaces(FaceImages):
    """One sub-folder per identity; labels follow the sorted folder names."""

    def __init__(
        self,
        root: str | Path,
        size: int | None = None,
        min_images: int = 1,
        people: Iterable[str] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"image folder {self.root} does not exist")
        wanted = set(people) if people is not None else None
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and (wanted is None or p.name in wanted))
        if wanted is not None and not folders:
            raise InputError(f"none of the {len(wanted)} listed people has a folder in {self.root}")
        self.paths: list[Path] = []
        labels: list[int] = []
        self.identities: list[str] = []
        for folder in folders:
            files = images_in(folder)
            if not files:
                continue
            label = len(self.identities)
            self.identities.append(folder.name)
            self.paths += files
            labels += [label] * len(files)
        if not self.paths:
            raise InputError(f"no images found in {self.root}: expected one sub-folder of images per identity")
        super().__init__(np.array(labels), size, min_images, name=str(self.root))

    def encoded(self, raw_index: int) -> Path:
        return self.paths[raw_index]


# --------------------------------------------------------------------------- Parquet shards


class ShardFaces(FaceImages):
    """Rows of committed synthface Parquet shards (``image.bytes`` or ``image.path``, ``label``)."""

    def __init__(
        self, directory: str | Path, size: int | None = None, min_images: int = 1, verify: bool = True,
        allow_partial: bool = False,
    ) -> None:  # fmt: skip
        import pyarrow.parquet as pq

        self.directory = Path(directory)
        self.shards = shards = committed_shards(self.directory, verify=verify, allow_partial=allow_partial)
        if not shards:
            raise InputError(f"no committed shards (data/*.parquet with a commit marker) in {self.directory}")
        self._bytes = []
        self._paths = []
        self._bases: list[Path] = []
        labels = []
        offsets = [0]
        for path in shards:
            try:
                table = pq.read_table(path, columns=["image", "label"], memory_map=True)
            except Exception as exc:  # pyarrow raises many types on a bad file
                raise InputError(f"cannot read shard {path}: {exc}") from None
            image = table.column("image").combine_chunks()
            try:
                self._bytes.append(image.field("bytes"))
                self._paths.append(image.field("path"))
            except (KeyError, AttributeError):
                raise InputError(f"shard {path}: column 'image' must be a struct {{bytes, path}}") from None
            self._bases.append(path.parent)
            labels.append(table.column("label").to_numpy().astype(np.int64))
            offsets.append(offsets[-1] + table.num_rows)
        self._offsets = np.array(offsets)
        super().__init__(np.concatenate(labels), size, min_images, name=str(self.directory))

    def encoded(self, raw_index: int) -> bytes | Path:
        shard = int(np.searchsorted(self._offsets, raw_index, side="right") - 1)
        row = raw_index - int(self._offsets[shard])
        data = self._bytes[shard][row].as_py()
        if data:
            return data
        path = self._paths[shard][row].as_py()
        if not path:
            raise InputError(f"{self.directory}: row {raw_index} has neither image bytes nor a path")
        path = Path(path)
        return path if path.is_absolute() else self._bases[shard] / path


# --------------------------------------------------------------------------- RecordIO


def unpack_irheader(payload: bytes) -> tuple[int, np.ndarray, int, int, bytes]:
    """Split an image record payload into (flag, labels, id, id2, image bytes)."""
    if len(payload) < IR_SIZE:
        raise InputError("RecordIO record is shorter than its IRHeader")
    flag, label, id1, id2 = struct.unpack(IR_FORMAT, payload[:IR_SIZE])
    rest = payload[IR_SIZE:]
    if flag > 0:
        labels = np.frombuffer(rest[: 4 * flag], dtype="<f4").copy()
        rest = rest[4 * flag :]
    else:
        labels = np.array([label], dtype=np.float32)
    return flag, labels, id1, id2, rest


class RecordIOFile:
    """Random access to the records of an MXNet RecordIO ``.rec`` file through its ``.idx``."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise InputError(f"RecordIO file {self.rec_path} does not exist")
        if not self.idx_path.is_file():
            raise InputError(f"RecordIO index {self.idx_path} does not exist: it must sit next to the .rec file")
        self.offsets: dict[int, int] = {}
        for lineno, line in enumerate(self.idx_path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                key, offset = line.split()
                self.offsets[int(key)] = int(offset)
            except ValueError:
                raise InputError(f"{self.idx_path}:{lineno}: expected 'key<TAB>offset', got {line[:60]!r}") from None
        self._handle = None
        self._pid = -1

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"], state["_pid"] = None, -1
        return state

    def _file(self):
        if self._handle is None or self._pid != os.getpid():  # one handle per DataLoader worker
            self._handle = self.rec_path.open("rb")
            self._pid = os.getpid()
        return self._handle

    def read(self, key: int, limit: int | None = None) -> bytes:
        """The payload of record ``key`` (its first ``limit`` bytes only, when given)."""
        try:
            offset = self.offsets[key]
        except KeyError:
            raise InputError(f"{self.rec_path}: no record with key {key} in {self.idx_path}") from None
        f = self._file()
        f.seek(offset)
        parts = []
        got = 0
        while True:
            head = f.read(8)
            if len(head) != 8:
                raise InputError(f"{self.rec_path}: truncated record {key} at offset {offset}")
            magic, lrec = struct.unpack("<II", head)
            if magic != RECORDIO_MAGIC:
                raise InputError(f"{self.rec_path}: bad magic at record {key}: the file or its .idx is damaged")
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            if limit is not None and cflag == 0:
                return f.read(min(length, limit))
            data = f.read(length)
            if len(data) != length:
                raise InputError(f"{self.rec_path}: truncated record {key}")
            f.seek((4 - length % 4) % 4, os.SEEK_CUR)
            parts.append(data)
            got += length
            if cflag in (0, 3):
                break
            parts.append(struct.pack("<I", RECORDIO_MAGIC))  # the split removed a magic word here
        return b"".join(parts)


class RecordIOFaces(FaceImages):
    """Images of an InsightFace ``train.rec``/``train.idx`` pair; labels from each image's IRHeader."""

    def __init__(self, rec_path: str | Path, size: int | None = None, min_images: int = 1) -> None:
        self.rec = RecordIOFile(rec_path)
        keys = sorted(self.rec.offsets)
        if not keys:
            raise InputError(f"{self.rec.idx_path} lists no records")
        flag, labels0, _, _, rest = unpack_irheader(self.rec.read(keys[0]))
        if keys[0] == 0 and flag > 0 and not rest:  # insightface's header record: no image
            self.keys = [k for k in keys if 1 <= k < int(labels0[0])]
        else:
            self.keys = keys
        raw = np.empty(len(self.keys), dtype=np.int64)
        for i, key in enumerate(self.keys):
            head = self.rec.read(key, limit=IR_SIZE + 4)
            flag, labels, _, _, _ = unpack_irheader(head + b"\0" * 4)
            raw[i] = int(labels[0])
        self.rec._handle = None  # reopen lazily in each worker
        super().__init__(raw, size, min_images, name=str(rec_path))

    def encoded(self, raw_index: int) -> bytes:
        return unpack_irheader(self.rec.read(self.keys[raw_index]))[4]


# --------------------------------------------------------------------------- in memory and dispatch


class InMemoryFaces(Dataset):
    """A pre-decoded set: uint8 images (N, 3, S, S) and labels, with an optional per-item transform."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, num_classes: int, transform=None) -> None:
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i]
        return (self.transform(image) if self.transform else image), int(self.labels[i])


class Transformed(Dataset):
    """A reader with a per-item image transform (applied in DataLoader workers)."""

    def __init__(self, base: FaceImages, transform) -> None:
        self.base, self.transform = base, transform
        self.num_classes = base.num_classes
        self.labels = base.labels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[i]
        return self.transform(image), label


def predecode(dataset: FaceImages, workers: int = 0, batch_size: int = 256, progress=None) -> torch.Tensor:
    """Decode a whole reader to one uint8 tensor (N, 3, S, S); needs ``dataset.size`` set."""
    from torch.utils.data import DataLoader

    from synthface.runtime import progress_or_null

    if dataset.size is None:
        raise InputError("pre-decoding needs a fixed image size")
    out = torch.empty((len(dataset), 3, dataset.size, dataset.size), dtype=torch.uint8)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    bar = progress_or_null(progress)
    bar.start(len(dataset), f"decode {Path(dataset.name).name or 'images'}")
    pos = 0
    for images, _ in loader:
        out[pos : pos + len(images)] = images
        pos += len(images)
        bar.advance(len(images))
    bar.finish()
    return out


def training_set_format(path: str | Path) -> str:
    """What ``path`` holds as a training set: ``"recordio"`` (a ``.rec`` file or a folder holding
    ``train.rec``), ``"shards"`` (Parquet files in ``data/`` or in the folder) or ``"imagefolder"``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"training set {path} does not exist")
    if path.is_file():
        if path.suffix == ".rec":
            return "recordio"
        raise InputError(f"training set {path} is a file but not a RecordIO .rec: pass a folder or train.rec")
    if (path / "train.rec").is_file():
        return "recordio"
    if any(data_folder(path).glob("*.parquet")):
        return "shards"
    return "imagefolder"


def open_training_set(
    path: str | Path,
    size: int | None = None,
    min_images: int = 1,
    people: Sequence[str] | None = None,
    verify: bool = True,
) -> FaceImages:
    """Open shards, an ImageFolder or a RecordIO file by looking at what ``path`` holds."""
    path = Path(path)
    kind = training_set_format(path)
    if kind == "recordio":
        return RecordIOFaces(path if path.is_file() else path / "train.rec", size, min_images)
    if kind == "shards":
        if people is not None:
            raise InputError("a people list selects ImageFolder identities; it does not apply to shards")
        return ShardFaces(path, size, min_images, verify=verify)
    return ImageFolderFaces(path, size, min_images, people=people)

"""Combined training sets: several training sets read as one, their identities kept apart.

A training-set spec is one path, or several joined by ``+`` (``REAL+SYNTH``; a path that exists as
written is never split). Each part is any set :func:`synthface.dataset.reader.open_training_set`
reads (shards, ImageFolder, RecordIO), opened at the same size with the same ``min_images``; part
*k*'s labels are shifted by the identity count of parts 0..*k*-1, so each part's identities stay
distinct classes (label spaces disjoint by construction).

Refused with one line, before any image is decoded:

* an empty part (``A++B``), a part that does not exist, the same part twice;
* parts whose images differ in size (the first image of each): the reader would resize both to
  the recipe's size and mix crops of different geometry (an aligned 112x112 set with unaligned
  photos, say);
* parts holding the same people, whose identities would each become two classes: ImageFolder parts
  with identity folders of the same name, synthface datasets generated from the same identity plan
  (the ``identities`` digest of their inputs.json).

A people list restricts the ImageFolder parts (each keeps the listed people it has); the other
parts are read whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthface.dataset.reader import FaceImages, ImageFolderFaces, ShardFaces, open_training_set, training_set_format
from synthface.dataset.layout import INPUTS_FILE
from synthface.dataset.writer import read_marker
from synthface.errors import InputError


def split_parts(spec: str) -> list[str]:
    """The parts of a training-set spec: ``spec`` itself when it exists or has no ``+``, else its
    ``+``-separated paths."""
    if "+" not in spec or Path(spec).exists():
        return [spec]
    parts = [p.strip() for p in spec.split("+")]
    if not all(parts):
        raise InputError(f"training set {spec!r} has an empty part: join paths with single '+' signs (REAL+SYNTH)")
    return parts


def check_parts(name: str, spec: str) -> list[str]:
    """The parts of ``spec`` after checking that each exists and none is given twice (touches no image)."""
    parts = split_parts(spec)
    for part in parts:
        if not Path(part).exists():
            what = f"training set {name}={spec}" if len(parts) == 1 else f"training set {name}: part {part}"
            raise InputError(f"{what} does not exist: pass a dataset folder, ImageFolder or train.rec")
    seen: dict[Path, str] = {}
    for part in parts:
        key = Path(part).resolve()
        if key in seen:
            raise InputError(
                f"training set {name} names {part} twice: each part must be a different set "
                "(its identities would become two classes each)"
            )
        seen[key] = part
    return parts


class CombinedFaces(FaceImages):
    """Parts read as one set: part k's labels shifted by the identity count of the parts before it."""

    def __init__(self, parts: Sequence[FaceImages], sources: Sequence[str]) -> None:
        self.parts = list(parts)
        self.sources = [str(s) for s in sources]
        counts = np.array([p.num_classes for p in self.parts], dtype=np.int64)
        self.label_offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._starts = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)
        raw = np.concatenate([p.labels + off for p, off in zip(self.parts, self.label_offsets)])
        super().__init__(raw, self.parts[0].size, 1, name="+".join(self.sources))

    def encoded(self, raw_index: int) -> bytes | Path:
        k = int(np.searchsorted(self._starts, raw_index, side="right") - 1)
        part = self.parts[k]
        return part.encoded(int(part.index[raw_index - int(self._starts[k])]))

    def composition(self) -> list[dict]:
        """One row per part: its path, format, identities, images and first label in the combined set."""
        return [
            {**part.describe(), "path": src, "label_offset": int(off)}
            for part, src, off in zip(self.parts, self.sources, self.label_offsets)
        ]

    def describe(self) -> dict:
        return {**super().describe(), "parts": self.composition()}


def native_size(part: FaceImages) -> tuple[int, int]:
    """Width and height of a set's first image as stored (read from the header only)."""
    import io

    from PIL import Image

    data = part.encoded(int(part.index[0]))
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data) as img:
            return img.size
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the first image of {part.name}: {exc}; check the file is a valid image") from None


def _same_people(name: str, parts: Sequence[FaceImages], sources: Sequence[str]) -> None:
    people: dict[str, set[str]] = {}
    plans: dict[str, str] = {}
    for part, src in zip(parts, sources):
        if isinstance(part, ImageFolderFaces):
            names = {part.identities[int(v)] for v in part.class_values}
            for other, theirs in people.items():
                shared = sorted(names & theirs)
                if shared:
                    raise InputError(
                        f"cannot combine training set {name}: parts {other} and {src} share {len(shared)} identities "
                        f"(e.g. {shared[0]!r}), which would become two classes each: combine sets of different people"
                    )
            people[src] = names
        elif isinstance(part, ShardFaces):
            plan = (read_marker(part.directory / INPUTS_FILE) or {}).get("identities")
            if plan and plan in plans:
                raise InputError(
                    f"cannot combine training set {name}: parts {plans[plan]} and {src} were generated from the same "
                    "identity plan (inputs.json), so they hold the same identities: generate more images per identity "
                    "in one run instead"
                )
            if plan:
                plans[plan] = src


def open_training_spec(
    name: str,
    spec: str,
    size: int | None = None,
    min_images: int = 1,
    people: Sequence[str] | None = None,
    verify: bool = True,
) -> FaceImages:
    """Open training set ``name``: one set, or a :class:`CombinedFaces` of the ``+``-joined parts."""
    parts = check_parts(name, spec)
    if len(parts) == 1:
        return open_training_set(parts[0], size, min_images, people=people, verify=verify)
    kinds = [training_set_format(p) for p in parts]
    if people is not None and "imagefolder" not in kinds:
        raise InputError(f"--people {name}: a people list selects ImageFolder identities and no part of {name} is one")
    opened = [
        open_training_set(p, size, min_images, people=people if kind == "imagefolder" else None, verify=verify)
        for p, kind in zip(parts, kinds)
    ]
    sizes = [native_size(part) for part in opened]
    for src, got in zip(parts[1:], sizes[1:]):
        if got != sizes[0]:
            raise InputError(
                f"cannot combine training set {name}: {parts[0]} holds {sizes[0][0]}x{sizes[0][1]} images but {src} "
                f"holds {got[0]}x{got[1]}; resizing both would mix crops of different geometry: align the parts alike "
                "(synthface align writes 112x112 template crops)"
            )
    _same_people(name, opened, parts)
    return CombinedFaces(opened, parts)

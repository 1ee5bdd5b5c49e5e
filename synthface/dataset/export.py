"""Export a generated dataset's committed shards to ImageFolder, WebDataset or InsightFace RecordIO.

Every format gets the stored encoded image bytes unchanged (no re-encoding) and the row's
``label``; rows are visited in (label, sample) order, and rows with a negative label are skipped.

* ``imagefolder``: ``OUT/<label>/<identity>_<sample>.<ext>``, label folders zero-padded so their
  sorted order is the label order (what torchvision's ImageFolder, and arcface_torch with it, reads).
* ``webdataset``: ``OUT/train-NNNNN.tar`` with ``shard_size`` samples each; per sample
  ``KEY.<ext>`` (the image), ``KEY.cls`` (the label as decimal text) and ``KEY.json``
  (label, identity, sample, seed, id_score, det_score); keys ``<identity>_<sample>`` hold no dots.
* ``recordio``: ``OUT/train.rec`` + ``OUT/train.idx`` + ``OUT/property``, the layout insightface's
  arcface_torch ``MXFaceDataset`` reads. With N images and C identities:

  - key 0: header record, IRHeader flag=2, label=(N+1, N+1+C), no image: arcface_torch takes
    images as keys 1..N (``range(1, label[0])``);
  - keys 1..N: images grouped by label, IRHeader flag=0, label=float(label), id=key, then the
    encoded image (arcface_torch decodes it with ``mx.image.imdecode``: JPEG or PNG);
  - keys N+1..N+C: one per identity, IRHeader flag=2, label=(first image key, last image key + 1);
  - ``property``: ``C,H,W``.

  Each record: uint32 magic 0xced7230a, uint32 ``cflag << 29 | length``, the payload, zero padding
  to 4 bytes; a payload holding the magic word at a 4-byte-aligned offset is split there into
  continuation parts (cflag 1, 2, 3) without that word, as dmlc's RecordIOWriter does. The IRHeader
  is ``struct.pack('<IfQQ', flag, label, id, id2)`` followed by ``flag`` float32 labels when flag > 0.
  ``train.idx`` lines are ``key<TAB>byte offset``.

The export is written to a temporary folder beside OUT that takes OUT's place when complete
(:func:`synthface.atomic.staged_folder`).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from synthface.dataset.shards import committed_shards
from synthface.atomic import atomic_write_json, staged_folder
from synthface.dataset.locks import LOCK_FILES, output_lock
from synthface.errors import InputError
from synthface.runtime import Progress, progress_or_null

FORMATS = ("imagefolder", "webdataset", "recordio")
MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
EXT_OF = {b"\xff\xd8": "jpg", b"\x89P": "png", b"RI": "webp"}
EXPORT_CONFIG = "export.config.yaml"
EXPORT_FILES = "export.files.json"  # the files an export wrote: what --overwrite may delete


def image_ext(data: bytes) -> str:
    for head, ext in EXT_OF.items():
        if data.startswith(head):
            return ext
    raise InputError("a stored image is neither JPEG, PNG nor WebP: the shard is damaged")


def _read_table(path: Path, columns: list[str]) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types on a bad file
        text = " ".join(str(exc).split())[:200]
        raise InputError(f"cannot read shard {path} ({text}): rerun `synthface generate` on its dataset to redo it") from None


def iter_rows(
    src: str | Path,
    columns: tuple[str, ...] = ("label", "identity", "sample", "seed", "id_score", "det_score"),
    allow_partial: bool = False,
    shards: list[Path] | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows (label >= 0) of every committed shard (or of ``shards``), in (label, sample) order, with ``image`` bytes."""
    if shards is None:
        shards = committed_shards(src, allow_partial=allow_partial)
    if not shards:
        raise InputError(f"no committed shards (data/*.parquet with a .json marker) in {src}: run `synthface generate` first")
    tables = []
    for path in shards:
        t = _read_table(path, ["label", "sample"])
        labels = t.column("label").to_numpy()
        tables.append((path, labels, t.column("sample").to_numpy()))
    order = sorted(
        (
            (int(l), int(s), k, r)
            for k, (_, labels, samples) in enumerate(tables)
            for r, (l, s) in enumerate(zip(labels, samples))
            if l >= 0
        )
    )
    cache: dict[int, Any] = {}
    for label, _, k, r in order:
        if k not in cache:
            cache.clear()  # rows come shard by shard: one shard in memory at a time
            cache[k] = _read_table(tables[k][0], ["image", *columns])
        t = cache[k]
        row = {c: t.column(c)[r].as_py() for c in columns}
        image = t.column("image")[r].as_py()
        if not image or not image.get("bytes"):
            raise InputError(f"{tables[k][0]}: row {r} has no image bytes")
        row["image"] = image["bytes"]
        yield row


def sample_key(row: dict[str, Any]) -> str:
    return f"{int(row['identity']):07d}_{int(row['sample']):04d}"


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if k == "image":
            continue
        if isinstance(v, float) and not np.isfinite(v):
            v = None
        out[k] = v
    return out


def _check_out(src: Path, out: Path, overwrite: bool) -> None:
    """Refuse an OUT that is a file, overlaps the dataset, or holds other files (an earlier export
    may be replaced with ``overwrite``); touches nothing."""
    from synthface.config import ExportRecipe
    from synthface.output_folder import check_output_folder

    a, b = src.resolve(), out.resolve()
    if a == b or b.is_relative_to(a) or a.is_relative_to(b):
        raise InputError(f"export OUT {out} overlaps the dataset {src}: choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise InputError(f"export OUT {out} is a file: pass a new or empty folder")
    earlier = check_output_folder(out, "export", EXPORT_CONFIG, ExportRecipe, option="export OUT")
    if earlier and not overwrite:
        raise InputError(f"export OUT {out} is not empty: pass --overwrite to replace an earlier export, or choose another OUT")


def exported_files(out: Path) -> set[str] | None:
    """The files an earlier export wrote in ``out`` (relative POSIX paths, from its EXPORT_FILES
    record); None when there is no readable record (an export from before the record)."""
    try:
        files = json.loads((out / EXPORT_FILES).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    return {str(f) for f in files} if isinstance(files, list) else None


def users_files(out: Path) -> list[str]:
    """Files in ``out`` that the earlier export's record does not name: the user's, kept by ``--overwrite``
    (none for an export without a record: it is replaced whole, as before the record existed)."""
    own = exported_files(out)
    if own is None or not out.is_dir():
        return []
    own |= {EXPORT_FILES}
    found = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    return sorted(f for f in found if f not in own and not LOCK_FILES.match(Path(f).name))


def _keep(out: Path, stage: Path, files: list[str]) -> None:
    """Hard-link the user's ``files`` from ``out`` into the staged export (the originals stay until
    the staged folder replaces ``out``, so a failure loses none of them)."""
    for rel in files:
        target = stage / rel
        if target.exists() or target.is_symlink():
            raise InputError(f"export OUT {out} holds your file {rel} where this export writes one: move it, then rerun")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(out / rel, target, follow_symlinks=False)


def export(src: str | Path, fmt: str, out: str | Path, *, overwrite: bool = False, shard_size: int = 10000,
           progress: Progress | None = None, allow_partial: bool = False, config: Any = None) -> dict[str, Any]:  # fmt: skip
    """Export ``src``'s committed shards to ``fmt`` in ``out``; returns a summary.

    The export is written to a temporary folder beside ``out`` and renamed into place when complete
    (with ``overwrite``, replacing an earlier export: the files its record EXPORT_FILES names go,
    any other file stays); ``config`` (the resolved recipe) is written with it as
    export.config.yaml. ``out`` is locked for the whole export (another command writing it is
    refused). An incomplete dataset is refused unless ``allow_partial``.
    """
    from synthface.config import write_resolved

    if fmt not in FORMATS:
        raise InputError(f"unknown export format '{fmt}': use {', '.join(FORMATS)}")
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(f"dataset {src} not found: pass the --out directory of `synthface generate`")
    shards = committed_shards(src, allow_partial=allow_partial)
    rows = iter_rows(src, shards=shards)
    _check_out(src, out, overwrite)
    with output_lock(out):
        _check_out(src, out, overwrite)  # again under the lock: another export may have finished meanwhile
        kept = users_files(out)
        with staged_folder(out, replace=True) as tmp:
            bar = progress_or_null(progress)
            bar.start(exported_rows(shards), f"export images ({fmt})")
            if fmt == "imagefolder":
                info = _imagefolder(rows, tmp, bar, label_width(shards))
            elif fmt == "webdataset":
                info = _webdataset(rows, tmp, shard_size, bar)
            else:
                info = _recordio(rows, tmp, bar)
            bar.finish()
            if config is not None:
                write_resolved(config, tmp, EXPORT_CONFIG)
            written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
            atomic_write_json(tmp / EXPORT_FILES, {"files": written})
            _keep(out, tmp, kept)
    return {"src": str(src), "format": fmt, "out": str(out), **info, "kept_user_files": len(kept)}


def exported_rows(shards: list[Path]) -> int:
    """How many rows :func:`iter_rows` yields from ``shards`` (those with a label), from the label column."""
    return sum(int((_read_table(p, ["label"]).column("label").to_numpy() >= 0).sum()) for p in shards)


def label_width(shards: list[Path]) -> int:
    """Digits of the zero-padded label folder names (at least 5)."""
    top = max((max(_read_table(p, ["label"]).column("label").to_pylist() or [0]) for p in shards), default=0)
    return max(5, len(str(int(top))))


def _imagefolder(rows: Iterator[dict[str, Any]], out: Path, bar: Any, width: int) -> dict[str, Any]:
    from synthface.atomic import atomic_write_bytes

    labels = set()
    count = 0
    for row in rows:
        count += 1
        label = int(row["label"])
        labels.add(label)
        atomic_write_bytes(out / f"{label:0{width}d}" / f"{sample_key(row)}.{image_ext(row['image'])}", row["image"])
        bar.advance(1)
    if not count:
        raise InputError("the dataset has no rows with a label")
    return {"images": count, "identities": len(labels)}


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _webdataset(rows: Iterator[dict[str, Any]], out: Path, shard_size: int, bar: Any) -> dict[str, Any]:
    if shard_size < 1:
        raise InputError("--shard-size must be >= 1")
    written: list[str] = []
    count, labels = 0, set()
    tar: tarfile.TarFile | None = None
    tmp: Path | None = None

    def close() -> None:
        nonlocal tar, tmp
        if tar is not None and tmp is not None:
            tar.close()
            final = tmp.with_name(tmp.name[1:-4])
            os.replace(tmp, final)
            written.append(final.name)
        tar, tmp = None, None

    for row in rows:
        if count % shard_size == 0:
            close()
            tmp = out / f".train-{count // shard_size:05d}.tar.tmp"
            tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
        key = sample_key(row)
        assert tar is not None
        _tar_add(tar, f"{key}.{image_ext(row['image'])}", row["image"])
        _tar_add(tar, f"{key}.cls", str(int(row["label"])).encode())
        _tar_add(tar, f"{key}.json", json.dumps(_meta(row), sort_keys=True).encode())
        labels.add(int(row["label"]))
        count += 1
        bar.advance(1)
    close()
    if not count:
        raise InputError("the dataset has no rows with a label")
    return {"images": count, "identities": len(labels), "shards": written}


# --------------------------------------------------------------------------- RecordIO


def irheader(flag: int, label: float, id1: int, id2: int = 0) -> bytes:
    return struct.pack("<IfQQ", flag, label, id1, id2)


def pack_labels(labels: list[float], id1: int = 0) -> bytes:
    """An IRHeader carrying a label vector (flag = its length)."""
    return irheader(len(labels), 0.0, id1) + np.asarray(labels, "<f4").tobytes()


def record_bytes(payload: bytes) -> bytes:
    """One RecordIO record (split at aligned magic words, as dmlc's writer does)."""
    parts = []
    n = len(payload)
    start = 0
    for i in range(0, n - n % 4, 4):
        if payload[i : i + 4] == _MAGIC_BYTES:
            parts.append((1 if start == 0 else 2, payload[start:i]))
            start = i + 4
    parts.append((3 if start else 0, payload[start:]))
    out = bytearray()
    for cflag, data in parts:
        out += struct.pack("<II", MAGIC, (cflag << 29) | len(data))
        out += data
        out += b"\0" * ((4 - len(data) % 4) % 4)
    return bytes(out)


def _recordio(rows: Iterator[dict[str, Any]], out: Path, bar: Any) -> dict[str, Any]:
    rec_tmp, idx_tmp = out / ".train.rec.tmp", out / ".train.idx.tmp"
    ranges: list[tuple[int, int, int]] = []  # (label, first key, last key + 1)
    count = 0
    shape = None
    offsets: list[tuple[int, int]] = []
    with open(rec_tmp, "wb") as rec:
        rec.write(record_bytes(pack_labels([0.0, 0.0])))  # placeholder header, same size, rewritten below
        for row in rows:
            key = count + 1
            label = int(row["label"])
            if ranges and label < ranges[-1][0]:
                raise InputError("labels are not in order: the dataset's shards are inconsistent")
            if not ranges or ranges[-1][0] != label:
                ranges.append((label, key, key))
            ranges[-1] = (label, ranges[-1][1], key + 1)
            if shape is None:
                from PIL import Image

                with Image.open(io.BytesIO(row["image"])) as img:
                    shape = (img.height, img.width)
            offsets.append((key, rec.tell()))
            rec.write(record_bytes(irheader(0, float(label), key) + row["image"]))
            count += 1
            bar.advance(1)
        if not count:
            raise InputError("the dataset has no rows with a label")
        first_id = count + 1
        for k, (label, a, b) in enumerate(ranges):
            offsets.append((first_id + k, rec.tell()))
            rec.write(record_bytes(pack_labels([float(a), float(b)], first_id + k)))
        rec.seek(0)
        rec.write(record_bytes(pack_labels([float(first_id), float(first_id + len(ranges))])))
        rec.flush()
        os.fsync(rec.fileno())
    idx_lines = ["0\t0"] + [f"{k}\t{o}" for k, o in offsets]
    idx_tmp.write_text("\n".join(idx_lines) + "\n", encoding="utf-8")
    labels = [r[0] for r in ranges]
    if labels != list(range(len(labels))):
        raise InputError("labels are not contiguous from 0: re-run `synthface generate` on the dataset to finish it")
    (out / ".property.tmp").write_text(f"{len(ranges)},{shape[0]},{shape[1]}\n", encoding="utf-8")  # type: ignore[index]
    os.replace(rec_tmp, out / "train.rec")
    os.replace(idx_tmp, out / "train.idx")
    os.replace(out / ".property.tmp", out / "property")
    return {"images": count, "identities": len(ranges), "files": ["train.rec", "train.idx", "property"]}

"""Crash-safe dataset writing: Parquet shards with Hugging Face Image columns, commit markers.

Every file is written through :mod:`synthface.atomic` (a temporary file in its own directory, fsynced, then moved
into place with ``os.replace``). A shard's JSON commit marker
``data/.train-SSSSS-of-NNNNN.json`` (rows, sha256 and size of the Parquet file, identity range,
config hash; see :func:`marker_path`) is written after its Parquet file, so a shard counts as done
only when its marker exists and the checksum matches: a run killed at any instant leaves either a
complete shard or one that is redone.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synthface.atomic import atomic_write_bytes, atomic_write_json
from synthface.dataset.plan import Shard
from synthface.errors import InputError
from synthface.fingerprint import file_sha256

MARKER_FORMAT = 1
IMAGE_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}

# The `huggingface` schema metadata: `datasets` reads it to decode the image column as PIL images.
HF_FEATURES: dict[str, Any] = {
    "image": {"_type": "Image"},
    "label": {"dtype": "int64", "_type": "Value"},
    "identity": {"dtype": "int64", "_type": "Value"},
    "sample": {"dtype": "int64", "_type": "Value"},
    "seed": {"dtype": "int64", "_type": "Value"},
    "id_score": {"dtype": "float32", "_type": "Value"},
    "det_score": {"dtype": "float32", "_type": "Value"},
}

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

# Per-image variation draws (synthface.generator.variation), present only when a control is on.
VARIATION_FIELDS = (("condition_cosine", pa.float32()), ("guidance_scale", pa.float32()), ("style", pa.int64()))
VARIATION_COLUMNS = tuple(name for name, _ in VARIATION_FIELDS)


def shard_schema(full: bool = False, variation: bool = False) -> pa.Schema:
    """The shard schema; ``full`` adds the ``image_full`` column (output.store_full_resolution),
    ``variation`` the per-image variation columns (condition_cosine, guidance_scale, style)."""
    fields = [
        ("image", IMAGE_TYPE),
        ("label", pa.int64()),
        ("identity", pa.int64()),
        ("sample", pa.int64()),
        ("seed", pa.int64()),
        ("id_score", pa.float32()),
        ("det_score", pa.float32()),
    ]
    features = dict(HF_FEATURES)
    if full:
        fields.append(("image_full", IMAGE_TYPE))
        features["image_full"] = {"_type": "Image"}
    if variation:
        fields.extend(VARIATION_FIELDS)
        features.update({name: {"dtype": str(kind), "_type": "Value"} for name, kind in VARIATION_FIELDS})
    schema = pa.schema(fields)
    hf = json.dumps({"info": {"features": features}}, sort_keys=True).encode()
    return schema.with_metadata({b"huggingface": hf})


# --------------------------------------------------------------------------- images


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """HxWx3 uint8 -> encoded bytes (JPEG/WebP quality 95, PNG lossless); deterministic."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image, np.uint8))
    buf = io.BytesIO()
    if fmt == "jpeg":
        pil.save(buf, format="JPEG", quality=95, subsampling=0)
    elif fmt == "png":
        pil.save(buf, format="PNG", compress_level=6)
    elif fmt == "webp":
        pil.save(buf, format="WEBP", quality=95, method=4)
    else:
        raise InputError(f"unknown image format '{fmt}': use jpeg, png or webp")
    return buf.getvalue()


@dataclass
class ShardRows:
    """The rows of one shard, column by column."""

    image: list[bytes] = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    identity: list[int] = field(default_factory=list)
    sample: list[int] = field(default_factory=list)
    seed: list[int] = field(default_factory=list)
    id_score: list[float] = field(default_factory=list)
    det_score: list[float] = field(default_factory=list)
    image_full: list[bytes] = field(default_factory=list)  # the images as rendered, when stored
    variation: list[tuple[float, float, int]] = field(default_factory=list)  # (cosine, guidance, style), when drawn
    # the optional columns a shard has even with no rows (None: present when rows carry them)
    with_full: bool | None = None
    with_variation: bool | None = None

    def __len__(self) -> int:
        return len(self.image)

    def add(self, image: bytes, path: str, label: int, identity: int, sample: int, seed: int,
            id_score: float = float("nan"), det_score: float = float("nan"),
            image_full: bytes | None = None, variation: tuple[float, float, int] | None = None) -> None:  # fmt: skip
        if image_full is not None:
            self.image_full.append(image_full)
        if variation is not None:
            self.variation.append((float(variation[0]), float(variation[1]), int(variation[2])))
        self.image.append(image)
        self.path.append(path)
        self.label.append(int(label))
        self.identity.append(int(identity))
        self.sample.append(int(sample))
        self.seed.append(int(seed))
        self.id_score.append(float(id_score))
        self.det_score.append(float(det_score))

    def table(self) -> pa.Table:
        images = pa.StructArray.from_arrays(
            [pa.array(self.image, pa.binary()), pa.array(self.path, pa.string())], fields=list(IMAGE_TYPE)
        )
        full = bool(self.image_full) if self.with_full is None else self.with_full
        varied = bool(self.variation) if self.with_variation is None else self.with_variation
        if full and len(self.image_full) != len(self.image):
            raise ValueError("image_full must be given for every row of a shard or for none")
        if varied and len(self.variation) != len(self.image):
            raise ValueError("variation must be given for every row of a shard or for none")
        extra = []
        if full:
            paths = [f"full/{p}" for p in self.path]
            extra.append(
                pa.StructArray.from_arrays(
                    [pa.array(self.image_full, pa.binary()), pa.array(paths, pa.string())], fields=list(IMAGE_TYPE)
                )
            )
        return pa.Table.from_arrays(
            [
                images,
                pa.array(self.label, pa.int64()),
                pa.array(self.identity, pa.int64()),
                pa.array(self.sample, pa.int64()),
                pa.array(self.seed, pa.int64()),
                pa.array(self.id_score, pa.float32()),
                pa.array(self.det_score, pa.float32()),
                *extra,
                *(pa.array([v[k] for v in self.variation], kind) for k, (_, kind) in enumerate(VARIATION_FIELDS) if varied),
            ],
            schema=shard_schema(full, varied),
        )


def table_bytes(table: pa.Table, row_group_size: int = 256) -> bytes:
    sink = pa.BufferOutputStream()
    # encoded images do not compress further: no dictionary, cheap snappy pages
    pq.write_table(table, sink, row_group_size=row_group_size, compression="snappy", use_dictionary=False)
    return sink.getvalue().to_pybytes()


def write_parquet(path: Path, table: pa.Table) -> tuple[str, int]:
    """Write ``table`` atomically; returns (sha256, size) of the file written."""
    data = table_bytes(table)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest(), len(data)


# a shard's Parquet file and its commit marker (see marker_path)
SHARD_FILES = re.compile(r"\.?train-\d{5}-of-\d{5}\.(parquet|json)")


# --------------------------------------------------------------------------- shards and markers


def marker_path(parquet: Path) -> Path:
    """The commit marker of a shard file: ``data/.train-SSSSS-of-NNNNN.json``.

    Dot-prefixed on purpose: ``datasets.load_dataset("parquet", data_dir=OUT/"data")`` (and the Hub
    viewer) read every non-hidden file of a split whose name starts with ``train-`` as Parquet, so a
    visible ``train-*.json`` next to the shards would make them fail; hidden files are skipped.
    """
    parquet = Path(parquet)
    return parquet.with_name(f".{parquet.stem}.json")


def shard_paths(data_dir: Path, shard: Shard) -> tuple[Path, Path]:
    parquet = data_dir / f"{shard.name}.parquet"
    return parquet, marker_path(parquet)


def write_shard(
    data_dir: Path, shard: Shard, rows: ShardRows, config_hash: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write a shard's Parquet file, then its commit marker; returns the marker."""
    parquet, marker = shard_paths(data_dir, shard)
    sha, size = write_parquet(parquet, rows.table())
    labels = [x for x in rows.label if x >= 0]
    info = {
        "format": MARKER_FORMAT,
        "shard": shard.name,
        "index": shard.index,
        "total": shard.total,
        "file": parquet.name,
        "rows": len(rows),
        "sha256": sha,
        "bytes": size,
        "identities": [shard.start, shard.stop],
        "identities_kept": sorted(set(rows.identity)),
        "labels": [min(labels), max(labels)] if labels else None,
        "config_hash": config_hash,
        **(extra or {}),
    }
    atomic_write_json(marker, info)
    return info


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def shard_done(data_dir: Path, shard: Shard, config_hash: str, verify: bool = True) -> dict[str, Any] | None:
    """The shard's marker if the shard is complete and intact for this config, else None.

    ``verify`` False checks the file's size but not its sha256 (for a pass over shards this process
    has just checked or written)."""
    parquet, marker = shard_paths(data_dir, shard)
    info = read_marker(marker)
    if info is None or info.get("format") != MARKER_FORMAT or info.get("config_hash") != config_hash:
        return None
    if info.get("identities") != [shard.start, shard.stop] or info.get("file") != parquet.name:
        return None
    try:
        if parquet.stat().st_size != info.get("bytes") or (verify and file_sha256(parquet) != info.get("sha256")):
            return None
    except OSError:
        return None
    return info


def relabel_shards(data_dir: Path, shards: Sequence[Shard], labels: np.ndarray, config_hash: str) -> int:
    """Rewrite each committed shard whose rows differ from the final labels (``labels[identity]``);
    returns how many were rewritten.

    Rows of identities with label -1 are removed. The Parquet file is replaced atomically, then its
    marker (rows, checksum, kept identities, label range). Killed in between, the shard fails its
    checksum and is rendered again on resume, which ends in the same bytes.
    """
    count = 0
    for shard in shards:
        parquet, marker = shard_paths(data_dir, shard)
        info = read_marker(marker)
        if info is None or info.get("config_hash") != config_hash or not parquet.is_file():
            continue
        table = pq.read_table(parquet)
        ident = np.asarray(table.column("identity").to_numpy(), np.int64)
        old = np.asarray(table.column("label").to_numpy(), np.int64)
        new = labels[ident] if len(ident) else old
        keep = new >= 0
        if keep.all() and np.array_equal(new, old):
            continue
        meta = table.schema.metadata
        table = table.filter(pa.array(keep))
        table = table.set_column(table.column_names.index("label"), table.schema.field("label"), pa.array(new[keep], pa.int64()))
        table = table.replace_schema_metadata(meta)
        sha, size = write_parquet(parquet, table)
        kept_labels = new[keep]
        info.update(
            rows=int(table.num_rows),
            sha256=sha,
            bytes=size,
            identities_kept=sorted({int(i) for i in ident[keep]}),
            labels=[int(kept_labels.min()), int(kept_labels.max())] if len(kept_labels) else None,
            relabelled=True,
        )
        atomic_write_json(marker, info)
        count += 1
    return count

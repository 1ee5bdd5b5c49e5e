"""Training-set readers: ImageFolder, synthface Parquet shards, InsightFace RecordIO (written here from the spec)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_recognition_data import encode_png, render_identities, write_image_folder, write_shard

from synthface.dataset.reader import (
    ImageFolderFaces,
    RecordIOFaces,
    ShardFaces,
    decode_face,
    open_training_set,
    predecode,
    read_people,
)
from synthface.errors import InputError

MAGIC = 0xCED7230A


# --------------------------------------------------------------------------- a RecordIO writer from the format spec


def _record(payload: bytes) -> bytes:
    """dmlc RecordIO framing: magic, lrecord = cflag << 29 | length, data, zero pad to 4 bytes.

    A 4-byte-aligned occurrence of the magic inside the payload splits the record into
    parts (cflag 1 = first, 2 = middle, 3 = last) and the magic itself is dropped.
    """
    magic = struct.pack("<I", MAGIC)
    out, start, splits = b"", 0, []
    for i in range(0, len(payload) - len(payload) % 4, 4):
        if payload[i : i + 4] == magic:
            splits.append(i)
    if not splits:
        pad = (4 - len(payload) % 4) % 4
        return magic + struct.pack("<I", len(payload)) + payload + b"\0" * pad
    for n, i in enumerate(splits):
        out += magic + struct.pack("<I", ((1 if n == 0 else 2) << 29) | (i - start)) + payload[start:i]
        start = i + 4
    rest = payload[start:]
    pad = (4 - len(rest) % 4) % 4
    return out + magic + struct.pack("<I", (3 << 29) | len(rest)) + rest + b"\0" * pad


def _irheader(label: float | list[float], payload: bytes, key: int) -> bytes:
    if isinstance(label, list):
        return struct.pack("<IfQQ", len(label), 0.0, key, 0) + struct.pack(f"<{len(label)}f", *label) + payload
    return struct.pack("<IfQQ", 0, label, key, 0) + payload


def write_recordio(path: Path, samples, header: bool = True, extra: dict[int, bytes] | None = None) -> Path:
    """insightface layout: record 0 = header (label [first non-image key, end]), images 1..n, then identity records."""
    records: dict[int, bytes] = {}
    n = len(samples)
    if header:
        records[0] = _irheader([float(n + 1), float(n + 1 + 2)], b"", 0)
    for k, (label, image) in enumerate(samples, start=1 if header else 0):
        payload = extra.get(k) if extra and k in extra else encode_png(image)
        records[k] = _irheader(float(label) if k % 2 else [float(label)], payload, k)  # both label forms
    if header:
        records[n + 1] = _irheader([1.0, 2.0], b"", n + 1)  # identity records: must not be read as images
        records[n + 2] = _irheader([2.0, 3.0], b"", n + 2)
    idx = []
    with path.open("wb") as f:
        for key, payload in records.items():
            idx.append(f"{key}\t{f.tell()}")
            f.write(_record(payload))
    path.with_suffix(".idx").write_text("\n".join(idx) + "\n")
    return path


# --------------------------------------------------------------------------- tests


def test_recordio_reads_images_and_labels(tmp_path):
    samples = render_identities(3, 2, seed=1)
    rec = write_recordio(tmp_path / "train.rec", samples)
    ds = RecordIOFaces(rec, size=32)
    assert len(ds) == 6 and ds.num_classes == 3
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    for i, (label, image) in enumerate(samples):
        got, got_label = ds[i]
        assert got_label == label
        assert torch.equal(got, torch.from_numpy(image).permute(2, 0, 1))
    assert open_training_set(tmp_path, size=32).__class__ is RecordIOFaces


def test_recordio_joins_records_split_at_the_magic_number(tmp_path):
    samples = render_identities(2, 1, seed=2)
    png = encode_png(samples[1][1])
    # PNG chunks may be followed by any bytes: append an aligned magic word inside a trailing payload
    body = _irheader(0.0, b"", 0)  # the header length (24) keeps what follows 4-byte aligned
    tail = b"\0" * ((4 - (len(body) + len(png)) % 4) % 4) + struct.pack("<I", MAGIC) + b"tail"
    rec = write_recordio(tmp_path / "x.rec", samples, header=False, extra={1: png + tail})
    raw = rec.read_bytes()
    assert raw.count(struct.pack("<I", MAGIC)) == 3  # two records, the second in two parts
    ds = RecordIOFaces(rec, size=32)
    assert ds.rec.read(ds.keys[1]).endswith(struct.pack("<I", MAGIC) + b"tail")
    assert torch.equal(ds[1][0], torch.from_numpy(samples[1][1]).permute(2, 0, 1))


def test_recordio_damaged_index_is_an_input_error(tmp_path):
    rec = write_recordio(tmp_path / "train.rec", render_identities(2, 1))
    rec.with_suffix(".idx").write_text("0\t0\n1\t3\n")
    with pytest.raises(InputError, match="bad magic|truncated"):
        RecordIOFaces(rec)


def test_image_folder_people_filter_and_min_images(tmp_path):
    samples = render_identities(4, 3) + [(4, render_identities(1, 1, seed=9)[0][1])]  # id0004 has one image
    write_image_folder(tmp_path, samples)
    ds = ImageFolderFaces(tmp_path, size=16)
    assert len(ds) == 13 and ds.num_classes == 5
    image, label = ds[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and label == 0
    assert ImageFolderFaces(tmp_path, min_images=2).num_classes == 4
    (tmp_path.parent / "people.txt").write_text("id0001\nid0003\n")
    few = ImageFolderFaces(tmp_path, people=read_people(tmp_path.parent / "people.txt"))
    assert few.num_classes == 2 and len(few) == 6 and few.identities == ["id0001", "id0003"]
    (tmp_path.parent / "split.json").write_text('{"train": ["id0002"], "test": []}')
    assert ImageFolderFaces(tmp_path, people=read_people(f"{tmp_path.parent / 'split.json'}:train")).num_classes == 1
    with pytest.raises(InputError):
        ImageFolderFaces(tmp_path, people=["nobody"])


def test_shards_only_committed_and_checksummed(tmp_path):
    a, b = render_identities(2, 3, seed=3), render_identities(2, 3, seed=4)
    b = [(label + 2, img) for label, img in b]
    write_shard(tmp_path, a, index=0, total=2)
    second = write_shard(tmp_path, b, index=1, total=2, commit=False)
    ds = ShardFaces(tmp_path, size=32)
    assert len(ds) == 6 and ds.num_classes == 2  # the uncommitted shard is not read
    image, label = ds[4]
    assert label == 1 and torch.equal(image, torch.from_numpy(a[4][1]).permute(2, 0, 1))
    write_shard(tmp_path, b, index=1, total=2, commit=True)
    assert ShardFaces(tmp_path).num_classes == 4
    hidden = tmp_path / "data" / ".train-00001-of-00002.json"
    visible = hidden.rename(tmp_path / "data" / "train-00001-of-00002.json")  # only the hidden marker commits a shard
    assert ShardFaces(tmp_path).num_classes == 2
    visible.rename(hidden)
    assert ShardFaces(tmp_path).num_classes == 4
    second.write_bytes(second.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(InputError, match="checksum"):
        ShardFaces(tmp_path)


def test_predecode_matches_item_decoding(tmp_path):
    write_image_folder(tmp_path, render_identities(2, 2))
    ds = open_training_set(tmp_path, size=24)
    stack = predecode(ds)
    assert stack.shape == (4, 3, 24, 24)
    assert all(torch.equal(stack[i], ds[i][0]) for i in range(4))


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(InputError):
        open_training_set(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        open_training_set(tmp_path / "empty")
    with pytest.raises(InputError, match="cannot decode"):
        decode_face(b"not an image")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG")
    assert decode_face(buf.getvalue(), size=4).shape == (3, 4, 4)


def test_reads_shards_from_the_dataset_writer(tmp_path):
    from synthface.dataset import plan, writer

    samples = render_identities(2, 3, seed=5)
    rows = writer.ShardRows()
    for k, (label, image) in enumerate(samples):
        rows.add(encode_png(image), f"{label}/{k}.png", label, identity=label + 10, sample=k, seed=k)
    rows.add(encode_png(samples[0][1]), "rejected.png", -1, identity=99, sample=9, seed=9)  # no identity
    (tmp_path / "data").mkdir()
    writer.write_shard(tmp_path / "data", plan.Shard(0, 1, 10, 12), rows, config_hash="x")
    ds = open_training_set(tmp_path, size=32)
    assert isinstance(ds, ShardFaces) and len(ds) == 6 and ds.num_classes == 2
    assert torch.equal(ds[3][0], torch.from_numpy(samples[3][1]).permute(2, 0, 1)) and ds[3][1] == 1

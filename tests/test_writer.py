"""Shard plan and crash-safe writer: HF-loadable Parquet, commit markers, torn-shard detection, lock."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synthface.dataset.plan import make_shards, shards_for_process
from synthface.identities import plan_labels
from synthface.atomic import atomic_write_bytes, clean_temp
from synthface.dataset.locks import RunLock
from synthface.dataset.writer import (
    SHARD_FILES,
    ShardRows,
    encode_image,
    shard_done,
    shard_paths,
    write_shard,
)
from synthface.errors import InputError


def test_shards_partition_identities_and_processes():
    shards = make_shards(10, 3)
    assert [(s.start, s.stop) for s in shards] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert shards[0].name == "train-00000-of-00004"
    for world in (1, 2, 3):
        taken = sorted(s.index for r in range(world) for s in shards_for_process(shards, r, world))
        assert taken == [0, 1, 2, 3]
    assert [s.index for s in shards_for_process(shards, 1, 2)] == [1, 3]
    assert plan_labels(np.array([True, False, True, True])).tolist() == [0, -1, 1, 2]


def _rows(n: int = 4, fmt: str = "png") -> ShardRows:
    rows = ShardRows()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        rows.add(encode_image(img, fmt), f"{i // 2:07d}/{i % 2:04d}.png", i // 2, i // 2, i % 2, 1000 + i)
    return rows


def test_shard_loads_with_datasets_as_pil_images_and_int_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    shard = make_shards(2, 2)[0]
    write_shard(tmp_path / "data", shard, _rows(), "hash")
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "data"), split="train")
    assert len(ds) == 4 and ds.features["image"].__class__.__name__ == "Image"
    first = ds[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (8, 8)
    assert isinstance(first["label"], int) and ds["label"] == [0, 0, 1, 1]
    assert np.isnan(first["id_score"]) and first["seed"] == 1000


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_image_encoding_is_deterministic(fmt):
    img = np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    assert encode_image(img, fmt) == encode_image(img, fmt)
    with pytest.raises(InputError):
        encode_image(img, "gif")


def test_a_shard_is_done_only_with_an_intact_file_and_marker(tmp_path):
    data = tmp_path / "data"
    shard = make_shards(2, 2)[0]
    parquet, marker = shard_paths(data, shard)
    assert shard_done(data, shard, "h") is None
    info = write_shard(data, shard, _rows(), "h")
    assert info["rows"] == 4 and info["identities"] == [0, 2] and info["identities_kept"] == [0, 1]
    assert shard_done(data, shard, "h") is not None
    assert shard_done(data, shard, "other-config") is None
    good = parquet.read_bytes()
    parquet.write_bytes(good[: len(good) // 2])  # torn write
    assert shard_done(data, shard, "h") is None
    parquet.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit flipped
    assert shard_done(data, shard, "h") is None
    parquet.write_bytes(good)
    assert shard_done(data, shard, "h") is not None
    marker.write_text("{not json")
    assert shard_done(data, shard, "h") is None
    marker.unlink()
    assert shard_done(data, shard, "h") is None
    assert not list(data.glob(".*.tmp"))


def test_atomic_writes_leave_no_temp_files_and_stale_ones_are_cleaned(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_bytes(target, b"{}")
    assert json.loads(target.read_text()) == {} and not list(tmp_path.glob(".*.tmp"))
    (tmp_path / ".train-00000-of-00001.parquet.abc123_z.tmp").write_bytes(b"partial")  # mkstemp's 8 characters
    (tmp_path / ".notes.tmp").write_bytes(b"a user's file")
    assert clean_temp(tmp_path, SHARD_FILES) == 1 and [p.name for p in tmp_path.glob(".*.tmp")] == [".notes.tmp"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)


def test_run_lock_refuses_a_second_holder(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(InputError, match="another synthface run is writing"):
            RunLock(tmp_path).acquire()
    finally:
        first.release()
    with RunLock(tmp_path):  # free again once released
        pass

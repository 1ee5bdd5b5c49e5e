"""`synthface export`: every format round-trips the stored images and labels through an independent reader."""

from __future__ import annotations

import json
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers_generate import decode, read_rows
from test_filter_support import make_filtered_dataset
from synthface.cli.app import app
from synthface.dataset.export import MAGIC, record_bytes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # filtered so labels are a relabelled subset of identities (a dropped identity in the middle)
    return make_filtered_dataset(tmp_path_factory.mktemp("export"), "filter.threshold=0.15", "filter.merge_threshold=0.2")


def _expected(dataset: Path) -> list[tuple[int, np.ndarray]]:
    rows = sorted(read_rows(dataset), key=lambda r: (r["label"], r["sample"]))
    assert rows and len({r["label"] for r in rows}) >= 2
    return [(r["label"], decode(r["image"]["bytes"])) for r in rows]


def _as_pairs(ds) -> list[tuple[int, np.ndarray]]:
    out = []
    for i in range(len(ds)):
        image, label = ds[i]
        out.append((int(label), image.permute(1, 2, 0).numpy()))
    return sorted(out, key=lambda p: (p[0], p[1].tobytes()))


def _sorted(pairs: list[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
    return sorted(pairs, key=lambda p: (p[0], p[1].tobytes()))


def _same(a: list[tuple[int, np.ndarray]], b: list[tuple[int, np.ndarray]]) -> None:
    assert [x[0] for x in a] == [x[0] for x in b]
    for (_, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_imagefolder_round_trip(dataset: Path, tmp_path: Path) -> None:
    from synthface.dataset.reader import ImageFolderFaces

    out = tmp_path / "folders"
    res = CliRunner().invoke(app, ["export", str(dataset), str(out), "--format", "imagefolder", "--json", "-"])
    assert res.exit_code == 0, res.output
    expected = _expected(dataset)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == [f"{k:05d}" for k in range(len(folders))]
    # torchvision-style reading: class index = rank of the sorted folder name
    ds = ImageFolderFaces(out)
    _same(_as_pairs(ds), _sorted(expected))
    assert json.loads(res.stdout)["images"] == len(expected)


def test_webdataset_round_trip(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "wds"
    res = CliRunner().invoke(app, ["export", str(dataset), str(out), "--format", "webdataset", "--set", "shard_size=5"])
    assert res.exit_code == 0, res.output
    tars = sorted(out.glob("train-*.tar"))
    assert len(tars) == -(-len(_expected(dataset)) // 5)
    samples: dict[str, dict[str, bytes]] = {}
    for t in tars:
        with tarfile.open(t) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)  # keys hold no dots
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    got = []
    for key, files in samples.items():
        assert set(files) == {"png", "cls", "json"}
        meta = json.loads(files["json"])
        assert int(files["cls"]) == meta["label"] and key == f"{meta['identity']:07d}_{meta['sample']:04d}"
        got.append((int(files["cls"]), decode(files["png"])))
    _same(_sorted(got), _sorted(_expected(dataset)))


def test_recordio_round_trip(dataset: Path, tmp_path: Path) -> None:
    from synthface.dataset.reader import RecordIOFaces, RecordIOFile, unpack_irheader

    out = tmp_path / "rec"
    res = CliRunner().invoke(app, ["export", str(dataset), str(out), "-f", "recordio"])
    assert res.exit_code == 0, res.output
    expected = _expected(dataset)
    n, classes = len(expected), len({e[0] for e in expected})
    assert (out / "property").read_text().strip() == f"{classes},16,16"
    # MXFaceDataset: record 0 is a header (flag 2): images are keys 1 .. label[0]-1
    rec = RecordIOFile(out / "train.rec")
    flag, labels, _, _, rest = unpack_irheader(rec.read(0))
    assert flag == 2 and rest == b"" and labels.tolist() == [n + 1, n + 1 + classes]
    for k in range(classes):  # identity records: image key ranges, grouped by label
        flag, rng, _, _, _ = unpack_irheader(rec.read(n + 1 + k))
        a, b = int(rng[0]), int(rng[1])
        assert flag == 2 and b - a == sum(1 for e in expected if e[0] == k)
        for key in range(a, b):
            assert unpack_irheader(rec.read(key))[1][0] == k
    ds = RecordIOFaces(out / "train.rec")
    assert len(ds) == n
    _same(_as_pairs(ds), _sorted(expected))


def test_record_split_at_magic_reads_back(tmp_path: Path) -> None:
    from synthface.dataset.reader import RecordIOFile

    magic = struct.pack("<I", MAGIC)
    payload = b"abcd" + magic + b"efgh" + magic + b"xyz"  # two aligned magic words, odd tail
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    data = record_bytes(payload)
    rec.write_bytes(record_bytes(b"first") + data)
    idx.write_text(f"0\t0\n1\t{len(record_bytes(b'first'))}\n")
    assert data.count(magic) == 3  # one header per part, none left in the payloads
    f = RecordIOFile(rec, idx)
    assert f.read(0) == b"first" and f.read(1) == payload


def test_export_refuses_a_non_empty_out(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep me")
    res = CliRunner().invoke(app, ["export", str(dataset), str(tmp_path), "--format", "imagefolder"])
    assert res.exit_code == 2 and "not empty" in res.output
    assert (tmp_path / "x").read_text() == "keep me"
    res = CliRunner().invoke(app, ["export", str(tmp_path / "nope"), str(tmp_path / "o"), "--format", "recordio"])
    assert res.exit_code == 2 and "not found" in res.output

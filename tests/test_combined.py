"""Combined training sets (`--train NAME=A+B`): disjoint labels, the parts' counts, the refusals, an evaluate run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_evaluate import TINY, _sets
from test_reader import write_recordio
from test_recognition_data import make_pairs, render_identities, write_image_folder, write_shard
from typer.testing import CliRunner

from synthface.cli.app import app
from synthface.dataset.combined import CombinedFaces, open_training_spec, split_parts
from synthface.errors import InputError
from synthface.recognition.protocols.binfile import write_bin


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _three_parts(tmp_path):
    folder = write_image_folder(tmp_path / "folder", render_identities(3, 4, seed=1))
    shards = tmp_path / "shards"
    write_shard(shards, render_identities(4, 3, seed=2))
    (tmp_path / "rec").mkdir()
    write_recordio(tmp_path / "rec" / "train.rec", render_identities(2, 5, seed=3))
    return folder, shards, tmp_path / "rec"


def test_parts_keep_their_identities_apart_and_their_images(tmp_path):
    folder, shards, rec = _three_parts(tmp_path)
    spec = f"{folder}+{shards}+{rec}"
    ds = open_training_spec("mixed", spec, size=32)
    assert isinstance(ds, CombinedFaces)
    assert len(ds) == 12 + 12 + 10 and ds.num_classes == 3 + 4 + 2
    rows = ds.composition()
    assert [(r["format"], r["identities"], r["images"], r["label_offset"]) for r in rows] == [
        ("ImageFolderFaces", 3, 12, 0),
        ("ShardFaces", 4, 12, 3),
        ("RecordIOFaces", 2, 10, 7),
    ]
    assert [r["path"] for r in rows] == [str(folder), str(shards), str(rec)]
    # each part's labels land in its own range, and every image is the part's own image with its label shifted
    for part, start, offset in zip(ds.parts, (0, 12, 24), (0, 3, 7)):
        got = ds.labels[start : start + len(part)]
        assert got.tolist() == (part.labels + offset).tolist()
        assert set(got) == set(range(offset, offset + part.num_classes))
        for i in (0, len(part) - 1):
            image, label = ds[start + i]
            own, own_label = part[i]
            assert torch.equal(image, own) and label == own_label + offset
    assert np.bincount(ds.labels).tolist() == [4] * 3 + [3] * 4 + [5] * 2


def test_min_images_and_people_apply_per_part(tmp_path):
    folder = write_image_folder(tmp_path / "folder", render_identities(3, 4, seed=1))
    write_shard(tmp_path / "shards", render_identities(2, 2, seed=2) + [(2, img) for _, img in render_identities(1, 5, seed=4)])
    people = ["id0000", "id0002"]
    ds = open_training_spec("mixed", f"{folder}+{tmp_path / 'shards'}", size=32, min_images=3, people=people)
    assert [(r["identities"], r["images"]) for r in ds.composition()] == [(2, 8), (1, 5)]
    assert ds.num_classes == 3 and sorted(set(ds.labels.tolist())) == [0, 1, 2]


def test_a_path_with_a_plus_that_exists_is_one_set(tmp_path):
    folder = write_image_folder(tmp_path / "a+b", render_identities(2, 3))
    assert split_parts(str(folder)) == [str(folder)]
    assert type(open_training_spec("x", str(folder), size=32)).__name__ == "ImageFolderFaces"
    assert split_parts("x+y") == ["x", "y"]


def test_refusals_are_clear(tmp_path):
    folder, shards, rec = _three_parts(tmp_path)
    big = write_image_folder(tmp_path / "big", render_identities(2, 3, size=48, seed=5))
    same_names = write_image_folder(tmp_path / "again", render_identities(2, 2, seed=9))  # id0000, id0001 again
    for name in ("s1", "s2"):
        write_shard(tmp_path / name, render_identities(2, 2, seed=6))
        (tmp_path / name / "inputs.json").write_text(json.dumps({"model_files": {}, "identities": "abc123"}))
    cases = {
        f"{folder}++{shards}": "empty part",
        f"{folder}+{tmp_path / 'missing'}": "does not exist",
        f"{folder}+{shards}+{folder}": "twice",
        f"{folder}+{big}": "32x32 images but",
        f"{folder}+{same_names}": "share 2 identities (e.g. 'id0000')",
        f"{tmp_path / 's1'}+{tmp_path / 's2'}": "same identity plan",
    }
    for spec, expected in cases.items():
        with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")) as exc:
            open_training_spec("mixed", spec, size=32)
        assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="no part of mixed is one"):
        open_training_spec("mixed", f"{shards}+{rec}", size=32, people=["id0000"])


def test_cli_refuses_before_writing(tmp_path):
    folder = write_image_folder(tmp_path / "folder", render_identities(3, 4, seed=1))
    big = write_image_folder(tmp_path / "big", render_identities(2, 3, size=48, seed=5))
    runner = CliRunner()
    for spec, expected in ((f"{folder}+{big}", "resizing both"), (f"{folder}+{tmp_path / 'nope'}", "part")):
        out = tmp_path / "out"
        res = runner.invoke(
            app, ["evaluate", "--train", f"mixed={spec}", "--bench", f"b={tmp_path / 'x.bin'}", "--out", str(out)] + _sets(TINY)
        )
        assert res.exit_code == 2 and "error:" in res.output and expected in res.output, res.output
        assert "Traceback" not in res.output and not out.exists()


def test_evaluate_trains_on_a_combined_set(tmp_path):
    real = render_identities(6, 8, seed=11)
    synth = render_identities(6, 8, seed=12)
    write_image_folder(tmp_path / "real", real)
    write_shard(tmp_path / "synth", synth)
    (tmp_path / "people.txt").write_text("id0000\nid0001\nid0002\nid0003\n")
    images, issame = make_pairs(real + [(label + 6, img) for label, img in synth], 40)
    write_bin(tmp_path / "own.bin", images, issame)
    out = tmp_path / "out"
    args = ["evaluate", "--train", f"mixed={tmp_path / 'real'}+{tmp_path / 'synth'}", "--people", f"mixed={tmp_path / 'people.txt'}",
            "--bench", f"own={tmp_path / 'own.bin'}", "--out", str(out), "--json", str(tmp_path / "s.json")]  # fmt: skip
    res = CliRunner().invoke(app, args + _sets(TINY + ["train.max_steps=4", "train.batch_size=16"]))
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    trained = report["training"]["mixed"]
    assert trained["identities"] == 4 + 6 and trained["images"] == 4 * 8 + 6 * 8 and trained["steps"] == 4
    assert [(p["path"], p["identities"], p["images"], p["label_offset"]) for p in trained["parts"]] == [
        (str(tmp_path / "real"), 4, 32, 0),
        (str(tmp_path / "synth"), 6, 48, 4),
    ]
    assert 0.0 <= report["results"]["mixed"]["own"]["accuracy"] <= 1.0
    assert json.loads((tmp_path / "s.json").read_text())["training"]["mixed"]["parts"] == trained["parts"]
    md = (out / "report.md").read_text()
    assert "## Combined training sets" in md and f"| mixed | {tmp_path / 'synth'} | ShardFaces | 6 | 48 | 4-9 |" in md

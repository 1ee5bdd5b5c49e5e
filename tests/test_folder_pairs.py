"""Verification on your own faces: a `path_a,path_b,same` CSV, and a seeded people-disjoint protocol
drawn from a folder of people, for `synthface verify` and `synthface evaluate --bench`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from synthface.cli.app import app
from synthface.errors import InputError
from synthface.recognition.benchmarks import split_spec
from synthface.recognition.protocols import load_protocol


def people_folder(root: Path, people: int = 24, per: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for p in range(people):
        (root / f"person{p:02d}").mkdir(parents=True)
        for i in range(per):
            Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(root / f"person{p:02d}" / f"{i}.png")
    return root


def test_folder_protocol_is_seeded_and_people_disjoint(tmp_path: Path) -> None:
    root = people_folder(tmp_path / "people")
    proto = load_protocol(root, n_folds=4, seed=3)
    person = np.array([Path(p).parent.name for p in proto.images])
    a, b = person[proto.pairs[:, 0]], person[proto.pairs[:, 1]]
    # 6 people of 3 images per fold: 18 same-person pairs, and as many different-person ones
    assert len(proto) == 4 * 36 and proto.same_pairs == 4 * 18 and proto.n_folds == 4
    assert (a == b).tolist() == proto.issame.tolist()
    folds = [set(a[proto.folds == k]) | set(b[proto.folds == k]) for k in range(4)]
    assert all(not (folds[i] & folds[j]) for i in range(4) for j in range(i + 1, 4))  # people-disjoint
    keys = {tuple(sorted((proto.images[i], proto.images[j]))) for i, j in proto.pairs}
    assert len(keys) == len(proto)  # no pair twice
    again = load_protocol(root, n_folds=4, seed=3)
    assert again.images == proto.images and np.array_equal(again.pairs, proto.pairs)
    other = load_protocol(root, n_folds=4, seed=4)
    assert [str(p) for p in other.images] != [str(p) for p in proto.images] or not np.array_equal(other.pairs, proto.pairs)
    assert len(load_protocol(root, n_folds=4, seed=3, pairs_per_fold=5)) == 4 * 10
    with pytest.raises(InputError, match="has 24 people with 2\+ images; 13 people-disjoint folds need at least 26"):
        load_protocol(root, n_folds=13)
    with pytest.raises(InputError, match="ask for fewer pairs per fold"):
        load_protocol(root, n_folds=4, pairs_per_fold=19)


def test_csv_pairs(tmp_path: Path) -> None:
    root = people_folder(tmp_path / "people", people=2, per=2)
    csv = tmp_path / "pairs.csv"
    csv.write_text("path_a,path_b,same\n" + "\n".join(
        ["people/person00/0.png,people/person00/1.png,1", "people/person00/0.png,people/person01/0.png,0",
         "people/person01/0.png,people/person01/1.png,true", "people/person00/1.png,people/person01/1.png,false"]) + "\n")  # fmt: skip
    proto = load_protocol(csv, n_folds=2)
    assert proto.issame.tolist() == [True, False, True, False] and len(proto.images) == 4 and proto.n_folds == 2
    assert proto.images[0] == tmp_path / "people" / "person00" / "0.png"
    folded = tmp_path / "folded.csv"
    folded.write_text("path_a,path_b,same,fold\nperson00/0.png,person00/1.png,1,0\nperson00/0.png,person01/0.png,0,1\n"
                      "person01/0.png,person01/1.png,1,1\nperson00/1.png,person01/1.png,0,0\n")  # fmt: skip
    assert load_protocol(folded, root).folds.tolist() == [0, 1, 1, 0]  # paths relative to the images folder
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\nx,y,1\n")
    with pytest.raises(InputError, match="path_a,path_b,same"):
        load_protocol(bad)
    bad.write_text("path_a,path_b,same\npeople/person00/0.png,people/nobody/0.png,1\n")
    with pytest.raises(InputError, match="missing .*nobody"):
        load_protocol(bad)
    bad.write_text("path_a,path_b,same\npeople/person00/0.png,people/person00/1.png,maybe\n")
    with pytest.raises(InputError, match=":2: same must be"):
        load_protocol(bad)
    assert split_spec(str(csv)) == (csv, None) and split_spec(str(root)) == (root, None)


def test_verify_on_a_folder_of_people(tmp_path: Path) -> None:
    from synthface.testing import register_tiny_embedder

    register_tiny_embedder("tiny-folder")
    root = people_folder(tmp_path / "people")
    res = CliRunner().invoke(app, ["verify", "--pairs", str(root), "--embedder", "tiny-folder", "--set", "aligned=true",
                                   "--set", "folds=4", "--set", "pairs_per_fold=6", "--json", "-"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["pairs"] == 4 * 12 and summary["failed_images"] == 0 and 0.0 <= summary["accuracy"] <= 1.0

"""One rule for what is an image file: a folder of .tif faces is read the same by every command."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from synthface.dataset.reader import open_training_set
from synthface.files import IMAGE_SUFFIXES, is_image_file, list_images
from synthface.recognition.protocols.folders import people_in


def _faces(root, suffix: str):
    rng = np.random.default_rng(0)
    for person in ("ann", "bob"):
        (root / person).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / person / f"{i}{suffix}")
    return root


def test_a_tif_folder_is_training_data(tmp_path):
    root = _faces(tmp_path / "tif", ".tif")
    data = open_training_set(root)
    assert len(data) == 4 and data.num_classes == 2  # it used to be skipped: ".tif" was not a training-image suffix
    assert len(list_images(root)) == 4
    assert {k: len(v) for k, v in people_in(root).items()} == {"ann": 2, "bob": 2}


def test_what_is_an_image(tmp_path):
    assert {".tif", ".tiff", ".jpg", ".png", ".webp"} <= IMAGE_SUFFIXES
    (tmp_path / "a.JPG").write_bytes(b"x")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    (tmp_path / "dir.jpg").mkdir()
    os.mkfifo(tmp_path / "pipe.jpg")
    assert [p.name for p in sorted(tmp_path.iterdir()) if is_image_file(p)] == ["a.JPG"]

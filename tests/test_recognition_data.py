"""Synthetic "identities" for recognizer tests: coloured block patterns with per-image jitter, rendered in-process.

Each identity is a random 4x4 grid of colours; each of its images is that grid
upsampled, shifted by a few pixels, re-lit and noised. A recognizer can learn to tell
them apart within a few dozen SGD steps, so training and verification code can be
tested end to end on a CPU without any real data.
"""

from __future__ import annotations

import io
import json
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image


def render_identities(n_ids: int, per_id: int, size: int = 32, seed: int = 0) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cell = size // 4
    out = []
    for label in range(n_ids):
        grid = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
        base = np.kron(grid, np.ones((cell, cell, 1), dtype=np.float32))
        for _ in range(per_id):
            img = np.roll(base, shift=tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
            img = img * rng.uniform(0.8, 1.2) + rng.normal(0, 12, img.shape)
            out.append((label, np.clip(img, 0, 255).astype(np.uint8)))
    return out


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_image_folder(root: Path, samples: list[tuple[int, np.ndarray]]) -> Path:
    counts: dict[int, int] = {}
    for label, image in samples:
        counts[label] = counts.get(label, 0) + 1
        folder = root / f"id{label:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"id{label:04d}_{counts[label]:04d}.png")
    return root


def write_shard(root: Path, samples: list[tuple[int, np.ndarray]], index: int = 0, total: int = 1, commit: bool = True) -> Path:
    """One synthface-style Parquet shard (HF Image struct column) plus its JSON commit marker."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    name = f"train-{index:05d}-of-{total:05d}"
    images = [{"bytes": encode_png(img), "path": f"{label}_{k}.png"} for k, (label, img) in enumerate(samples)]
    table = pa.table(
        {
            "image": pa.array(images, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "label": pa.array([label for label, _ in samples], type=pa.int64()),
            "identity": pa.array([label for label, _ in samples], type=pa.int64()),
            "sample": pa.array(list(range(len(samples))), type=pa.int64()),
            "seed": pa.array(list(range(len(samples))), type=pa.int64()),
            "id_score": pa.array([0.9] * len(samples), type=pa.float32()),
            "det_score": pa.array([0.99] * len(samples), type=pa.float32()),
        }
    )
    path = data / f"{name}.parquet"
    pq.write_table(table, path)
    if commit:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        marker = {"rows": len(samples), "sha256": digest}
        (data / f".{name}.json").write_text(json.dumps(marker), encoding="utf-8")  # hidden, as synthface writes it
    return path


def make_pairs(samples: list[tuple[int, np.ndarray]], n_pairs: int, seed: int = 1) -> tuple[list[bytes], list[bool]]:
    """Balanced same/different pairs among ``samples`` as (encoded images, issame), .bin order."""
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = {}
    for i, (label, _) in enumerate(samples):
        by_label.setdefault(label, []).append(i)
    labels = sorted(by_label)
    images, issame = [], []
    for k in range(n_pairs):
        if k % 2 == 0:
            lab = labels[rng.integers(len(labels))]
            a, b = rng.choice(by_label[lab], 2, replace=False)
        else:
            la, lb = rng.choice(labels, 2, replace=False)
            a, b = rng.choice(by_label[la]), rng.choice(by_label[lb])
        images += [encode_png(samples[a][1]), encode_png(samples[b][1])]
        issame.append(k % 2 == 0)
    return images, issame


def test_render_identities_is_deterministic_and_labelled():
    a = render_identities(3, 2, seed=5)
    b = render_identities(3, 2, seed=5)
    assert [l for l, _ in a] == [0, 0, 1, 1, 2, 2]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))
    assert a[0][1].shape == (32, 32, 3) and a[0][1].dtype == np.uint8

"""Seeded subsets of a dataset (synthface.dataset.subset): the rows chosen, and the subset written as a dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_recognition_data import render_identities, write_shard

from synthface.dataset.reader import ShardFaces
from synthface.dataset.subset import SUBSET_FILE, source_table, subset_rows, write_subset
from synthface.errors import InputError

# 6 identities with 1..6 images, shuffled, plus rows of no identity
LABELS = np.array([v for v in range(6) for _ in range(v + 1)] + [-1, -1])
LABELS = LABELS[np.random.default_rng(3).permutation(len(LABELS))]


def _counts(rows: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(LABELS[rows], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def test_identities_and_images_per_identity_are_what_was_asked():
    rows = subset_rows(LABELS, 4, None, seed=0)
    counts = _counts(rows)
    assert len(counts) == 4 and all(counts[v] == v + 1 for v in counts)  # all images of 4 identities
    rows = subset_rows(LABELS, None, 3, seed=0)
    assert _counts(rows) == {0: 1, 1: 2, 2: 3, 3: 3, 4: 3, 5: 3}  # capped at 3, fewer kept whole
    assert sorted(rows.tolist()) == rows.tolist() and len(set(rows.tolist())) == len(rows)
    assert (LABELS[subset_rows(LABELS, None, None, seed=0)] >= 0).all()
    assert len(_counts(subset_rows(LABELS, 100, None, seed=0))) == 6  # more than there are: all of them


def test_subsets_are_seeded_and_nested():
    assert np.array_equal(subset_rows(LABELS, 3, 2, seed=5), subset_rows(LABELS, 3, 2, seed=5))
    draws = {tuple(subset_rows(LABELS, 2, 2, seed=s).tolist()) for s in range(6)}
    assert len(draws) > 1  # the seed picks
    for seed in range(4):
        for small, big in ((2, 4), (4, 6)):
            assert set(subset_rows(LABELS, small, None, seed).tolist()) <= set(subset_rows(LABELS, big, None, seed).tolist())
        for small, big in ((1, 2), (2, 5)):
            assert set(subset_rows(LABELS, None, small, seed).tolist()) <= set(subset_rows(LABELS, None, big, seed).tolist())
        # the images chosen per identity do not depend on how many identities are taken
        few = subset_rows(LABELS, 3, 2, seed)
        assert set(few.tolist()) <= set(subset_rows(LABELS, None, 2, seed).tolist())


def test_bad_sizes_are_refused():
    for identities, per in ((0, None), (None, 0)):
        with pytest.raises(InputError, match="at least one"):
            subset_rows(LABELS, identities, per, seed=0)


def test_a_written_subset_is_a_dataset_of_the_chosen_rows(tmp_path):
    samples = [(label + 10, img) for label, img in render_identities(5, 4, seed=2)]  # labels 10..14
    write_shard(tmp_path / "src", samples[:8], index=0, total=2)
    write_shard(tmp_path / "src", samples[8:], index=1, total=2)
    table = source_table(tmp_path / "src")
    assert table.num_rows == 20
    rows = subset_rows(table.column("label").to_numpy(), 3, 2, seed=1)
    info = write_subset(table, rows, tmp_path / "sub", {"seed": 1})
    assert info["identities"] == 3 and info["images"] == 6 and info["images_per_identity"] == {"mean": 2.0, "min": 2, "max": 2}
    assert json.loads((tmp_path / "sub" / SUBSET_FILE).read_text()) == info
    ds = ShardFaces(tmp_path / "sub", size=32)
    assert len(ds) == 6 and ds.num_classes == 3
    got = ds._bytes[0].to_pylist()
    assert got == [table.column("image").to_pylist()[i]["bytes"] for i in rows]  # the rows, in order, bytes as they were
    old = table.column("label").to_numpy()[rows]
    assert ds.labels.tolist() == np.unique(old, return_inverse=True)[1].tolist()  # contiguous, order kept
    image, _ = ds[0]
    assert image.dtype == torch.uint8
    # written again with other rows: the folder is replaced whole
    write_subset(table, rows[:2], tmp_path / "sub")
    assert len(ShardFaces(tmp_path / "sub")) == 2

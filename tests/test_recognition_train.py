"""Recognizer training on generated identities: the loss falls, pairs beat chance, resume and max_steps=0 work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_recognition_data import render_identities, write_image_folder

from synthface.config import EvaluateRecipe, load_recipe
from synthface.dataset.reader import open_training_set
from synthface.errors import ConfigError, InputError
from synthface.recognition.benchmarks import embed_crops
from synthface.recognition.train import (
    build_transform,
    load_recognizer,
    lr_factor,
    train_recognizer,
)
from synthface.recognition.protocols import PairsProtocol
from synthface.training import ProcessEpochSampler
from synthface.recognition.verification import evaluate_embeddings

TINY = [
    "recognizer.backbone=iresnet-mini",
    "recognizer.input_size=32",
    "recognizer.embedding_dim=64",
    "recognizer.loss=cosface",
    "recognizer.margin=0.2",
    "recognizer.scale=16",
    "train.batch_size=32",
    "train.lr=0.05",
    "train.milestones=[1000]",
    "train.device=cpu",
    "train.workers=0",
    "train.log_every=5",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def recipe(*extra: str) -> EvaluateRecipe:
    return load_recipe(EvaluateRecipe, None, TINY + list(extra))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    write_image_folder(root, render_identities(12, 10, seed=0))
    return root


def _verification_accuracy(backbone, samples) -> float:
    crops = torch.stack([torch.from_numpy(img).permute(2, 0, 1) for _, img in samples])
    emb = embed_crops(backbone, crops, input_size=32, batch_size=64)
    labels = np.array([label for label, _ in samples])
    rng = np.random.default_rng(0)
    pairs, same = [], []
    for k in range(400):
        a, b = rng.choice(len(samples), 2, replace=False)
        if k % 2 == 0:  # a same pair
            b = rng.choice(np.flatnonzero((labels == labels[a]) & (np.arange(len(labels)) != a)))
        pairs.append((a, b))
        same.append(labels[a] == labels[b])
    pairs, same = np.array(pairs), np.array(same)
    protocol = PairsProtocol("own", [b""] * len(samples), pairs, same, np.arange(len(pairs)) % 5)
    return evaluate_embeddings(emb, protocol).accuracy


def test_training_reduces_loss_and_beats_chance(folder, tmp_path):
    ds = open_training_set(folder, size=32)
    result = train_recognizer(ds, recipe("train.max_steps=30"), tmp_path / "run", name="tiny")
    losses = [row["loss"] for row in result.history]
    assert result.steps == 30 and len(losses) == 6
    assert losses[-1] < 0.5 * losses[0]
    assert result.history[-1]["accuracy"] > 0.5  # training accuracy over 12 identities (chance 1/12)
    backbone, meta = load_recognizer(result.recognizer)
    assert meta["input_size"] == 32 and meta["meta"]["identities"] == 12
    # unseen images of the same identities
    acc = _verification_accuracy(backbone, render_identities(12, 10, seed=0)[:0] + _held_out())
    assert acc > 0.75
    history = json.loads((tmp_path / "run" / "history.json").read_text())["history"]
    assert [h["step"] for h in history] == [5, 10, 15, 20, 25, 30]


def _held_out():
    # same identity patterns (seed 0), new jitter: re-render with more images and keep the extra ones
    more = render_identities(12, 14, seed=0)
    by_id: dict[int, list] = {}
    for label, img in more:
        by_id.setdefault(label, []).append(img)
    return [(label, img) for label, imgs in by_id.items() for img in imgs[10:]]


def test_max_steps_zero_saves_the_untrained_backbone(folder, tmp_path):
    ds = open_training_set(folder, size=32)
    result = train_recognizer(ds, recipe("train.max_steps=0"), tmp_path / "run")
    assert result.steps == 0 and result.history == []
    backbone, _ = load_recognizer(tmp_path / "run")
    again = train_recognizer(ds, recipe("train.max_steps=0"), tmp_path / "run2")
    other, _ = load_recognizer(again.recognizer)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(backbone(x), other(x))  # seeded: the same untrained baseline every time


class _StopAt:
    """A progress hook that interrupts training like Ctrl-C after ``n`` steps."""

    def __init__(self, n: int) -> None:
        self.n, self.seen, self.training = n, 0, False

    def start(self, total, description):
        self.training = description.startswith("train")

    def advance(self, n=1, **info):
        self.seen += n if self.training else 0
        if self.seen > self.n:
            raise KeyboardInterrupt

    def finish(self):
        pass


def test_resume_continues_to_the_same_weights(folder, tmp_path):
    ds = open_training_set(folder, size=32)
    r = recipe("train.max_steps=12", "train.checkpoint_every=4", "train.augment=[]")
    full = train_recognizer(ds, r, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        train_recognizer(ds, r, tmp_path / "cut", progress=_StopAt(6))
    with pytest.raises(InputError, match="--resume"):
        train_recognizer(ds, r, tmp_path / "cut")
    with pytest.raises(ConfigError, match="train.lr"):
        train_recognizer(
            ds,
            recipe("train.max_steps=12", "train.checkpoint_every=4", "train.augment=[]", "train.lr=0.01"),
            tmp_path / "cut",
            resume=True,
        )
    resumed = train_recognizer(ds, r, tmp_path / "cut", resume=True)
    assert resumed.steps == 12 and [h["step"] for h in resumed.history] == [5, 10, 12]
    a, _ = load_recognizer(full.recognizer)
    b, _ = load_recognizer(resumed.recognizer)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-5), name


def test_schedule_and_sampler():
    r = recipe("train.warmup_epochs=1", "train.milestones=[2, 3]", "train.lr_decay=0.1")
    assert lr_factor(0, 100, 10, r) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, r) == pytest.approx(1.0)
    assert lr_factor(19, 100, 10, r) == 1.0 and lr_factor(20, 100, 10, r) == pytest.approx(0.1)
    assert lr_factor(35, 100, 10, r) == pytest.approx(0.01)
    poly = recipe("train.schedule=poly", "train.poly_power=2")
    assert lr_factor(50, 100, 10, poly) == pytest.approx(0.25)
    # two processes see disjoint halves of the single-process batches, resumable mid-epoch
    one = list(ProcessEpochSampler(20, seed=3, per_process=4))
    r0, r1 = list(ProcessEpochSampler(20, 3, 2, rank=0, world=2)), list(ProcessEpochSampler(20, 3, 2, rank=1, world=2))
    assert one[:4] == r0[:2] + r1[:2] and sorted(r0 + r1) == sorted(one)
    s = ProcessEpochSampler(20, seed=3, per_process=4)
    s.set_epoch(0, skip_steps=2)
    assert list(s) == one[8:]
    s.set_epoch(1)
    assert list(s) != one


def test_augment_switches():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    plain = build_transform(recipe("train.augment=[]"))(image)
    assert plain.dtype == torch.float32 and plain.min() >= -1 and plain.max() <= 1
    assert torch.allclose(plain, image.float() / 127.5 - 1, atol=1e-6)
    full = build_transform(recipe("train.augment=[flip, randaugment, random_erasing]"))
    assert full(image).shape == (3, 32, 32)


def test_train_threads_are_restored_after_the_run(folder, tmp_path):
    ds = open_training_set(folder, size=32)
    torch.set_num_threads(2)
    try:
        train_recognizer(ds, recipe("train.max_steps=2", "train.threads=1", "train.checkpoint_every=1"), tmp_path / "run")
        assert torch.get_num_threads() == 2  # train.threads held for the run only
        with pytest.raises(InputError, match="already holds a training run"):
            train_recognizer(ds, recipe("train.threads=1"), tmp_path / "run")
        assert torch.get_num_threads() == 2  # and after a refused run too
    finally:
        torch.set_num_threads(1)

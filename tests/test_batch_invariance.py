"""Every model family samples deterministically and batch-invariantly: the same seeds give the same images,
the batch size never changes an image, and another seed gives another image.

One test class runs over every family on tiny random models built in-process: the native model (cross-attention
tokens, and the class-embedding path with v-prediction) and the Arc2Face replica (loaded through the real
from_pretrained code)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch

from helpers_generate import EMBED_DIM, IMAGE_SIZE, class_embedding_model, make_tiny_model, shared_direction_embeddings
from synthface.generator import generate, load_model, sample_batch
from synthface.generator.arc2face_testing import tiny_arc2face_model
from synthface.generator.native import uses_class_embedding
from synthface.generator.schedules import SCHEDULER_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")


def unit_embeddings(dim: int) -> Callable[[int, int], np.ndarray]:
    def embeddings(n: int, seed: int) -> np.ndarray:
        e = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    return embeddings


@dataclass(frozen=True)
class Family:
    """A model family under test: how to build its tiny model, its identity embeddings and its image size."""

    build: Callable[[Any], Any]  # tmp_path_factory -> model
    embeddings: Callable[[int, int], np.ndarray]  # (n, seed) -> (n, D) unit embeddings
    image_size: int


def _native(tmp_path_factory: Any) -> Any:
    return load_model(make_tiny_model(tmp_path_factory.mktemp("native") / "model"))


def _native_class_embedding(tmp_path_factory: Any) -> Any:
    model = class_embedding_model()
    assert uses_class_embedding(model.unet)
    return model


def _arc2face(tmp_path_factory: Any) -> Any:
    return load_model(tiny_arc2face_model(tmp_path_factory.mktemp("a2f") / "model"))


FAMILIES = {
    "native": Family(_native, unit_embeddings(EMBED_DIM), IMAGE_SIZE),
    "native-class-embedding": Family(_native_class_embedding, shared_direction_embeddings, IMAGE_SIZE),
    "arc2face": Family(_arc2face, unit_embeddings(512), 64),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: Any, tmp_path_factory: Any) -> tuple[Family, Any]:
    spec = FAMILIES[request.param]
    return spec, spec.build(tmp_path_factory)


class TestDeterministicAndBatchInvariant:
    """The same seeds give the same images, whatever the batch; another seed gives another image."""

    @pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
    def test_the_same_seeds_give_the_same_images(self, family, scheduler):
        spec, model = family
        emb = spec.embeddings(2, 0)
        options = dict(scheduler=scheduler, steps=2, guidance_scale=2.5)
        a = sample_batch(model, emb, [7, 8], **options)
        b = sample_batch(model, emb, [7, 8], **options)
        assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
        assert a.shape == (2, 3, spec.image_size, spec.image_size)

    @pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
    def test_the_batch_size_never_changes_an_image(self, family, scheduler):
        spec, model = family
        emb, seeds = spec.embeddings(5, 1), np.array([11, 12, 13, 14, 15])
        options = dict(scheduler=scheduler, steps=3, guidance_scale=2.5)
        whole = sample_batch(model, emb, seeds, **options)
        assert torch.isfinite(whole).all()
        for batch in (1, 2, 3):
            parts = torch.cat(
                [sample_batch(model, emb[i : i + batch], seeds[i : i + batch], **options) for i in range(0, 5, batch)]
            )
            assert torch.equal(parts, whole), f"batch size {batch} changed the images"
        # and the uint8 images the writer stores, in batches of any size, of any subset
        images = generate(model, emb, seeds, batch_size=2, **options)
        assert images.shape == (5, spec.image_size, spec.image_size, 3) and images.dtype == np.uint8
        assert np.array_equal(images, (whole * 255).round().permute(0, 2, 3, 1).numpy())
        assert np.array_equal(generate(model, emb[1:], seeds[1:], batch_size=3, **options), images[1:])

    def test_another_seed_gives_another_image(self, family):
        spec, model = family
        emb = spec.embeddings(3, 2)
        options = dict(scheduler="ddpm", steps=2, guidance_scale=2.5)
        a = generate(model, emb, [1, 2, 3], batch_size=3, **options)
        assert a.shape == (3, spec.image_size, spec.image_size, 3) and a.dtype == np.uint8
        assert not np.array_equal(a[0], a[1])  # two seeds of one batch differ
        b = generate(model, emb, [4, 5, 6], batch_size=3, **options)
        assert all(not np.array_equal(a[i], b[i]) for i in range(3))
        other = generate(model, emb, [9, 2, 3], batch_size=3, **options)  # only the first seed changes
        assert not np.array_equal(other[0], a[0]) and np.array_equal(other[1:], a[1:])

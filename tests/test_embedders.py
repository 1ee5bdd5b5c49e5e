from __future__ import annotations

import numpy as np
import pytest

from synthface.errors import InputError, WeightsError
from synthface.faces.align import ARCFACE_TEMPLATE, FaceDetector, load_image, template_landmarks
from synthface.faces.embedders import (
    boxes_from_landmarks,
    embed_aligned,
    embedder_names,
    get_embedder,
    register_embedder,
)


def tiny_arcface_onnx(path, dim=32, size=112, inside=(None, None)):
    """A tiny random ArcFace-shaped ONNX model: (N, 3, size, size) -> (N, dim).

    ``inside`` names a Sub node (- 127.5) and a Mul node (/ 127.5) put first, as mxnet exports
    normalise their raw-pixel input inside the graph (None: no such node).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w_conv = rng.normal(size=(8, 3, 8, 8)).astype(np.float32)
    feat = 8 * (size // 8) ** 2
    w_fc = (rng.normal(size=(feat, dim)) / np.sqrt(feat)).astype(np.float32)
    sub, mul = inside
    first = []
    x = "input"
    if sub is not None:
        first.append(helper.make_node("Sub", [x, "mean"], ["centred"], name=sub))
        x = "centred"
    if mul is not None:
        first.append(helper.make_node("Mul", [x, "scale"], ["scaled"], name=mul))
        x = "scaled"
    constants = [numpy_helper.from_array(np.float32(127.5), "mean"), numpy_helper.from_array(np.float32(1 / 127.5), "scale")]
    nodes = first + [
        helper.make_node("Conv", [x, "w_conv"], ["c"], strides=[8, 8]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w_fc"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        [numpy_helper.from_array(w_conv, "w_conv"), numpy_helper.from_array(w_fc, "w_fc")] + constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _random_faces(n=3, seed=0):
    rng = np.random.default_rng(seed)
    imgs = [rng.integers(0, 255, (140, 130, 3), dtype=np.uint8) for _ in range(n)]
    lms = np.stack([ARCFACE_TEMPLATE + [10, 15] for _ in range(n)]).astype(np.float32)
    return imgs, lms


def test_onnx_embedder_from_local_file(tmp_path):
    path = tiny_arcface_onnx(tmp_path / "arc.onnx", dim=32)
    emb = get_embedder(f"onnx:{path}", device="cpu")
    assert emb.dim == 32 and emb.name == f"onnx:{path}"
    imgs, lms = _random_faces()
    out = emb.embed(imgs, lms)
    assert out.shape == (3, 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    # alignment is inside the embedder: the same face shifted in the frame embeds the same
    shifted = [np.pad(imgs[0], ((7, 0), (5, 0), (0, 0)))]
    again = emb.embed(shifted, lms[:1] + [5, 7])
    np.testing.assert_allclose(again[0], out[0], atol=1e-4)


@pytest.mark.parametrize("names", [("_minusscalar0", "_mulscalar0"), ("Sub_0", "Mul_1")])
def test_onnx_graph_that_normalises_inside_gets_raw_pixels(tmp_path, names):
    plain = get_embedder(f"onnx:{tiny_arcface_onnx(tmp_path / 'plain.onnx')}", device="cpu")
    inside = get_embedder(f"onnx:{tiny_arcface_onnx(tmp_path / 'inside.onnx', inside=names)}", device="cpu")
    assert (plain.input_mean, plain.input_std) == (127.5, 127.5)
    assert (inside.input_mean, inside.input_std) == (0.0, 1.0)  # insightface's rule: the graph subtracts and scales
    imgs, lms = _random_faces()
    # the same network, normalised once either way: the same identities
    np.testing.assert_allclose(inside.embed(imgs, lms), plain.embed(imgs, lms), atol=1e-5)


@pytest.mark.parametrize("names", [("_minusscalar0", None), (None, "_mulscalar0"), ("Conv_0", "Relu_1")])
def test_onnx_graph_that_does_not_both_subtract_and_scale_gets_normalised_pixels(tmp_path, names):
    emb = get_embedder(f"onnx:{tiny_arcface_onnx(tmp_path / 'half.onnx', inside=names)}", device="cpu")
    assert (emb.input_mean, emb.input_std) == (127.5, 127.5)


def test_onnx_missing_file_and_hub_offline(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="ONNX model not found"):
        get_embedder(f"onnx:{tmp_path / 'nope.onnx'}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="could not fetch arcface.onnx from the Hub repo FoivosPar/Arc2Face"):
        get_embedder("onnx:FoivosPar/Arc2Face/arcface.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="cannot load ONNX model"):
        get_embedder(f"onnx:{tmp_path / 'broken.onnx'}")


def test_unknown_embedder_lists_choices():
    with pytest.raises(InputError, match="unknown embedder 'arcfaec'.*dlib"):
        get_embedder("arcfaec")
    assert "facenet-vggface2" in embedder_names()


def test_wrong_landmark_shape_is_named():
    emb = get_embedder("dlib")
    imgs, lms = _random_faces(2)
    with pytest.raises(InputError, match=r"landmarks must have shape \(2, 5, 2\)"):
        emb.embed(imgs, lms[:, :4])


def test_facenet_weights_file_path(tmp_path):
    import torch
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    net = InceptionResnetV1(pretrained=None, classify=False).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    emb = get_embedder("facenet-vggface2", device="cpu", weights=str(tmp_path / "w.pt"))
    assert emb.dim == 512
    imgs, lms = _random_faces(1)
    out = emb.embed(imgs, lms, boxes_from_landmarks(lms))
    assert out.shape == (1, 512)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    # the same crop through the raw network gives the same embedding
    crops = emb.crops(imgs, boxes_from_landmarks(lms))
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().sub(127.5).div(128.0)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(net(x), dim=1).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4)
    with pytest.raises(WeightsError, match="not found"):
        get_embedder("facenet-casia", weights=str(tmp_path / "missing.pt"))


def test_facenet_download_failure_says_what_to_do(monkeypatch):
    import facenet_pytorch.models.inception_resnet_v1 as irv1

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(irv1, "load_weights", offline)
    with pytest.raises(WeightsError, match="could not fetch facenet-vggface2 weights") as err:
        get_embedder("facenet-vggface2", device="cpu")
    # names the offline alternative, the one-step fetch and the local-file way
    for part in ("--embedder dlib", "synthface download --embedder facenet-vggface2", "--set weights=FILE"):
        assert part in str(err.value)


def test_register_and_embed_aligned():
    class Mean:
        name, dim = "mean", 3

        def embed(self, images, landmarks, boxes=None):
            x = np.stack([i.reshape(-1, 3).mean(0) for i in images]).astype(np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

    register_embedder("mean-test", lambda device="auto", weights=None: Mean())
    emb = get_embedder("mean-test")
    crops = [np.full((112, 112, 3), v, np.uint8) for v in (10, 200)]
    assert embed_aligned(emb, crops, batch_size=1).shape == (2, 3)


def test_boxes_from_template_landmarks_cover_the_face():
    box = boxes_from_landmarks(template_landmarks(112, 1))[0]
    assert box[0] < 38 and box[2] > 74 and box[1] < 51 and box[3] > 92


def test_dlib_separates_real_people(lfw_images):
    names = [("Aaron_Peirsol", 1), ("Aaron_Peirsol", 2), ("Abdullah_Gul", 1), ("Abdullah_Gul", 2)]
    imgs = [load_image(lfw_images / n / f"{n}_{i:04d}.jpg") for n, i in names]
    faces = FaceDetector(device="cpu").detect(imgs)
    assert all(f is not None for f in faces)
    emb = get_embedder("dlib")
    out = emb.embed(imgs, np.stack([f.landmarks for f in faces]), np.stack([f.box for f in faces]))
    assert out.shape == (4, 128)
    sim = out @ out.T
    same = min(sim[0, 1], sim[2, 3])
    different = max(sim[0, 2], sim[0, 3], sim[1, 2], sim[1, 3])
    assert same > 0.9 and same - different > 0.08


def test_dlib_takes_non_contiguous_views():
    """A (3, H, W) tensor's permuted view, as readers give them, embeds like its contiguous copy."""
    import torch

    chw = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 112, 112), dtype=np.uint8))
    view = chw.permute(1, 2, 0).numpy()
    assert not view.flags["C_CONTIGUOUS"]
    emb = get_embedder("dlib")
    lms = template_landmarks(112, 1)
    assert np.array_equal(emb.embed([view], lms), emb.embed([np.ascontiguousarray(view)], lms))

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from synthface.errors import InputError
from synthface.faces.align import (
    ARCFACE_TEMPLATE,
    FaceDetector,
    flip_inputs,
    load_image,
    loose_template,
    similarity_transform,
    warp_face,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]


def _dots_image(points: np.ndarray, size=(400, 360), radius=3) -> np.ndarray:
    img = np.zeros((size[1], size[0], 3), np.uint8)
    yy, xx = np.mgrid[: size[1], : size[0]]
    for (x, y), colour in zip(points, COLOURS):
        img[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = colour
    return img


def _centroid(crop: np.ndarray, colour) -> np.ndarray:
    c = np.array(colour, np.float32)
    dist = np.abs(crop.astype(np.float32) - c).sum(-1)
    weight = np.clip(1.0 - dist / 200.0, 0, None)
    ys, xs = np.mgrid[: crop.shape[0], : crop.shape[1]]
    return np.array([(xs * weight).sum() / weight.sum(), (ys * weight).sum() / weight.sum()])


@pytest.mark.parametrize("angle,scale,shift", [(0.0, 2.0, (100, 80)), (23.0, 2.7, (150, 40)), (-35.0, 1.6, (60, 120))])
def test_landmarks_land_on_template_within_one_pixel(angle, scale, shift):
    theta = math.radians(angle)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    landmarks = ARCFACE_TEMPLATE @ (scale * rot).T + np.array(shift)
    image = _dots_image(landmarks)
    crop = warp_face(image, landmarks, size=112)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for point, colour in zip(ARCFACE_TEMPLATE, COLOURS):
        assert np.linalg.norm(_centroid(crop, colour) - point) < 1.0


def test_similarity_transform_recovers_known_transform():
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    m = similarity_transform(src, src * 1.5 + [3, -2])
    np.testing.assert_allclose(m, [[1.5, 0, 3], [0, 1.5, -2]], atol=1e-9)


def test_loose_template_is_scaled_about_the_centre():
    t = loose_template(128, 0.6)
    centre = ARCFACE_TEMPLATE.mean(0)
    np.testing.assert_allclose(t.mean(0), (centre - 56) * 128 / 112 * 0.6 + 64, atol=1e-4)


def test_flip_maps_landmarks_and_swaps_sides():
    img = np.zeros((10, 20, 3), np.uint8)
    lms = np.array([[[2, 1], [8, 1], [5, 5], [3, 8], [7, 8]]], np.float32)
    f_imgs, f_lms, f_boxes = flip_inputs([img], lms, np.array([[1, 0, 9, 9]], np.float32))
    assert f_lms[0, 0].tolist() == [19 - 8, 1] and f_lms[0, 1].tolist() == [19 - 2, 1]
    assert f_boxes[0].tolist() == [10, 0, 18, 9]


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_image_modes_become_rgb_uint8(tmp_path):
    rgb = Image.new("RGB", (8, 6), (10, 200, 30))
    cases = {
        "gray.png": _encode(rgb.convert("L"), "PNG"),
        "palette.png": _encode(rgb.convert("P"), "PNG"),
        "rgba.png": _encode(rgb.convert("RGBA"), "PNG"),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "gray16.png": _encode(Image.fromarray(np.full((6, 8), 40000, np.uint16)), "PNG"),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        arr = load_image(tmp_path / name)
        assert arr.shape == (6, 8, 3) and arr.dtype == np.uint8, name
    assert abs(int(load_image(tmp_path / "gray16.png")[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(_encode(transparent, "PNG"))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (8, 4), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    (tmp_path / "o.jpg").write_bytes(_encode(img, "JPEG", exif=exif.tobytes(), quality=100))
    arr = load_image(tmp_path / "o.jpg")
    assert arr.shape == (8, 4, 3)


def test_unreadable_files_raise_input_error(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot read image"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(InputError, match="image not found"):
        load_image(tmp_path / "missing.jpg")
    good = _encode(Image.new("RGB", (64, 64)), "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 3])
    with pytest.raises(InputError):
        load_image(tmp_path / "trunc.jpg")


def test_detector_finds_real_face_and_none_on_blank(lfw_images):
    img = load_image(lfw_images / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")
    det = FaceDetector(device="cpu")
    faces = det.detect([img, np.full_like(img, 128)])
    assert faces[1] is None
    face = faces[0]
    assert face.score > 0.95
    assert face.landmarks[0, 0] < face.landmarks[1, 0]  # left eye left of right eye
    assert face.box[0] < face.landmarks[:, 0].min() and face.landmarks[:, 0].max() < face.box[2]


def test_choose_largest_or_centre():
    from synthface.faces.align import Face

    det = FaceDetector.__new__(FaceDetector)
    small_centre = Face(np.array([90, 90, 110, 110], np.float32), np.zeros((5, 2)), 0.99)
    big_corner = Face(np.array([0, 0, 60, 60], np.float32), np.zeros((5, 2)), 0.99)
    det.select = "largest"
    assert det.choose([small_centre, big_corner], (200, 200, 3)) is big_corner
    det.select = "center"
    assert det.choose([small_centre, big_corner], (200, 200, 3)) is small_centre
    assert det.choose([], (200, 200, 3)) is None

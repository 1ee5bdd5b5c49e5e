"""insightface .bin benchmarks: round trip, structure checks, and refusal of pickles that would run code."""

from __future__ import annotations

import builtins
import copyreg
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthface.errors import InputError, UnsafeFileError
from synthface.recognition.protocols import load_protocol
from synthface.recognition.protocols.binfile import load_bin, read_bin, write_bin


def _png(seed: int) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue(), pixels


def test_round_trip(tmp_path):
    encoded = [_png(i) for i in range(40)]
    issame = [i % 2 == 0 for i in range(20)]
    path = write_bin(tmp_path / "toy.bin", [e for e, _ in encoded], issame)
    images, labels = read_bin(path)
    assert images == [e for e, _ in encoded] and labels.tolist() == issame
    proto = load_bin(path)
    assert proto.name == "toy" and proto.n_pairs == 20 and proto.n_folds == 10
    assert proto.pairs.tolist() == [[2 * k, 2 * k + 1] for k in range(20)]
    assert proto.folds.tolist() == [k // 2 for k in range(20)]
    assert np.array_equal(proto.load_image(7), encoded[7][1])
    assert load_protocol(path, n_folds=5).n_folds == 5
    assert not [p for p in tmp_path.iterdir() if p.name != "toy.bin"]  # no temp files left


class _SystemCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("payload", [_SystemCall, _Eval])
@pytest.mark.parametrize("where", ["image", "label", "top"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, where, protocol):
    marker = tmp_path / "MARKER"
    evil = payload(marker)
    obj = {"image": ([evil, b"x"], [True]), "label": ([b"a", b"b"], [evil]), "top": evil}[where]
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(
        UnsafeFileError, match=r"refusing to load .*evil\.bin: it asks to construct (posix|nt|os|builtins|__builtin__)\."
    ):
        load_bin(path)
    assert not marker.exists()


def test_custom_class_and_extension_registry_are_refused(tmp_path):
    path = tmp_path / "obj.bin"
    path.write_bytes(pickle.dumps(([Path("a"), b"b"], [True])))
    with pytest.raises(UnsafeFileError, match="pathlib"):
        read_bin(path)
    # an EXT1 opcode naming os.system through the copyreg registry goes through the same gate
    code = 0x7E
    copyreg.add_extension("os", "system", code)
    try:
        marker = tmp_path / "MARKER"
        cmd = f"touch {marker}".encode()
        data = b"\x80\x02\x82" + bytes([code]) + b"C" + bytes([len(cmd)]) + cmd + b"\x85R."
        path.write_bytes(data)
        with pytest.raises(UnsafeFileError, match="os.system"):
            read_bin(path)
        assert not marker.exists()
    finally:
        copyreg.remove_extension("os", "system", code)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage that is not a pickle at all",
        np.random.default_rng(0).bytes(256),
        b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\x00\x00",
    ],
)
def test_garbage_is_a_clean_input_error(tmp_path, content):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises((InputError, UnsafeFileError)) as err:
        load_bin(path)
    assert "\n" not in str(err.value)


def test_truncated_file_is_an_input_error(tmp_path):
    path = write_bin(tmp_path / "t.bin", [_png(i)[0] for i in range(4)], [True, False])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot read .*t.bin"):
        load_bin(path)


@pytest.mark.parametrize(
    "obj,match",
    [
        ({"bins": [], "issame": []}, "expected a pickled"),
        (([b"a", b"b", b"c"],), "expected a pickled"),
        (([b"a", b"b", b"c"], [True]), "exactly two images per pair"),
        (([b"a", b"b"], [True, False]), "exactly two images per pair"),
        (([], []), "no pairs"),
        (([b"a", 3], [True]), "image 1 is a int"),
        (([b"a", b"b"], ["yes"]), "label 0"),
        ((b"ab", [True]), "expected a list of encoded images"),
        (([b"a", b"b"], 1), "list of booleans"),
    ],
)
def test_wrong_structure_is_an_input_error(tmp_path, obj, match):
    path = tmp_path / "s.bin"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(InputError, match=match):
        load_bin(path)


def test_numpy_labels_images_and_old_protocols_load(tmp_path):
    path = tmp_path / "np.bin"
    images = [np.frombuffer(b"ab", np.uint8), bytearray(b"cd"), b"ef", b"gh"]
    for proto in range(6):
        path.write_bytes(pickle.dumps((images, np.array([True, False])), protocol=proto))
        assert read_bin(path)[0] == [b"ab", b"cd", b"ef", b"gh"]
        path.write_bytes(pickle.dumps((images, [np.bool_(True), np.bool_(False)]), protocol=proto))
        assert read_bin(path)[1].tolist() == [True, False]
    # a Python 2 pickle: str items (SHORT_BINSTRING) come back as the same bytes
    py2 = b"\x80\x02](U\x02\xff\xd8U\x02abe]q\x01\x88a\x86q\x02."
    path.write_bytes(py2)
    images2, labels2 = read_bin(path)
    assert images2 == [b"\xff\xd8", b"ab"] and labels2.tolist() == [True]


def test_missing_file_and_bad_write(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_bin(tmp_path / "nope.bin")
    with pytest.raises(InputError, match="is a folder"):
        load_bin(tmp_path)
    with pytest.raises(InputError, match="two images per pair"):
        write_bin(tmp_path / "w.bin", [b"a"], [True])
    with pytest.raises(InputError, match="encoded image bytes"):
        write_bin(tmp_path / "w.bin", ["a", "b"], [True])  # type: ignore[list-item]
    assert not list(tmp_path.iterdir())

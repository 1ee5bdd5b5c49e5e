"""Safe reading and writing of insightface verification ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin...).

Such a file is a pickle of ``(bins, issame_list)``: ``bins`` holds 2P encoded images
(JPEG/PNG bytes), pair k being images 2k and 2k+1, and ``issame_list`` P booleans.
A pickle can run arbitrary code when loaded, so these files are read with an
unpickler that constructs nothing but plain containers, bytes, booleans and numpy
arrays; anything else is refused before it is built.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from synthface.atomic import atomic_file
from synthface.errors import InputError, UnsafeFileError
from synthface.recognition.protocols.pairs import PairsProtocol, split_folds


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core", "numpy._core"):
        table[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            table[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import _codecs

    table = _numpy_globals()
    # bytes pickled by Python 3 at protocol < 3, and bytearrays
    table[("_codecs", "encode")] = _codecs.encode
    table[("builtins", "bytearray")] = bytearray
    table[("__builtin__", "bytearray")] = bytearray
    return table


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only importable names are the harmless ones .bin files need."""

    def __init__(self, file: Any, source: Path, size: int) -> None:
        super().__init__(file, encoding="latin1")  # latin1 maps Python 2 str back to bytes losslessly
        self._source = source
        self._allowed = _allowed_globals()
        # what a pickle could make the reader allocate is bounded by the file's own size: a forged
        # bytearray(2**31) or a huge empty array is refused instead of allocated
        for key, fn in list(self._allowed.items()):
            if key[1] in ("bytearray", "_reconstruct"):
                self._allowed[key] = self._bounded(fn, size)

    def _bounded(self, fn: Any, limit: int) -> Any:
        def call(*args: Any) -> Any:
            if fn is bytearray:
                wanted = args[0] if args and isinstance(args[0], int) else 0
            else:  # _reconstruct(subtype, shape, dtype)
                shape = args[1] if len(args) > 1 else ()
                dims = shape if isinstance(shape, (tuple, list)) else (shape,)
                wanted = int(np.prod([int(d) for d in dims], dtype=np.float64)) if dims else 0
            if wanted > limit:
                raise UnsafeFileError(
                    f"refusing to load {self._source}: it asks for {wanted} bytes from a {limit}-byte file; "
                    "the file is damaged or forged"
                )
            return fn(*args)

        return call

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeFileError(
                f"refusing to load {self._source}: it asks to construct {module}.{name}; "
                ".bin files must only hold image bytes and labels"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(
            f"refusing to load {self._source}: it holds persistent references; .bin files must only hold image bytes and labels"
        )


def _as_bytes(item: Any, index: int, path: Path) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, bytearray):
        return bytes(item)
    if isinstance(item, str):  # a Python 2 str decoded as latin1
        return item.encode("latin1")
    if isinstance(item, np.ndarray) and item.dtype in (np.uint8, np.int8) and item.ndim == 1:
        return item.tobytes()
    raise InputError(f"{path}: image {index} is a {type(item).__name__}, not encoded image bytes")


def _as_labels(issame: Any, path: Path) -> np.ndarray:
    if isinstance(issame, np.ndarray):
        items = issame.ravel().tolist()
    elif isinstance(issame, (list, tuple)):
        items = list(issame)
    else:
        raise InputError(f"{path}: the labels are a {type(issame).__name__}, expected a list of booleans")
    for k, v in enumerate(items):
        if isinstance(v, np.generic):
            v = v.item()
        if not (isinstance(v, bool) or (isinstance(v, int) and v in (0, 1))):
            raise InputError(f"{path}: label {k} is {v!r}, expected a boolean")
        items[k] = bool(v)
    return np.array(items, dtype=bool)


def read_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """Load ``(images, issame)`` from a .bin file with the restricted unpickler.

    Raises UnsafeFileError when the file asks to construct anything but containers,
    bytes, booleans and numpy arrays (nothing in it is executed), and InputError when
    it is not a readable pickle of that structure.
    """
    path = Path(path)
    try:
        # read from memory: a forged length field then fails as truncated instead of allocating it
        data = path.read_bytes()
        obj = _RestrictedUnpickler(io.BytesIO(data), path, len(data)).load()
    except UnsafeFileError:
        raise
    except FileNotFoundError:
        raise InputError(f"benchmark file {path} does not exist: pass an insightface .bin file (e.g. lfw.bin)") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder: pass an insightface .bin file (e.g. lfw.bin)") from None
    except Exception as exc:  # any malformed pickle: truncated, garbage, wrong opcodes
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise InputError(
            f"cannot read {path} as an insightface .bin file ({type(exc).__name__}: {detail}): "
            "the file is damaged or not a .bin benchmark"
        ) from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise InputError(f"{path}: expected a pickled (images, issame) pair, found {type(obj).__name__}")
    bins, issame = obj
    if isinstance(bins, np.ndarray) and bins.dtype == object:
        bins = bins.ravel().tolist()
    if not isinstance(bins, (list, tuple)):
        raise InputError(f"{path}: the images are a {type(bins).__name__}, expected a list of encoded images")
    labels = _as_labels(issame, path)
    if len(labels) == 0:
        raise InputError(f"{path}: the file holds no pairs")
    if len(bins) != 2 * len(labels):
        raise InputError(f"{path}: {len(bins)} images for {len(labels)} pairs; a .bin file needs exactly two images per pair")
    images = [_as_bytes(item, k, path) for k, item in enumerate(bins)]
    return images, labels


def load_bin(path: str | Path, n_folds: int = 10) -> PairsProtocol:
    """Load a .bin benchmark as a :class:`PairsProtocol` with insightface's contiguous folds."""
    path = Path(path)
    images, issame = read_bin(path)
    n = len(issame)
    pairs = np.arange(2 * n, dtype=np.int64).reshape(n, 2)
    return PairsProtocol(name=path.stem, images=images, pairs=pairs, issame=issame, folds=split_folds(n, n_folds), source=path)


def write_bin(path: str | Path, images: Sequence[bytes], issame: Sequence[bool]) -> Path:
    """Write an insightface-style .bin file: pair k is images 2k and 2k+1.

    The file is a protocol-4 pickle of ``(list of bytes, list of bool)``, written to a
    temporary file and renamed into place, so an existing file is never left half-written.
    """
    path = Path(path)
    labels = [bool(v) for v in issame]
    data = []
    for k, img in enumerate(images):
        if not isinstance(img, (bytes, bytearray, memoryview)):
            raise InputError(f"image {k} is a {type(img).__name__}: write_bin needs encoded image bytes")
        data.append(bytes(img))
    if not labels or len(data) != 2 * len(labels):
        raise InputError(f"{len(data)} images for {len(labels)} pairs: a .bin file needs exactly two images per pair")
    with atomic_file(path) as handle:
        pickle.dump((data, labels), handle, protocol=4)
    return path

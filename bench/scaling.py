"""Multi-process scaling of `synthface generate` on one machine: ``accelerate launch --num_processes N``.

For each N the same dataset (a tiny random native model, filter off, shards split s % N == rank) is
generated into a fresh folder; images/s is the run's own figure (summary.json: images rendered /
the slowest process's render seconds, so process start-up and model load are left out) and, beside
it, images over the launch's whole wall time. The scaling efficiency of N processes is
images/s(N) / (N x images/s(1)). Each process runs ``--threads`` torch threads.

    OMP_NUM_THREADS=1 python bench/scaling.py --processes 1,2 --json bench/results/scaling_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(processes: int, args: list[str]) -> list[str]:
    """``accelerate launch`` of ``python -m synthface ARGS`` with ``processes`` processes on this machine
    (``--multi_gpu`` above one process: on a machine without GPUs the processes run on the CPU, gloo)."""
    accelerate = str(Path(sys.executable).parent / "accelerate")
    multi = ["--multi_gpu"] if processes > 1 else []
    return [accelerate, "launch", *multi, "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
            "-m", "synthface", *args]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", default="1,2")
    ap.add_argument("--identities", type=int, default=16)
    ap.add_argument("--per-identity", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (OMP_NUM_THREADS)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from synthface.testing import tiny_native_model

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    sets = [f"identities.count={args.identities}", f"images_per_identity={args.per_identity}", "shard_identities=2",
            "sampling.scheduler=ddim", f"sampling.steps={args.steps}", f"sampling.batch_size={args.batch}",
            "sampling.dtype=fp32", "filter.enabled=false", "output.image_format=jpeg", f"output.image_size={args.image_size}"]  # fmt: skip
    result: dict = {"cpu_count": os.cpu_count(), "threads_per_process": args.threads, "images": args.identities * args.per_identity,
                    "steps": args.steps, "batch": args.batch, "image_size": args.image_size, "runs": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_native_model(Path(tmp) / "model", image_size=args.image_size)
        for n in [int(p) for p in args.processes.split(",") if p]:
            out = Path(tmp) / f"out-{n}"
            cmd = launch_command(
                n, ["generate", "--model", str(model), "--out", str(out)] + [x for s in sets for x in ("--set", s)]
            )
            t0 = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
                return 1
            summary = json.loads((out / "summary.json").read_text())
            run = {"processes": n, "images": summary["images_rendered"], "images_per_s": summary["images_per_second"],
                   "render_seconds": round(summary["images_rendered"] / summary["images_per_second"], 3),
                   "wall_seconds": round(wall, 3), "images_per_s_wall": summary["images_rendered"] / wall}  # fmt: skip
            result["runs"].append(run)
            print(
                f"{n} process(es): {run['images_per_s']:.2f} images/s ({run['images_per_s_wall']:.2f} over the launch's wall)",
                flush=True,
            )
    single = next((r for r in result["runs"] if r["processes"] == 1), None)
    if single:
        for r in result["runs"]:
            r["efficiency"] = r["images_per_s"] / (r["processes"] * single["images_per_s"])
            r["efficiency_wall"] = r["images_per_s_wall"] / (r["processes"] * single["images_per_s_wall"])
            print(
                f"{r['processes']} process(es): {r['efficiency']:.3f} of {r['processes']} x one process "
                f"({r['efficiency_wall']:.3f} over the wall)"
            )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

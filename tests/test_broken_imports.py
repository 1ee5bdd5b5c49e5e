"""A package that does not import: `synthface doctor` names it (versions, likely cause, the fix) and
exits 3; every other command prints one line pointing at doctor and exits 3, no traceback.

The end-to-end tests break torchvision for real: a fake ``torchvision`` earlier on sys.path (in a
subprocess) raises what a torchvision built for another torch raises when it registers its operators,
``RuntimeError: operator torchvision::nms does not exist``, from the same place
(``torchvision/_meta_registrations.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthface.broken_imports import (
    CPU_INDEX,
    culprit,
    diagnose,
    installed_version,
    matching_torchvision,
    torch_tag,
    torchvision_tag,
)

REPO = Path(__file__).resolve().parents[1]
NMS = "operator torchvision::nms does not exist"


def fake_torchvision(root: Path, version: str = "0.20.1") -> Path:
    pkg = root / "torchvision"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from torchvision import _meta_registrations  # noqa: F401\n")
    (pkg / "_meta_registrations.py").write_text(f"import torch  # noqa: F401\n\nraise RuntimeError({NMS!r})\n")
    (pkg / "version.py").write_text(f"__version__ = {version!r}\n")
    return root


def synthface(tmp_path: Path, *args: object) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{fake_torchvision(tmp_path / 'fake')}{os.pathsep}{REPO}", OMP_NUM_THREADS="1",
               XDG_STATE_HOME=str(tmp_path / "state"), COLUMNS="400")  # fmt: skip
    return subprocess.run([sys.executable, "-m", "synthface", *map(str, args)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


# --------------------------------------------------------------------------- the diagnosis


def test_a_cpu_torch_beside_a_cuda_torchvision_is_named_with_the_one_fix():
    versions = {"torchvision": "0.20.1", "torch": "2.5.1+cpu"}
    builds = {"torch": "cpu", "torchvision": torchvision_tag("0.20.1", "linux")}
    cause, fix = diagnose("torchvision", NMS, versions, builds)
    assert "CPU-only torch (2.5.1+cpu)" in cause and "CUDA torchvision (0.20.1)" in cause
    assert fix == f"pip install --force-reinstall --no-deps --index-url {CPU_INDEX} torchvision==0.20.1"


def test_a_torchvision_made_for_another_torch_is_named_with_the_matching_release():
    versions = {"torchvision": "0.19.1+cu124", "torch": "2.5.1+cu124"}
    cause, fix = diagnose("torchvision", NMS, versions, {"torch": "cu124", "torchvision": "cu124"})
    assert "0.19.1+cu124 is not the release made for torch 2.5.1+cu124 (that is 0.20.1)" in cause
    assert fix.endswith("--index-url https://download.pytorch.org/whl/cu124 torchvision==0.20.1")
    # PyPI's torch (no tag) gets PyPI's torchvision: no index option
    _, fix = diagnose("torchvision", NMS, {"torchvision": "0.19.1", "torch": "2.5.1"}, {"torch": "", "torchvision": "cuda"})
    assert fix == "pip install --force-reinstall --no-deps torchvision==0.20.1"


def test_versions_and_builds_are_read_from_the_files():
    assert [matching_torchvision(v) for v in ("2.5.1+cpu", "2.4.0", "2.0.1", "1.13.1")] == ["0.20.1", "0.19.0", "0.15.2", None]
    assert torch_tag("2.5.1+cpu") == "cpu" and torch_tag("2.5.1", "cuda: Optional[str] = '12.4'\n") == "cu124"
    assert torch_tag("2.5.1", "cuda: Optional[str] = None\n") == "cpu" and torch_tag("2.5.1") == ""
    assert torchvision_tag("0.20.1+cpu") == "cpu" and torchvision_tag("0.20.1", "darwin") == "cpu"
    import torch

    assert installed_version("torch") == torch.__version__
    assert installed_version("no_such_package_here") is None


def test_a_dependency_out_of_step_names_both_ranges():
    cause, fix = diagnose("diffusers", "cannot import name 'cached_download'", {"diffusers": "0.30.0", "torch": "2.5.1"},
                          {"torch": ""}, other="huggingface_hub")  # fmt: skip
    assert "huggingface-hub" in cause
    assert fix.startswith("pip install --upgrade") and '"huggingface-hub' in fix and '"diffusers' in fix
    cause, fix = diagnose("transformers", "x", {"transformers": None, "torch": "2.5.1"}, {"torch": ""})
    assert cause == "transformers is not installed" and fix.startswith('pip install "transformers')


def test_culprit_is_the_innermost_package_not_the_wrapper():
    def wrapped():
        try:
            import torch.nn  # noqa: F401 - a real module of a watched package, raising from its module code

            exec(compile("raise RuntimeError('boom')", str(Path(torch.nn.__file__)), "exec"), {})
        except RuntimeError as exc:
            raise ImportError("Could not import module 'PreTrainedModel'") from exc

    with pytest.raises(ImportError) as info:
        wrapped()
    found = culprit(info.value)
    assert found is not None and found.package == "torch" and found.error == "RuntimeError: boom"
    assert culprit(ValueError("a bug, not an import")) is None
    missing = culprit(ModuleNotFoundError("No module named 'dlib'", name="dlib"))
    assert missing is not None and missing.package == "dlib"
    if installed_version("dlib") is None:
        assert missing.pointer().startswith("dlib is not installed: pip install")
    else:
        assert missing.pointer().endswith("run `synthface doctor` for the cause and the fix")


# --------------------------------------------------------------------------- for real, in a subprocess


def test_doctor_survives_a_broken_torchvision_and_names_it(tmp_path):
    res = synthface(tmp_path, "doctor", "--json", tmp_path / "d.json")
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: torchvision does not import") and NMS in last, last
    want = matching_torchvision(installed_version("torch") or "")
    assert f"found torchvision 0.20.1, torch {installed_version('torch')}" in last
    assert "likely cause:" in last and "fix: pip install --force-reinstall --no-deps" in last and f"torchvision=={want}" in last
    data = json.loads((tmp_path / "d.json").read_text())
    assert [b["package"] for b in data["imports"]] == ["torchvision"] and data["torch"] is not None
    assert data["weights"] is None  # listing them imports facenet-pytorch, which imports torchvision


def test_generate_prints_one_line_pointing_at_doctor(tmp_path, tiny_model):
    out = tmp_path / "out"
    res = synthface(tmp_path, "generate", "--model", tiny_model, "--recipe", REPO / "recipes" / "quickstart-native.yaml",
                    "--out", out)  # fmt: skip
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert (
        lines[0] == f"error: torchvision does not import (RuntimeError: {NMS}): run `synthface doctor` for the cause and the fix"
    )
    assert not out.exists()

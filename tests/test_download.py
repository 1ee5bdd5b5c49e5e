"""`synthface download` / `doctor --fetch`: every file a recipe loads, fetched in one step, resumable.

A fake Hugging Face Hub stands in for the network: huggingface_hub's list/download/snapshot
functions are replaced by ones serving tiny Arc2Face and SD 1.5 replicas from a folder.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthface.cli.app import app
from synthface.errors import WeightsError
from synthface.generator.arc2face import BASE_REPO, REPO
from synthface.generator.arc2face_testing import tiny_arc2face_model

RECIPE = "model: FoivosPar/Arc2Face\nfilter:\n  enabled: true\n  embedder: facenet-vggface2\n"


class FakeHub:
    """Repos served from ``remote/<org>/<name>``, downloads cached in ``cache/<org>/<name>``."""

    def __init__(self, root: Path) -> None:
        self.remote, self.cache = root / "remote", root / "cache"
        self.online = True
        self.fail_on: int | None = None  # the n-th file download (1-based) breaks off
        self.downloads: list[str] = []

    def add(self, repo: str, folder: Path, skip: tuple[str, ...] = ()) -> None:
        shutil.copytree(folder, self.remote / repo, ignore=shutil.ignore_patterns(*skip) if skip else None)

    def list_repo_files(self, repo_id: str, **_: object) -> list[str]:
        if not self.online:
            raise OSError("offline")
        root = self.remote / repo_id
        if not root.is_dir():
            raise FileNotFoundError(repo_id)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def hf_hub_download(self, repo_id: str, filename: str, tqdm_class=None, **_: object) -> str:
        if not self.online:
            raise OSError("offline")
        if self.fail_on is not None and len(self.downloads) + 1 == self.fail_on:
            self.fail_on = None
            raise ConnectionError("connection reset")
        src, dst = self.remote / repo_id / filename, self.cache / repo_id / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        size = src.stat().st_size
        if tqdm_class is not None:
            with tqdm_class(total=size, initial=0, desc=filename) as bar:
                bar.update(size)
        shutil.copyfile(src, dst)
        self.downloads.append(f"{repo_id}/{filename}")
        return str(dst)

    def snapshot_download(self, repo_id: str, allow_patterns=None, local_files_only: bool = False, **_: object) -> str:
        root = self.cache / repo_id
        if local_files_only:
            if not root.is_dir():
                raise FileNotFoundError(f"{repo_id} is not cached")
            return str(root)
        raise AssertionError("synthface fetches file by file (hub.fetch), never a whole snapshot")


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("replica")
    model = tiny_arc2face_model(root / "a2f", base_path=root / "sd15")
    return model, root / "sd15"


@pytest.fixture()
def fake_hub(tmp_path: Path, replica: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    import huggingface_hub

    hub = FakeHub(tmp_path / "hub")
    hub.add(REPO, replica[0])
    hub.add(BASE_REPO, replica[1], skip=("*.bin",))
    for name in ("list_repo_files", "hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, getattr(hub, name))
    return hub


@pytest.fixture()
def facenet_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """torch hub's checkpoints in a temp folder; requests.get serves the facenet file (with HTTP ranges)."""
    import requests
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    served = {"body": bytes(range(256)) * 40, "ranges": [], "break_after": None}

    class Response:
        def __init__(self, start: int) -> None:
            self.status_code = 206 if start else 200
            self.body = served["body"][start:]
            self.headers = {"Content-Length": str(len(self.body))}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def raise_for_status(self) -> None:
            pass

        def iter_content(self, chunk_size: int):
            for i in range(0, len(self.body), 1000):
                if served["break_after"] is not None and i >= served["break_after"]:
                    served["break_after"] = None
                    raise requests.ConnectionError("reset")
                yield self.body[i : i + 1000]

    def get(url, stream=False, timeout=None, headers=None):
        rng = (headers or {}).get("Range")
        served["ranges"].append(rng)
        return Response(int(rng.split("=")[1].rstrip("-")) if rng else 0)

    monkeypatch.setattr(requests, "get", get)
    return served


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def doctor_rows(tmp_path: Path, *args: object) -> dict[str, dict]:
    out = tmp_path / "doctor.json"
    res = run("doctor", *args, "--json", out)
    rows = {w["name"]: w for w in json.loads(out.read_text())["weights"]}
    # a named run (--recipe) with a file missing exits 4, so a script can use doctor as its check
    assert res.exit_code == (0 if all(w["present"] for w in rows.values()) else 4), res.output
    return rows


def test_download_recipe_fetches_every_file_the_run_loads(fake_hub: FakeHub, facenet_server: dict, tmp_path: Path) -> None:
    from synthface.generator.families import load_model

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    before = doctor_rows(tmp_path, "--recipe", recipe)
    # the complete set: generator, its SD 1.5 base, the conditioning ArcFace and the filter embedder
    assert set(before) == {f"Arc2Face model {REPO}", f"Stable Diffusion 1.5 base {BASE_REPO}",
                           f"ONNX model {REPO}/arcface.onnx", "facenet-vggface2 (20180402-114759-vggface2.pt)"}  # fmt: skip
    assert not any(w["present"] for w in before.values())

    res = run("download", "--recipe", recipe, "--json", "-")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["missing"] == []
    assert all(w["present"] for w in doctor_rows(tmp_path, "--recipe", recipe).values())
    assert facenet_server["ranges"] == [None]
    assert (tmp_path / "torch-hub" / "checkpoints" / "20180402-114759-vggface2.pt").read_bytes() == facenet_server["body"]

    fake_hub.online = False  # what generate loads now comes from the cache alone
    model = load_model(REPO)
    assert model.family == "arc2face" and model.embedder == f"onnx:{REPO}/arcface.onnx"

    fetched = len(fake_hub.downloads)
    fake_hub.online = True
    assert run("download", "--recipe", recipe).exit_code == 0
    assert len(fake_hub.downloads) == fetched  # nothing fetched twice


def test_doctor_checks_every_file_a_run_loads(fake_hub: FakeHub, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: FoivosPar/Arc2Face\nfilter:\n  enabled: false\n")
    assert run("download", "--recipe", recipe).exit_code == 0
    (fake_hub.cache / BASE_REPO / "vae" / "diffusion_pytorch_model.safetensors").unlink()  # one file of the set
    rows = doctor_rows(tmp_path, "--recipe", recipe)
    base = rows[f"Stable Diffusion 1.5 base {BASE_REPO}"]
    assert not base["present"] and base["missing"] == ["vae/diffusion_pytorch_model.safetensors"]
    assert rows[f"Arc2Face model {REPO}"]["present"]
    assert all(re.fullmatch(r"[\d.]+ (GB|MB|kB|B)", w["size"]) for w in rows.values())  # on disk, partial copies too
    assert rows[f"Arc2Face model {REPO}"]["size"] != base["size"]
    res = run("doctor", "--recipe", recipe)
    assert "incomplete" in res.output and f"synthface download --recipe {recipe}" in res.output.replace("\n", "")
    assert res.exit_code == 4 and res.output.strip().splitlines()[-1] == (
        f"error: 1 of the 3 weights this run loads is missing or incomplete: Stable Diffusion 1.5 base {BASE_REPO}"
    )
    fake_hub.online = False  # and generate agrees: the run cannot load it
    from synthface.generator.families import load_model

    with pytest.raises(WeightsError, match="Stable Diffusion 1.5 base"):
        load_model(REPO)
    fake_hub.online = True
    res = run("doctor", "--recipe", recipe, "--fetch", "--json", tmp_path / "d.json")
    assert res.exit_code == 0, res.output
    assert all(w["present"] for w in json.loads((tmp_path / "d.json").read_text())["weights"])


def test_interrupted_download_resumes_where_it_stopped(fake_hub: FakeHub, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: FoivosPar/Arc2Face\nfilter:\n  enabled: false\n")
    fake_hub.fail_on = 3
    res = run("download", "--recipe", recipe)
    assert res.exit_code == 2 and "Traceback" not in res.output and "synthface download" in res.output
    assert len(fake_hub.downloads) == 2
    res = run("download", "--recipe", recipe)
    assert res.exit_code == 0, res.output
    served = [
        f"{repo}/{name}" for repo in (REPO, BASE_REPO) for name in fake_hub.list_repo_files(repo)
        if any(fnmatch.fnmatch(name, p) for p in (("arc2face/*", "encoder/*", "arcface.onnx") if repo == REPO else
               ("vae/config.json", "vae/diffusion_pytorch_model.safetensors", "tokenizer/*", "scheduler/*")))
    ]  # fmt: skip
    assert sorted(fake_hub.downloads) == sorted(served)  # every file once: the second run skipped the first two


def test_download_embedder_resumes_a_partial_file(facenet_server: dict, tmp_path: Path) -> None:
    facenet_server["break_after"] = 4000
    res = run("download", "--embedder", "facenet-vggface2")
    assert res.exit_code == 2 and "run the same command again" in res.output
    partial = tmp_path / "torch-hub" / "checkpoints" / "20180402-114759-vggface2.pt.partial"
    assert partial.stat().st_size == 4000
    res = run("download", "--embedder", "facenet-vggface2")
    assert res.exit_code == 0, res.output
    assert facenet_server["ranges"] == [None, "bytes=4000-"]
    assert (tmp_path / "torch-hub" / "checkpoints" / "20180402-114759-vggface2.pt").read_bytes() == facenet_server["body"]
    assert not partial.exists()


def test_download_names_packages_it_cannot_fetch_and_needs_a_target(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a))
    res = run("download", "--embedder", "dlib")
    assert res.exit_code == 2 and "pip install 'synthface[dlib]'" in res.output
    res = run("download")
    assert res.exit_code == 2 and "--recipe" in res.output

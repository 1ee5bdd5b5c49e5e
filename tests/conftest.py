"""Shared fixtures: the real LFW data beside the repo (tests skip with a reason when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synthface.lfw import IMAGES, PAIRS, lfw_dir, not_found

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SYNTHFACE_SHARED_DATA", REPO.parent / "shared" / "data"))
LFW = lfw_dir(SHARED_DATA / "lfw")  # $SYNTHFACE_LFW, else ../shared/data/lfw
LFW_IMAGES = LFW / IMAGES
LFW_PAIRS = LFW / PAIRS
TAEF2 = REPO.parent / "shared" / "models" / "taef2"  # README, section "TAEF2"


def lfw_missing(what: str = "LFW", root: Path = LFW) -> str:
    """The skip reason when LFW is absent: where it was looked for, and the README section that explains it."""
    return f"{not_found(root, what)} (README, section 'LFW')"


def taef2_missing(folder: Path = TAEF2) -> str:
    """The skip reason when the TAEF2 weights are absent."""
    return f"the TAEF2 weights are not in {folder}: README, section 'TAEF2', says where they come from"


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def lfw_images() -> Path:
    if not LFW_IMAGES.is_dir():
        pytest.skip(lfw_missing(f"real LFW images ({IMAGES}/)"))
    return LFW_IMAGES


@pytest.fixture(scope="session")
def lfw_pairs() -> Path:
    if not LFW_PAIRS.is_file():
        pytest.skip(lfw_missing(f"LFW {PAIRS}"))
    return LFW_PAIRS


def lfw_image(root: Path, name: str, index: int) -> Path:
    return root / name / f"{name}_{index:04d}.jpg"


@pytest.fixture()
def one_thread():
    """Tiny models run fastest on one torch thread; on a shared busy CPU more threads only contend."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random native model on disk (helpers_generate's 128-d, 16 px), shared by the session."""
    from helpers_generate import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="module")
def xdg_cache(tmp_path_factory):
    """A private XDG cache for the module (the repaired SFace graph is built there once)."""
    root = tmp_path_factory.mktemp("xdg")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(root)
    try:
        yield root
    finally:
        if before is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = before

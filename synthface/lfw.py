"""Where LFW is: ``$SYNTHFACE_LFW``, else a default the caller names (tests and benchmarks: ../shared/data/lfw).

LFW (Labeled Faces in the Wild, University of Massachusetts Amherst) comes from its official page
(see ``SOURCE``): ``lfw-deepfunneled.tgz`` (the photos, one folder per person) and ``pairs.txt``
(the 6,000-pair verification protocol). Unpacked, the folder is::

    LFW/lfw-deepfunneled/Aaron_Peirsol/Aaron_Peirsol_0001.jpg
    LFW/pairs.txt
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "SYNTHFACE_LFW"
SOURCE = "https://vis-www.cs.umass.edu/lfw/"
IMAGES, PAIRS = "lfw-deepfunneled", "pairs.txt"


def lfw_dir(default: Path) -> Path:
    """The LFW folder: ``$SYNTHFACE_LFW`` when set, else ``default``."""
    env = os.environ.get(ENV, "").strip()
    return Path(env).expanduser() if env else default


def not_found(root: Path, what: str = "LFW") -> str:
    """Why LFW is unavailable, worded for a user: where it was looked for and how to provide it."""
    return (
        f"{what} not found in {root}: set {ENV}=DIR (a folder holding {IMAGES}/ and {PAIRS}, "
        f"downloaded from {SOURCE}) or place LFW at {root}"
    )

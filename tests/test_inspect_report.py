"""`synthface inspect` quality metrics, the HTML report (rendered by a headless browser) and the card's Quality section."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from test_filter_support import PROJ, register_proj
from synthface.cli.app import app
from synthface.dataset.html_report import METRIC_ROWS
from synthface.dataset.inspect import inspect_dataset
from synthface.dataset.quality_report import QUALITY_DEFINITIONS, by_yaw
from synthface.faces.align import Face, template_for

SIDE = 32
NOISE = [4.0, 30.0, 70.0]  # pixel noise of identities 0, 1, 2 around their own base face: consistency falls in this order
PER = 5


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _yaw_pixel(i: int) -> int:
    """The corner pixel that tells YawDetector the image's nose offset (a different yaw per image, out of order)."""
    return [128, 48, 208, 88, 168][i % PER]


def _images(seed: int) -> list[tuple[int, int, np.ndarray]]:
    """(identity, sample, image) of 3 identities x PER images: a random base face each, with NOISE."""
    rng = np.random.default_rng(seed)
    out = []
    for ident, noise in enumerate(NOISE):
        base = rng.uniform(40, 215, (SIDE, SIDE, 3))
        for s in range(PER):
            img = np.clip(base + noise * rng.standard_normal(base.shape), 0, 255).astype(np.uint8)
            img[0, 0] = _yaw_pixel(s)
            out.append((ident, s, img))
    return out


def write_dataset(root: Path, seed: int = 0) -> Path:
    """Committed shards (no generate run around them) of :func:`_images`: identity i has label i."""
    from synthface.dataset.plan import Shard
    from synthface.dataset.writer import ShardRows, write_shard

    data = root / "data"
    data.mkdir(parents=True)
    rows = ShardRows()
    for ident, s, img in _images(seed):
        rows.add(_png(img), f"{ident}_{s}.png", ident, 10 + ident, s, s, id_score=0.9, det_score=float("nan"))
    write_shard(data, Shard(0, 1, 0, len(NOISE)), rows, "test")
    return root


def write_folder(root: Path, seed: int) -> Path:
    """The same kind of images as an ImageFolder (one sub-folder per person)."""
    for ident, s, img in _images(seed):
        (root / f"p{ident}").mkdir(parents=True, exist_ok=True)
        (root / f"p{ident}" / f"{s}.png").write_bytes(_png(img))
    return root


class YawDetector:
    """Finds a face in every image, with the template's landmarks and the nose moved sideways by the corner pixel."""

    def detect(self, images):
        faces = []
        for img in images:
            lm = template_for(img.shape[0]).astype(np.float64)
            lm[2, 0] += (float(img[0, 0, 0]) - 128.0) / 40.0
            faces.append(Face(np.array([0, 0, img.shape[1], img.shape[0]], np.float32), lm, 0.97))
        return faces


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("quality") / "set")


@pytest.fixture(scope="module")
def inspected(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    register_proj()
    root = tmp_path_factory.mktemp("report")
    same = write_folder(root / "same", seed=0)  # the dataset's own images: distance 0
    return inspect_dataset(dataset, root / "r", embedder=PROJ, reference=same, detector=YawDetector(), k=2, device="cpu")


def test_quality_figures_follow_the_identities(inspected: dict) -> None:
    quality = inspected["quality"]
    per = {e["label"]: e for e in quality["per_identity"]}
    assert sorted(per) == [0, 1, 2] and [per[k]["identity"] for k in range(3)] == [10, 11, 12]
    # more pixel noise, less consistent: the ordering the noise levels set
    assert per[0]["cos_to_centre"] > per[1]["cos_to_centre"] > per[2]["cos_to_centre"]
    cons = quality["consistency"]
    assert cons["images"] == 15 and cons["cos_to_centre"]["max"] == pytest.approx(per[0]["cos_to_centre"])
    assert cons["threshold"] == 0.5 and 0 < cons["within_threshold"] <= 1  # the unknown embedder's default threshold
    assert quality["spread"]["spread"]["min"] == pytest.approx(1 - per[0]["cos_to_centre"])
    assert quality["separability"]["identities"] == 3 and quality["separability"]["duplicates"] == 0
    assert inspected["similarity"]["nearest_identity_centre"] == quality["separability"]["nearest_other"]
    # every crop had a face; yaw follows the nose offset, so each identity spans the same yaw range
    assert quality["detection"] == {
        "images": 15,
        "detected": 15,
        "rate": 1.0,
        "confidence": pytest.approx(quality["detection"]["confidence"]),
    }
    assert quality["detection"]["confidence"]["mean"] == pytest.approx(0.97)
    yaw = quality["pose"]["yaw"]
    assert yaw["within_identity_std"]["mean"] > 10 and quality["pose"]["roll"]["within_identity_std"]["max"] < 1e-6
    assert per[0]["yaw_range"][0] < -20 < 20 < per[0]["yaw_range"][1]
    # against a copy of itself: no distance, full precision and recall
    ref = quality["reference"]
    assert ref["images"] == 15 and ref["identities"] == 3
    assert ref["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert ref["knn"] == {"k": 2, "precision": 1.0, "recall": 1.0}
    assert ref["figures"]["consistency"]["cos_to_centre"]["mean"] == pytest.approx(cons["cos_to_centre"]["mean"], abs=1e-3)


def test_inspect_json_documents_every_figure(inspected: dict) -> None:
    on_disk = json.loads(Path(inspected["files"]["report"]).read_text())
    definitions = on_disk["quality"]["definitions"]
    assert set(definitions) == set(QUALITY_DEFINITIONS) >= {key for *_, key in METRIC_ROWS}
    for key, entry in definitions.items():
        assert entry["definition"] and entry["source"], key
    assert "Heusel" in definitions["frechet_distance"]["source"] and "Kynk" in definitions["knn_recall"]["source"]
    for key in ("consistency", "separability", "spread", "detection", "pose", "reference", "per_identity"):
        assert key in on_disk["quality"], key
    for key in ("html", "quality", "contact_sheet", "similarity", "report"):
        assert Path(inspected["files"][key]).is_file(), key


def test_a_reference_of_other_people_is_further(dataset: Path, inspected: dict, tmp_path: Path) -> None:
    other = write_folder(tmp_path / "other", seed=99)
    report = inspect_dataset(dataset, tmp_path / "r", embedder=PROJ, reference=other, detector="none", k=2, device="cpu")
    ref = report["quality"]["reference"]
    assert ref["frechet_distance"] > 10 * max(inspected["quality"]["reference"]["frechet_distance"], 1e-3)
    assert ref["knn"]["precision"] < 1.0 and ref["knn"]["recall"] < 1.0
    assert "detection" not in report["quality"] and "pose" not in report["quality"]


def _rows(page: str) -> dict[int, list[float]]:
    """label -> the yaw of each image of its contact sheet row, in page order."""
    out = {}
    for label, body in re.findall(
        r'<div class="row" data-label="(\d+)"[^>]*>(.*?)</div>\n(?=<div class="row"|</div>)', page, re.S
    ):
        out[int(label)] = [float(y) for y in re.findall(r'data-yaw="([-0-9.]+)"', body)]
    return out


def test_html_report_is_self_contained_and_sorted_by_yaw(inspected: dict) -> None:
    page = Path(inspected["files"]["html"]).read_text(encoding="utf-8")
    assert 'id="metric-table"' in page and "Frechet distance to the reference" in page
    rows = _rows(page)
    assert sorted(rows) == [0, 1, 2]  # every identity has its row
    for label, yaws in rows.items():
        assert len(yaws) == PER and yaws == sorted(yaws), label
    # nothing fetched from anywhere: every image is inline, no links, no external scripts
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(srcs) == 3 * PER + 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(href|src)=\"(https?:|//|file:)", page) and "<link" not in page


def test_by_yaw_keeps_the_range_when_thinning() -> None:
    yaw = np.array([30.0, np.nan, -40.0, 0.0, 10.0, -10.0])
    assert by_yaw(yaw, 10).tolist() == [2, 5, 3, 4, 0, 1]  # increasing yaw, the faceless image last
    assert by_yaw(yaw, 3).tolist() == [2, 3, 0]  # the lowest, middle and highest yaw; a face beats no face
    assert by_yaw(np.array([np.nan, 5.0, np.nan]), 2).tolist() == [1, 0]


# --------------------------------------------------------------------------- the page in a real browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium): the HTML report is not rendered")


def _browser(*args: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-extensions", "--allow-file-access-from-files", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_html_report_renders_in_a_browser(inspected: dict, tmp_path: Path) -> None:
    page = Path(inspected["files"]["html"])
    done = _browser("--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    total = re.search(r'data-images-total="(\d+)"', dom)
    decoded = re.search(r'data-images-decoded="(\d+)"', dom)
    assert total and decoded, "the page's load script did not run"
    assert int(total[1]) == len(re.findall(r"<img ", page.read_text())) == 3 * PER + 2
    assert decoded[1] == total[1]  # every embedded image decoded
    assert 'id="metric-table"' in dom and dom.count('class="row"') == 3
    shot = tmp_path / "page.png"
    done = _browser(
        "--hide-scrollbars", "--window-size=1200,4000", "--virtual-time-budget=5000", f"--screenshot={shot}", page.as_uri()
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"), np.float64)
    assert pixels.shape[:2] == (4000, 1200)
    # not a blank page: dark text on white, the histograms' colours and the contact sheet's noisy faces
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000


# --------------------------------------------------------------------------- CLI and the dataset card


def test_reference_needs_an_embedder_and_an_existing_folder(dataset: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["inspect", str(dataset), "--out", str(tmp_path / "r"), "--embedder", "none",
                                   "--reference", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 2 and "--reference needs the embedder" in res.output
    register_proj()
    res = CliRunner().invoke(app, ["inspect", str(dataset), "--out", str(tmp_path / "r"), "--embedder", PROJ,
                                   "--reference", str(tmp_path / "nowhere")])  # fmt: skip
    assert res.exit_code == 2 and "not found" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, object]:
    from helpers_generate import tiny_recipe
    from synthface.generator.run import generate_dataset

    out = tmp_path_factory.mktemp("card") / "out"
    recipe = tiny_recipe(tiny_model)
    generate_dataset(recipe, out)
    return out, recipe


def test_card_gets_a_quality_section_that_generate_keeps(generated: tuple[Path, object], tmp_path: Path) -> None:
    from synthface.dataset.card import read_header
    from synthface.generator.run import generate_dataset

    out, recipe = generated
    card = out / "README.md"
    before = card.read_text()
    res = CliRunner().invoke(app, ["inspect", str(out), "--out", str(tmp_path / "r"), "--set", "card=false", "--json", "-"])
    assert res.exit_code == 0, res.output
    assert card.read_text() == before and "card" not in json.loads(res.stdout)["files"]
    for _ in range(2):  # a second inspect replaces the section, it does not add one
        res = CliRunner().invoke(app, ["inspect", str(out), "--json", "-"])
        assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    text = card.read_text()
    assert text.count("## Quality") == 1 and report["files"]["card"] == str(card)
    section = text[text.index("## Quality") : text.index("## Intended use")]
    cons = report["quality"]["consistency"]["cos_to_centre"]["mean"]
    assert f"| identity consistency: mean cosine to the identity centre | {cons:.3f} |" in section
    assert "`inspect/report.html`" in section and "Heusel" not in section  # no reference: no Frechet row
    assert "synthface" in read_header(card)["tags"]  # the Hub header is untouched
    generate_dataset(recipe, out)  # a finished run again: the card is rewritten and keeps inspect's section
    assert card.read_text().count("## Quality") == 1 and section in card.read_text()


# --------------------------------------------------------------------------- real faces: MTCNN landmarks and dlib


def test_real_faces_give_pose_and_a_consistency_ordering(lfw_images: Path, tmp_path: Path) -> None:
    """Identity 0: four photos of one person; 1: one photo each of four people (a broken identity);
    2: identity 0's crops mirrored. MTCNN finds every face on the stored crops, dlib ranks the real
    person above the broken identity, and mirroring negates the yaw."""
    from conftest import lfw_image
    from synthface.dataset.plan import Shard
    from synthface.dataset.writer import ShardRows, write_shard
    from synthface.faces.align import FaceDetector, load_image, warp_face

    detector = FaceDetector(device="cpu")

    def crop(name: str, index: int) -> np.ndarray:
        img = load_image(lfw_image(lfw_images, name, index))
        face = detector.detect([img])[0]
        assert face is not None, name
        return warp_face(img, face.landmarks, 112)

    person = [crop("George_W_Bush", i) for i in (1, 2, 3, 4)]
    mixed = [crop(name, 1) for name in ("Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder")]
    rows = ShardRows()
    for label, crops in enumerate((person, mixed, [c[:, ::-1].copy() for c in person])):
        for s, c in enumerate(crops):
            rows.add(_png(c), f"{label}_{s}.png", label, label, s, s)
    (tmp_path / "set" / "data").mkdir(parents=True)
    write_shard(tmp_path / "set" / "data", Shard(0, 1, 0, 3), rows, "test")
    report = inspect_dataset(tmp_path / "set", tmp_path / "r", embedder="dlib", device="cpu")
    quality = report["quality"]
    assert quality["detection"]["rate"] == 1.0 and quality["detection"]["confidence"]["min"] > 0.9
    per = {e["label"]: e for e in quality["per_identity"]}
    assert per[0]["cos_to_centre"] > per[1]["cos_to_centre"]
    lo, hi = per[0]["yaw_range"]
    assert hi - lo > 10  # four photos, four poses
    # MTCNN on a mirrored crop is not exactly the mirror of its landmarks: a few degrees apart
    assert per[2]["yaw_range"] == pytest.approx([-hi, -lo], abs=6.0)
    assert quality["pose"]["roll"]["overall"]["max"] < 10  # crops warped upright: little roll left
    page = Path(report["files"]["html"]).read_text()
    assert sorted(_rows(page)) == [0, 1, 2]

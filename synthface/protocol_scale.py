"""The synthetic-versus-real protocol's scaling curve (docs/protocol.md): seeded subsets of the
synthetic set, their manifest, the curve from their evaluation and its figure.

The `scale:` section of a protocol recipe names the subsets: ``idsN`` for each of ``identities``
(N identities, all their images), ``perK`` for each of ``images_per_identity`` (every identity,
at most K images each), drawn with ``seed`` (:mod:`synthface.dataset.subset`: nested subsets).
The steps that run them are in :mod:`synthface.synthetic_vs_real`.
"""

from __future__ import annotations

import json
from pathlib import Path

from synthface.errors import ConfigError

SCALE_DIR, SUBSETS_FILE = "scale", "subsets.json"
WHOLE_SET = "synthetic"  # the whole set, as the evaluate-synthetic step trains it (WORK/eval-synthetic)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def scale_points(cfg: dict) -> list[tuple[str, int | None, int | None]]:
    """The scaling curve's subsets (name, identities, images per identity; None: all): ``idsN`` for
    each of `scale.identities` (all their images), ``perK`` for each of `scale.images_per_identity`
    (all identities)."""
    scale = cfg.get("scale")
    if not isinstance(scale, dict):
        raise ConfigError("`scale:` must be a mapping: {identities: [100, 300], images_per_identity: [2, 4], seed: 0}")

    def counts(key: str) -> list[int]:
        values = scale.get(key) or []
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise ConfigError(f"scale.{key} must be a list of positive whole numbers, got {values!r}")
        return list(dict.fromkeys(values))

    points = [(f"ids{n}", n, None) for n in counts("identities")]
    points += [(f"per{k}", None, k) for k in counts("images_per_identity")]
    if not points:
        raise ConfigError("`scale:` names no subset: give identities: [...] and/or images_per_identity: [...]")
    return points


def scale_seed(cfg: dict) -> int:
    seed = (cfg.get("scale") or {}).get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"scale.seed must be a whole number, got {seed!r}")
    return seed


def write_scale_subsets(cfg: dict, work: Path) -> dict:
    """Write each scaling-curve subset of WORK/synthetic to WORK/scale/NAME (a point whose rows equal
    an earlier point's is not written again: its entry says ``same_as``) and WORK/scale/subsets.json."""
    from synthface.atomic import atomic_write_json
    import numpy as np

    from synthface.dataset.subset import rows_digest, source_table, subset_rows, subset_summary, write_subset

    source, out, seed = work / "synthetic", work / SCALE_DIR, scale_seed(cfg)
    table = source_table(source)
    labels = table.column("label").to_numpy()
    whole = subset_summary(labels, np.flatnonzero(labels >= 0))
    subsets: dict[str, dict] = {WHOLE_SET: whole}
    written: dict[str, str] = {whole["rows_sha256"]: WHOLE_SET}  # rows digest -> the subset written with them
    for name, identities, per_identity in scale_points(cfg):
        rows = subset_rows(labels, identities, per_identity, seed)
        asked = {"identities_requested": identities, "per_identity_requested": per_identity}
        digest = rows_digest(rows)
        if digest in written:
            subsets[name] = {**subsets[written[digest]], **asked, "same_as": written[digest]}
            continue
        subsets[name] = write_subset(table, rows, out / name, {"source": str(source), "seed": seed, **asked})
        written[digest] = name
    del subsets[WHOLE_SET]  # trained by evaluate-synthetic; a point with its rows says same_as it
    manifest = {"source": str(source), "seed": seed, "subsets": subsets}
    atomic_write_json(out / SUBSETS_FILE, manifest)
    return manifest


def scale_sets(work: Path) -> dict[str, Path]:
    """The subsets scale-subsets wrote (name -> folder), none before it ran."""
    path = work / SCALE_DIR / SUBSETS_FILE
    if not path.is_file():
        return {}
    return {n: work / SCALE_DIR / n for n, info in _load(path)["subsets"].items() if "same_as" not in info}


def plot_scale_curve(curve: list[dict], tar: str, path: Path) -> Path:
    """Accuracy (± fold std) and TAR against identities (all their images) and against images per identity (all identities)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from synthface.figures import save_figure

    fig = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(fig)
    panels = (
        ([c for c in curve if c["per_identity_cap"] is None], "identities", "identities (all their images)"),
        ([c for c in curve if c["per_identity_cap"] is not None], "images_per_identity", "images per identity (all identities)"),
    )
    for i, (points, key, label) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        points = sorted(points, key=lambda c: c[key])
        x = [c[key] for c in points]
        ax.errorbar(x, [100 * c["accuracy"] for c in points], yerr=[100 * c["accuracy_std"] for c in points],
                    marker="o", capsize=3, label="accuracy")  # fmt: skip
        ax.plot(x, [100 * c[tar] for c in points], marker="s", linestyle="--", label="TAR@FAR=1e-3")
        ax.set_xlabel(label)
        ax.set_ylabel("%")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def scale_curve(work: Path, bench: str, tar: str) -> list[dict]:
    """One row per subset: what it holds and how its recognizer did on ``bench`` (from WORK/eval-scale)."""
    manifest = _load(work / SCALE_DIR / SUBSETS_FILE)
    results = _load(work / "eval-scale" / "report.json")["results"]
    results[WHOLE_SET] = _load(work / "eval-synthetic" / "report.json")["results"][WHOLE_SET]
    curve = []
    for name, info in manifest["subsets"].items():
        trained = info.get("same_as", name)
        res = results[trained][bench]
        curve.append({"subset": name, "trained_as": trained, "identities": info["identities"], "images": info["images"],
                      "images_per_identity": info["images_per_identity"]["mean"],
                      "identities_requested": info["identities_requested"], "per_identity_cap": info["per_identity_requested"],
                      "accuracy": res["accuracy"], "accuracy_std": res["accuracy_std"], tar: res[tar],
                      "seed": manifest["seed"], "rows_sha256": info["rows_sha256"]})  # fmt: skip
    return curve

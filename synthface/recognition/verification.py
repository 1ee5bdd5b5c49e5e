"""Face-verification scores and metrics: k-fold best-threshold accuracy, TAR@FAR, ROC.

The benchmarks themselves (pair lists, .bin files, folders of people) are in
:mod:`synthface.recognition.protocols`.

The protocol follows insightface's ``verification.py``: per-pair cosine similarity of
L2-normalised embeddings (with flip test-time augmentation the original and flipped
embeddings are summed, then normalised), k contiguous folds, and for each fold the
threshold with the best accuracy on the other k-1 folds is applied to the held-out fold.
Accuracy is reported as the mean and (population) standard deviation over folds.
Unlike insightface's coarse 0.01 threshold grid, thresholds here are scanned exactly:
every split point between consecutive distinct training scores is tried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from synthface.embeddings import l2n_or_nan
from synthface.errors import InputError
from synthface.figures import save_figure
from synthface.recognition.protocols.pairs import PairsProtocol, split_folds

FailedPolicy = Literal["wrong", "exclude"]
DEFAULT_FAR = 1e-3


# --------------------------------------------------------------------------- scores


def combine_flipped(embeddings: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """Flip test-time augmentation as insightface does it: sum both embeddings, then L2-normalise."""
    return l2n_or_nan(np.asarray(embeddings, dtype=np.float64) + np.asarray(flipped, dtype=np.float64))


def pair_scores(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair; NaN where either image has no embedding (NaN row)."""
    e = l2n_or_nan(embeddings)
    pairs = np.asarray(pairs, dtype=np.int64)
    return np.einsum("ij,ij->i", e[pairs[:, 0]], e[pairs[:, 1]])


# --------------------------------------------------------------------------- metrics


def far_key(far: float) -> str:
    """Result key of a FAR: 1e-3 -> 'tar_at_far_1e-3', 1.5e-4 -> 'tar_at_far_1.5e-4'."""
    mantissa, exponent = f"{far:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"tar_at_far_{mantissa}e{int(exponent)}"


@dataclass
class VerificationResult:
    """Verification figures of one embedder on one benchmark.

    ``accuracy``/``accuracy_std``: mean and population std of held-out fold accuracies;
    ``threshold``: mean of the fold thresholds (cosine; predict "same" when score >= it);
    ``tar_at_far``: {far: TAR} over all pairs; ``fpr``/``tpr``: the ROC over all pairs;
    ``pairs``/``same_pairs``: pairs evaluated (failed ones included under the "wrong"
    policy, left out under "exclude"); ``failed_pairs``: pairs with a failed image.
    """

    accuracy: float
    accuracy_std: float
    threshold: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    tar_at_far: dict[float, float]
    auc: float
    pairs: int
    same_pairs: int
    failed_pairs: int
    failed_policy: str
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)

    def to_dict(self, roc: bool = False) -> dict:
        """JSON-ready figures; ``roc=True`` adds the curve as lists under 'roc'."""
        out: dict = {
            "accuracy": self.accuracy,
            "accuracy_std": self.accuracy_std,
            "threshold": self.threshold,
            "folds": len(self.fold_accuracies),
            "fold_accuracies": list(self.fold_accuracies),
            "fold_thresholds": list(self.fold_thresholds),
        }
        for far, tar in sorted(self.tar_at_far.items()):
            out[far_key(far)] = tar
        out.update(
            auc=self.auc,
            pairs=self.pairs,
            same_pairs=self.same_pairs,
            different_pairs=self.pairs - self.same_pairs,
            failed_pairs=self.failed_pairs,
            failed_policy=self.failed_policy,
        )
        if roc:
            out["roc"] = {"fpr": self.fpr.tolist(), "tpr": self.tpr.tolist()}
        return out


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, int]:
    """The threshold with the most correct decisions (predict same when score >= threshold).

    Every distinct split of the sorted scores is tried: below all scores, the midpoint
    of each pair of consecutive distinct scores, and just above the largest. Ties go to
    the smallest threshold (as insightface's ascending ``argmax``). Returns the
    threshold and the number of correct decisions.
    """
    scores = np.asarray(scores, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    if scores.size == 0:
        return 0.0, 0
    values, inverse = np.unique(scores, return_inverse=True)
    same = np.bincount(inverse[issame], minlength=len(values))
    diff = np.bincount(inverse[~issame], minlength=len(values))
    # candidate j predicts "different" for values[:j] and "same" for values[j:]
    diff_below = np.concatenate(([0], np.cumsum(diff)))
    same_below = np.concatenate(([0], np.cumsum(same)))
    correct = diff_below + (same.sum() - same_below)
    j = int(np.argmax(correct))
    if j == 0:
        threshold = values[0]
    elif j == len(values):
        threshold = np.nextafter(values[-1], np.inf)
    else:
        lo, hi = values[j - 1], values[j]
        mid = lo + (hi - lo) / 2
        threshold = mid if mid > lo else hi
    return float(threshold), int(correct[j])


def _roc(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(issame.astype(np.int8), scores, drop_intermediate=False)
    return fpr, tpr


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """Largest TPR among the ROC's operating points with FPR <= far (no interpolation).

    Only thresholds that exist are used, so the figure is achievable and never
    optimistic; with few different pairs (FAR below 1/n_different) it is the TPR at
    zero false accepts.
    """
    ok = fpr <= far + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def evaluate_scores(
    scores: np.ndarray,
    issame: np.ndarray,
    folds: np.ndarray | None = None,
    *,
    n_folds: int = 10,
    fars: Sequence[float] = (DEFAULT_FAR,),
    failed: FailedPolicy = "wrong",
) -> VerificationResult:
    """k-fold verification accuracy, TAR@FAR, AUC and ROC from per-pair scores.

    ``scores``: per-pair similarity (higher = more alike), NaN for a failed pair (an
    image with no detected face or no embedding). ``folds``: fold index per pair;
    default: ``n_folds`` contiguous folds (:func:`split_folds`).

    Failed pairs (``failed``):

    - ``"wrong"`` (default, the honest figure): a failed pair is always an error. It is
      predicted "different" when it is a same pair and "same" when it is a different
      pair, so it counts against accuracy in its fold, is never a true accept and is a
      false accept at every threshold on the ROC (and so raises the FAR floor). It
      takes no part in choosing thresholds, where it would be wrong whatever the choice.
    - ``"exclude"``: failed pairs are dropped before anything is computed (what papers
      that skip undetected faces report; never compare it with a "wrong" figure).

    Thresholds: for each fold, the best-accuracy threshold on the other folds
    (:func:`best_threshold`) is applied to the held-out fold. TAR@FAR is computed on
    all pairs from the ROC (:func:`tar_at_far`); FAR 1e-3 is always included.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    issame = np.asarray(issame).ravel()
    if issame.dtype != bool:
        if not np.isin(issame, (0, 1)).all():
            raise InputError("issame must hold booleans (or 0/1)")
        issame = issame.astype(bool)
    n = len(scores)
    if len(issame) != n:
        raise InputError(f"{n} scores but {len(issame)} issame labels: they must match pair for pair")
    if failed not in ("wrong", "exclude"):
        raise InputError(f"unknown failed-pair policy '{failed}': use 'wrong' or 'exclude'")
    folds = split_folds(n, n_folds) if folds is None else np.asarray(folds).ravel()
    if len(folds) != n:
        raise InputError(f"{n} scores but {len(folds)} fold indices: they must match pair for pair")
    far_values = sorted({float(DEFAULT_FAR), *(float(f) for f in fars)})
    if not all(0 < far <= 1 for far in far_values):
        raise InputError(f"every FAR must be in (0, 1], got {list(fars)}")
    if np.isinf(scores).any():
        raise InputError("scores must be finite (or NaN for a failed pair)")
    bad = np.isnan(scores)
    n_failed = int(bad.sum())
    if failed == "exclude" and n_failed:
        keep = ~bad
        scores, issame, folds, bad = scores[keep], issame[keep], folds[keep], bad[keep]
    if not issame.any() or issame.all():
        raise InputError("verification needs both same and different pairs")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise InputError("verification needs at least 2 folds")

    fold_acc, fold_thr = [], []
    for f in fold_ids:
        test = folds == f
        train = ~test & ~bad
        thr, _ = best_threshold(scores[train], issame[train])
        t_scores, t_same, t_bad = scores[test], issame[test], bad[test]
        correct = ((t_scores >= thr) == t_same) & ~t_bad
        fold_acc.append(float(correct.mean()))
        fold_thr.append(thr)

    # failed pairs on the ROC: same pairs never accepted, different pairs always accepted
    roc_scores = scores.copy()
    if bad.any():
        if bad.all():
            roc_scores[:] = 0.0
        else:
            lo, hi = scores[~bad].min(), scores[~bad].max()
            roc_scores[bad & issame] = lo - 1.0
            roc_scores[bad & ~issame] = hi + 1.0
    fpr, tpr = _roc(roc_scores, issame)
    from sklearn.metrics import auc as area

    return VerificationResult(
        accuracy=float(np.mean(fold_acc)),
        accuracy_std=float(np.std(fold_acc)),
        threshold=float(np.mean(fold_thr)),
        fold_accuracies=fold_acc,
        fold_thresholds=fold_thr,
        tar_at_far={far: tar_at_far(fpr, tpr, far) for far in far_values},
        auc=float(area(fpr, tpr)),
        pairs=int(len(scores)),
        same_pairs=int(issame.sum()),
        failed_pairs=n_failed,
        failed_policy=failed,
        fpr=fpr,
        tpr=tpr,
    )


def evaluate_embeddings(
    embeddings: np.ndarray,
    protocol: PairsProtocol,
    *,
    fars: Sequence[float] = (DEFAULT_FAR,),
    failed: FailedPolicy = "wrong",
) -> VerificationResult:
    """Evaluate one embedding per protocol image (a NaN row marks an image that failed)."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) != len(protocol.images):
        raise InputError(f"expected one embedding per image ({len(protocol.images)} rows), got shape {embeddings.shape}")
    scores = pair_scores(embeddings, protocol.pairs)
    return evaluate_scores(scores, protocol.issame, protocol.folds, fars=fars, failed=failed)


# --------------------------------------------------------------------------- plots


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> Path:
    """Write a PNG with one ROC line (TPR against log-scale FPR) per name in ``curves``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise InputError("plot_roc needs at least one curve")
    path = Path(path)
    fig = Figure(figsize=(6, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    smallest = 1.0
    for name, (fpr, tpr) in curves.items():
        fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
        if fpr.shape != tpr.shape or fpr.ndim != 1:
            raise InputError(f"ROC curve '{name}': fpr and tpr must be 1-D arrays of the same length")
        positive = fpr[fpr > 0]
        if positive.size:
            smallest = min(smallest, float(positive.min()))
        ax.plot(fpr, tpr, label=name, linewidth=1.5)
    ax.set_xscale("log", nonpositive="clip")
    ax.set_xlim(10 ** math.floor(math.log10(min(smallest, 1e-3))), 1.0)
    ax.set_ylim(0.0, 1.005)
    ax.set_xlabel("false accept rate (FPR)")
    ax.set_ylabel("true accept rate (TPR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)

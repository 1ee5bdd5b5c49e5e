"""The verification protocol: pair lists, k-fold best-threshold accuracy, TAR@FAR, failed pairs, ROC plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import LFW, lfw_missing
from PIL import Image

from synthface.errors import InputError
from synthface.recognition.protocols import PairsProtocol, load_protocol, read_pairs, split_folds
from synthface.recognition.verification import (
    best_threshold,
    combine_flipped,
    evaluate_embeddings,
    evaluate_scores,
    far_key,
    pair_scores,
    plot_roc,
)


# --------------------------------------------------------------------------- brute-force references


def reference_kfold(scores, issame, folds):
    """Plain-Python k-fold accuracy: every threshold among the training scores +-eps is tried.

    The smallest best threshold wins; it is then placed at the midpoint of the gap between
    training scores it falls in (the documented convention), and applied to the test fold.
    """
    scores, issame, folds = list(map(float, scores)), list(map(bool, issame)), list(map(int, folds))
    accs, thrs = [], []
    for f in sorted(set(folds)):
        train = [(s, y) for s, y, g in zip(scores, issame, folds) if g != f]
        test = [(s, y) for s, y, g in zip(scores, issame, folds) if g == f]
        values = sorted({s for s, _ in train})
        gaps = [b - a for a, b in zip(values, values[1:])]
        eps = min(gaps) / 4 if gaps else 1e-3
        candidates = sorted({s - eps for s in values} | {s + eps for s in values})
        best_t, best_correct = None, -1
        for t in candidates:
            correct = 0
            for s, y in train:
                if (s >= t) == y:
                    correct += 1
            if correct > best_correct:
                best_t, best_correct = t, correct
        below = [v for v in values if v < best_t]
        above = [v for v in values if v >= best_t]
        if not below:
            thr = above[0]
        elif not above:
            thr = math.nextafter(below[-1], math.inf)
        else:
            thr = (below[-1] + above[0]) / 2
        accs.append(sum(1 for s, y in test if (s >= thr) == y) / len(test))
        thrs.append(thr)
    return accs, thrs


def reference_tar(scores, issame, far):
    """Brute force: the best TPR over every threshold whose false-accept rate is <= far."""
    scores, issame = np.asarray(scores), np.asarray(issame, dtype=bool)
    n_same, n_diff = issame.sum(), (~issame).sum()
    best = 0.0
    for t in [*sorted(set(scores.tolist())), math.inf]:
        accepted = scores >= t
        if (accepted & ~issame).sum() / n_diff <= far:
            best = max(best, (accepted & issame).sum() / n_same)
    return best


def synthetic_scores(rng, n, decimals=None, gap=0.4):
    issame = rng.random(n) < 0.5
    scores = np.where(issame, rng.normal(gap, 0.25, n), rng.normal(0.0, 0.25, n))
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores, issame


# --------------------------------------------------------------------------- k-fold accuracy


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kfold_accuracy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    scores, issame = synthetic_scores(rng, 300)
    folds = split_folds(len(scores), 10)
    result = evaluate_scores(scores, issame, folds)
    accs, thrs = reference_kfold(scores, issame, folds)
    assert result.fold_accuracies == pytest.approx(accs, abs=1e-12)
    assert result.fold_thresholds == pytest.approx(thrs, abs=1e-12)
    assert result.accuracy == pytest.approx(np.mean(accs), abs=1e-12)
    assert result.accuracy_std == pytest.approx(np.std(accs), abs=1e-12)
    assert result.threshold == pytest.approx(np.mean(thrs), abs=1e-12)


@pytest.mark.parametrize("seed,decimals", [(10, 1), (11, 1), (12, 2), (13, 0)])
def test_kfold_accuracy_matches_brute_force_with_ties(seed, decimals):
    rng = np.random.default_rng(seed)
    scores, issame = synthetic_scores(rng, 257, decimals=decimals, gap=0.3)
    assert len(np.unique(scores)) < len(scores) // 2  # many ties, across both classes
    folds = split_folds(len(scores), 7)  # uneven folds
    result = evaluate_scores(scores, issame, folds)
    accs, thrs = reference_kfold(scores, issame, folds)
    assert result.fold_accuracies == pytest.approx(accs, abs=1e-12)
    assert result.fold_thresholds == pytest.approx(thrs, abs=1e-12)


def test_best_threshold_counts_and_extremes():
    # all same pairs: the best threshold accepts everything
    thr, correct = best_threshold(np.array([0.1, 0.2, 0.3]), np.array([True, True, True]))
    assert (thr, correct) == (0.1, 3)
    # all different pairs: the best threshold rejects everything
    thr, correct = best_threshold(np.array([0.1, 0.2, 0.3]), np.array([False, False, False]))
    assert correct == 3 and thr > 0.3
    thr, correct = best_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True]))
    assert (thr, correct) == (pytest.approx(0.5), 4)


def test_separable_scores_give_perfect_accuracy():
    rng = np.random.default_rng(5)
    issame = np.tile([True, False], 300)
    scores = np.where(issame, rng.uniform(0.6, 1.0, 600), rng.uniform(-0.2, 0.4, 600))
    result = evaluate_scores(scores, issame)
    assert result.accuracy == 1.0 and result.accuracy_std == 0.0
    assert result.auc == 1.0
    assert result.tar_at_far[1e-3] == 1.0
    assert all(0.4 <= t <= 0.6 for t in result.fold_thresholds)


def test_random_scores_give_chance_accuracy():
    rng = np.random.default_rng(6)
    issame = np.tile(np.repeat([True, False], 300), 10)
    result = evaluate_scores(rng.normal(size=6000), issame, np.repeat(np.arange(10), 600))
    assert 0.46 < result.accuracy < 0.54
    assert 0.46 < result.auc < 0.54
    assert result.tar_at_far[1e-3] < 0.02


# --------------------------------------------------------------------------- TAR@FAR


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("far", [1e-3, 1e-2, 0.1])
def test_tar_at_far_matches_brute_force(seed, far):
    rng = np.random.default_rng(100 + seed)
    scores, issame = synthetic_scores(rng, 1500, decimals=3, gap=0.6)
    result = evaluate_scores(scores, issame, fars=[far])
    assert result.tar_at_far[far] == pytest.approx(reference_tar(scores, issame, far), abs=1e-12)
    assert 1e-3 in result.tar_at_far  # always reported


def test_result_dict_keys_and_json():
    rng = np.random.default_rng(7)
    scores, issame = synthetic_scores(rng, 400)
    d = evaluate_scores(scores, issame, fars=[1e-4, 1.5e-2]).to_dict(roc=True)
    for key in (
        "accuracy",
        "accuracy_std",
        "threshold",
        "pairs",
        "auc",
        "failed_pairs",
        "tar_at_far_1e-3",
        "tar_at_far_1e-4",
        "tar_at_far_1.5e-2",
    ):
        assert key in d
    assert d["pairs"] == 400 and d["same_pairs"] == int(issame.sum())
    assert len(d["roc"]["fpr"]) == len(d["roc"]["tpr"])
    json.dumps(d)
    assert far_key(1e-3) == "tar_at_far_1e-3" and far_key(0.01) == "tar_at_far_1e-2"


# --------------------------------------------------------------------------- failed pairs


def test_failed_pairs_count_as_errors():
    # 10 folds of (same 0.9, different 0.1): perfectly separable ...
    issame = np.tile([True, False], 10)
    scores = np.where(issame, 0.9, 0.1)
    # ... except a same pair in fold 0 and a different pair in fold 1 whose images failed
    scores[0] = np.nan
    scores[3] = np.nan
    folds = np.repeat(np.arange(10), 2)
    wrong = evaluate_scores(scores, issame, folds, fars=[0.1])
    assert wrong.failed_pairs == 2 and wrong.failed_policy == "wrong"
    assert wrong.fold_accuracies[:2] == [0.5, 0.5]
    assert wrong.fold_accuracies[2:] == [1.0] * 8
    assert wrong.accuracy == pytest.approx(0.9)
    # the failed different pair is a false accept at every threshold: FAR is never below 1/10
    assert wrong.tar_at_far[1e-3] == 0.0
    # at FAR 0.1 nine of ten same pairs are accepted: the failed one never is
    assert wrong.tar_at_far[0.1] == pytest.approx(0.9)
    assert wrong.pairs == 20

    excluded = evaluate_scores(scores, issame, folds, failed="exclude")
    assert excluded.accuracy == 1.0 and excluded.failed_pairs == 2 and excluded.pairs == 18


def test_failed_pairs_do_not_move_the_threshold():
    rng = np.random.default_rng(8)
    scores, issame = synthetic_scores(rng, 400)
    folds = split_folds(400, 10)
    base = evaluate_scores(scores, issame, folds)
    failed = scores.copy()
    failed[::37] = np.nan
    out = evaluate_scores(failed, issame, folds)
    keep = ~np.isnan(failed)
    for f in range(10):
        train = (folds != f) & keep
        assert out.fold_thresholds[f] == best_threshold(scores[train], issame[train])[0]
    assert out.accuracy < base.accuracy + 1e-12


def test_embeddings_flip_and_failed_images():
    rng = np.random.default_rng(9)
    ids = rng.normal(size=(20, 64))
    emb = np.repeat(ids, 2, axis=0) + 0.3 * rng.normal(size=(40, 64))  # images 2i, 2i+1 are identity i
    flipped = emb + 0.05 * rng.normal(size=emb.shape)
    same = np.array([[2 * i, 2 * i + 1] for i in range(20)])
    diff = np.array([[2 * i, 2 * ((i + 1) % 20) + 1] for i in range(20)])
    pairs = np.concatenate([same, diff])
    issame = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    proto = PairsProtocol("toy", [Path(f"{i}.jpg") for i in range(40)], pairs, issame, split_folds(40, 10, issame))
    combined = combine_flipped(emb, flipped)
    assert np.allclose(np.linalg.norm(combined, axis=1), 1.0)
    s = pair_scores(combined, pairs)
    e = combined / np.linalg.norm(combined, axis=1, keepdims=True)
    assert np.allclose(s, (e[pairs[:, 0]] * e[pairs[:, 1]]).sum(1))
    assert evaluate_embeddings(combined, proto).accuracy == 1.0
    combined[5] = np.nan  # image 5 had no face: same pair 2 and different pair 3 fail
    combined[6] = 0.0  # a zero vector is a failure too: same pair 3 and different pair 2
    result = evaluate_embeddings(combined, proto)
    assert result.failed_pairs == 4 and result.accuracy < 1.0
    with pytest.raises(InputError, match="one embedding per image"):
        evaluate_embeddings(combined[:10], proto)


def test_bad_inputs_are_input_errors():
    with pytest.raises(InputError, match="must match"):
        evaluate_scores(np.zeros(10), np.zeros(9, bool))
    with pytest.raises(InputError, match="both same and different"):
        evaluate_scores(np.arange(20.0), np.ones(20, bool))
    with pytest.raises(InputError, match="policy"):
        evaluate_scores(np.arange(20.0), np.tile([True, False], 10), failed="ignore")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="FAR"):
        evaluate_scores(np.arange(20.0), np.tile([True, False], 10), fars=[0.0])
    with pytest.raises(InputError, match="folds"):
        split_folds(5, 10)


# --------------------------------------------------------------------------- folds


@pytest.mark.parametrize("n,k", [(6000, 10), (605, 10), (13, 4)])
def test_split_folds_matches_kfold_without_shuffle(n, k):
    from sklearn.model_selection import KFold

    folds = split_folds(n, k)
    for f, (_, test) in enumerate(KFold(n_splits=k, shuffle=False).split(np.zeros(n))):
        assert np.array_equal(np.flatnonzero(folds == f), test)


def test_split_folds_per_class_keeps_balance_and_lfw_order():
    lfw_order = np.tile(np.repeat([True, False], 300), 10)
    assert np.array_equal(split_folds(6000, 10, lfw_order), np.repeat(np.arange(10), 600))
    same_first = np.repeat([True, False], 50)
    folds = split_folds(100, 10, same_first)
    for f in range(10):
        assert same_first[folds == f].sum() == 5 and (folds == f).sum() == 10


# --------------------------------------------------------------------------- pairs.txt


def _lfw_tree(root: Path, people: dict[str, int]) -> Path:
    images = root / "images"
    for name, count in people.items():
        (images / name).mkdir(parents=True)
        for i in range(1, count + 1):
            (images / name / f"{name}_{i:04d}.jpg").write_bytes(b"")
    return images


PEOPLE = {"Ann_A": 3, "Bob_B": 2, "Cy_C": 2, "Di_D": 1}


def test_read_pairs_with_header(tmp_path):
    images = _lfw_tree(tmp_path, PEOPLE)
    txt = tmp_path / "pairs.txt"
    txt.write_text(
        "2\t2\n"
        "Ann_A\t1\t2\nBob_B\t1\t2\nAnn_A\t1\tBob_B\t2\nCy_C\t1\tDi_D\t1\n"
        "Ann_A\t2\t3\nCy_C\t1\t2\nAnn_A\t3\tDi_D\t1\nBob_B\t1\tCy_C\t2\n"
    )
    proto = read_pairs(txt, images)
    assert proto.n_pairs == 8 and proto.n_folds == 2 and proto.same_pairs == 4
    assert proto.issame.tolist() == [True, True, False, False] * 2
    assert proto.folds.tolist() == [0] * 4 + [1] * 4
    assert len(proto.images) == 8  # each distinct image once
    named = {(p.parent.name, p.name) for p in proto.paths}
    assert ("Ann_A", "Ann_A_0003.jpg") in named and ("Di_D", "Di_D_0001.jpg") in named
    first = proto.pairs[0]
    assert proto.paths[first[0]].name == "Ann_A_0001.jpg" and proto.paths[first[1]].name == "Ann_A_0002.jpg"
    # every pair refers to the files the line names
    a, b = proto.pairs[3]
    assert (proto.paths[a].name, proto.paths[b].name) == ("Cy_C_0001.jpg", "Di_D_0001.jpg")


def test_read_pairs_without_header_and_blank_lines(tmp_path):
    images = _lfw_tree(tmp_path, PEOPLE)
    txt = tmp_path / "my_pairs.txt"
    same = ["Ann_A 1 2", "Bob_B 1 2", "Cy_C 1 2", "Ann_A 2 3"]
    diff = ["Ann_A 1 Bob_B 2", "Cy_C 1 Di_D 1", "Ann_A 3 Di_D 1", "Bob_B 1 Cy_C 2"]
    txt.write_text("\n" + "\n".join(same) + "\n\n" + "\n".join(diff) + "\n\n")
    proto = read_pairs(txt, images, n_folds=2)
    assert proto.name == "my_pairs" and proto.n_pairs == 8 and proto.n_folds == 2
    # folds are contiguous within each class, so each fold holds both kinds of pair
    assert proto.folds.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert load_protocol(txt, images, n_folds=2).n_pairs == 8


def test_read_pairs_malformed_line_names_the_line(tmp_path):
    images = _lfw_tree(tmp_path, PEOPLE)
    txt = tmp_path / "pairs.txt"
    txt.write_text("Ann_A\t1\t2\n\nBob_B\t1\n")
    with pytest.raises(InputError, match=r"pairs.txt:3:"):
        read_pairs(txt, images)
    txt.write_text("Ann_A\t1\tx\n")
    with pytest.raises(InputError, match=r"pairs.txt:1:"):
        read_pairs(txt, images)
    txt.write_text("Ann_A\t0\t2\n")
    with pytest.raises(InputError, match=r"pairs.txt:1: image numbers start at 1"):
        read_pairs(txt, images)
    txt.write_text("10\t300\nAnn_A\t1\t2\nAnn_A\t1\tBob_B\t1\n")
    with pytest.raises(InputError, match="header says 10 folds"):
        read_pairs(txt, images)
    txt.write_text("\n\n")
    with pytest.raises(InputError, match="holds no pairs"):
        read_pairs(txt, images)
    with pytest.raises(InputError, match="does not exist"):
        read_pairs(tmp_path / "nope.txt", images)
    with pytest.raises(InputError, match="image folder"):
        read_pairs(txt, tmp_path / "nope")
    with pytest.raises(InputError, match="folder of images"):
        load_protocol(txt)


def test_read_pairs_missing_images(tmp_path):
    images = _lfw_tree(tmp_path, PEOPLE)
    txt = tmp_path / "pairs.txt"
    txt.write_text("Ann_A\t1\t2\nBob_B\t1\t3\nAnn_A\t1\tZed_Z\t4\nCy_C\t1\tDi_D\t1\n")
    with pytest.raises(InputError) as err:
        read_pairs(txt, images, n_folds=2)
    message = str(err.value)
    assert "2 of 7 images" in message and "Bob_B_0003.jpg" in message and "\n" not in message


def test_load_image_from_path(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    proto = PairsProtocol("t", [tmp_path / "a.png", tmp_path / "bad.jpg"], np.array([[0, 1]]), np.array([True]), np.array([0]))
    assert np.array_equal(proto.load_image(0), pixels)
    with pytest.raises(InputError, match="cannot decode"):
        proto.load_image(1)


@pytest.mark.lfw
def test_real_lfw_pairs():
    if not (LFW / "pairs.txt").is_file():
        pytest.skip(lfw_missing(root=LFW))
    proto = read_pairs(LFW / "pairs.txt", LFW / "lfw-deepfunneled")
    assert proto.n_pairs == 6000 and proto.n_folds == 10 and proto.same_pairs == 3000
    for f in range(10):
        assert (proto.folds == f).sum() == 600 and proto.issame[proto.folds == f].sum() == 300
    assert proto.name == "lfw"
    assert all(p.is_file() for p in proto.paths[:20])


# --------------------------------------------------------------------------- plots


def test_plot_roc_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    curves = {}
    for name, gap in (("real", 0.8), ("synthetic", 0.3)):
        scores, issame = synthetic_scores(rng, 500, gap=gap)
        r = evaluate_scores(scores, issame)
        curves[name] = (r.fpr, r.tpr)
    out = plot_roc(curves, tmp_path / "plots" / "roc.png", title="LFW")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list((tmp_path / "plots").glob(".*tmp"))
    with pytest.raises(InputError):
        plot_roc({}, tmp_path / "x.png")
    with pytest.raises(InputError, match="same length"):
        plot_roc({"a": (np.zeros(3), np.zeros(4))}, tmp_path / "x.png")

"""Verification pairs from your own data: a CSV list, or a seeded protocol drawn from a folder of people.

CSV (``path_a,path_b,same``, a header row, optional ``fold`` column): paths relative to the CSV's
folder (or an images folder given with it), ``same`` 1/0 or true/false.

Folder of people (one sub-folder of images per person), the LFW View 2 recipe: people with two or
more images are shuffled with the seed and dealt into ``n_folds`` people-disjoint folds (largest
first, round-robin); each fold gets the same number of same-person pairs (round-robin over its
people, a fresh image pair each turn) and different-person pairs (two random people of the fold,
one random image each), no pair repeated. The same seed and folder give the same protocol.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np

from synthface.errors import InputError
from synthface.files import images_in
from synthface.recognition.protocols.pairs import PairsProtocol, split_folds

T = TypeVar("T")
TRUE, FALSE = {"1", "true", "yes", "same"}, {"0", "false", "no", "different"}


# --------------------------------------------------------------------------- the people-disjoint protocol


def deal_folds(people: dict[str, Sequence[T]], names: Sequence[str], n_folds: int, rng: random.Random) -> list[list[str]]:
    """``names`` shuffled, sorted by image count (largest first, ties in shuffled order), dealt round-robin."""
    order = list(names)
    rng.shuffle(order)
    order.sort(key=lambda n: -len(people[n]))
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for i, name in enumerate(order):
        folds[i % n_folds].append(name)
    return folds


def same_pairs(fold: Sequence[str], people: dict[str, Sequence[T]], count: int, rng: random.Random) -> list[tuple[str, T, T]]:
    """``count`` same-person pairs, round-robin over the fold's people, each image pair at most once."""
    all_pairs = {n: [(a, b) for i, a in enumerate(people[n]) for b in people[n][i + 1 :]] for n in fold}
    for pairs in all_pairs.values():
        rng.shuffle(pairs)
    names = list(fold)
    rng.shuffle(names)
    out: list[tuple[str, T, T]] = []
    while len(out) < count:
        progressed = False
        for name in names:
            if all_pairs[name] and len(out) < count:
                a, b = all_pairs[name].pop()
                out.append((name, a, b))
                progressed = True
        if not progressed:
            raise InputError(
                f"a fold has only {len(out)} same-person pairs, {count} were asked for: ask for fewer pairs per fold"
            )
    return out


def diff_pairs(
    fold: Sequence[str], people: dict[str, Sequence[T]], count: int, rng: random.Random
) -> list[tuple[str, T, str, T]]:
    """``count`` different-person pairs of the fold, none repeated."""
    seen: set[tuple[str, T, str, T]] = set()
    out: list[tuple[str, T, str, T]] = []
    possible = sum(len(people[a]) * len(people[b]) for i, a in enumerate(fold) for b in fold[i + 1 :])
    if possible < count:
        raise InputError(
            f"a fold allows only {possible} different-person pairs, {count} were asked for: ask for fewer pairs per fold"
        )
    while len(out) < count:
        p1, p2 = sorted(rng.sample(list(fold), 2))
        pair = (p1, rng.choice(people[p1]), p2, rng.choice(people[p2]))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


def people_in(root: Path) -> dict[str, list[Path]]:
    """Person (sub-folder name) -> its images, sorted."""
    if not root.is_dir():
        raise InputError(f"folder of people {root} does not exist: pass a folder with one sub-folder of images per person")
    people = {}
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        images = images_in(person)
        if images:
            people[person.name] = images
    return people


def folder_protocol(root: str | Path, n_folds: int = 10, pairs_per_fold: int | None = None, seed: int = 0):  # type: ignore[no-untyped-def]
    """A seeded people-disjoint protocol over the folder of people ``root`` (a PairsProtocol).

    ``pairs_per_fold`` same and as many different pairs per fold; None: as many same pairs as the
    poorest fold allows (capped at LFW's 300).
    """
    root = Path(root)
    people = people_in(root)
    multi = sorted(n for n, imgs in people.items() if len(imgs) >= 2)
    if len(multi) < 2 * n_folds:
        raise InputError(
            f"{root} has {len(multi)} people with 2+ images; {n_folds} people-disjoint folds need at least {2 * n_folds}"
        )
    folds = deal_folds(people, multi, n_folds, random.Random(seed + 1))
    if pairs_per_fold is None:
        available = min(sum(len(people[n]) * (len(people[n]) - 1) // 2 for n in fold) for fold in folds)
        pairs_per_fold = min(300, available)
    rng = random.Random(seed + 2)
    index: dict[Path, int] = {}
    rows, same, fold_of = [], [], []
    for k, fold in enumerate(folds):
        for _, a, b in same_pairs(fold, people, pairs_per_fold, rng):
            rows.append((index.setdefault(a, len(index)), index.setdefault(b, len(index))))
            same.append(True)
        for _, a, _, b in diff_pairs(fold, people, pairs_per_fold, rng):
            rows.append((index.setdefault(a, len(index)), index.setdefault(b, len(index))))
            same.append(False)
        fold_of += [k] * (2 * pairs_per_fold)
    return PairsProtocol(name=root.name, images=list(index), pairs=np.asarray(rows, np.int64), issame=np.asarray(same, bool),
                         folds=np.asarray(fold_of, np.int64), source=root)  # fmt: skip


# --------------------------------------------------------------------------- CSV


MAX_FOLD = 9999  # a fold column's largest index


def read_csv_pairs(path: str | Path, images_dir: str | Path | None = None, n_folds: int = 10):  # type: ignore[no-untyped-def]
    """A ``path_a,path_b,same[,fold]`` CSV (a PairsProtocol); paths relative to ``images_dir`` or the CSV's folder."""
    path = Path(path)
    base = Path(images_dir) if images_dir is not None else path.parent
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            names = [name.strip() for name in reader.fieldnames or []]
            doubled = sorted({name for name in names if names.count(name) > 1})
            if doubled:
                raise InputError(f"{path}:1: column {doubled[0]!r} appears twice in the header: keep one")
            columns = set(reader.fieldnames or [])
            if not {"path_a", "path_b", "same"} <= columns:
                raise InputError(
                    f"{path}: a pairs CSV needs the header path_a,path_b,same (optionally fold); got {sorted(columns)}"
                )
            records = list(reader)
    except FileNotFoundError:
        raise InputError(f"pairs file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read pairs CSV {path}: {exc}") from None
    if not records:
        raise InputError(f"pairs CSV {path} holds no pairs")
    index: dict[Path, int] = {}
    rows, same, folds, fold_lines = [], [], [], {}
    for line, rec in enumerate(records, start=2):
        flag = (rec.get("same") or "").strip().lower()
        if flag not in TRUE | FALSE:
            raise InputError(f"{path}:{line}: same must be 1/0 or true/false, got {rec.get('same')!r}")
        a, b = (base / (rec.get(k) or "").strip() for k in ("path_a", "path_b"))
        rows.append((index.setdefault(a, len(index)), index.setdefault(b, len(index))))
        same.append(flag in TRUE)
        if "fold" in columns:
            try:
                fold = int(rec["fold"])
            except (TypeError, ValueError):
                raise InputError(f"{path}:{line}: fold must be an integer, got {rec.get('fold')!r}") from None
            if not 0 <= fold <= MAX_FOLD:
                raise InputError(f"{path}:{line}: fold must be 0 to {MAX_FOLD}, got {fold}")
            folds.append(fold)
            fold_lines.setdefault(fold, line)
    missing = [p for p in index if not p.is_file()]
    if missing:
        raise InputError(f"{len(missing)} of {len(index)} images named in {path} are missing (first: {missing[0]}): "
                         f"paths are relative to {base}")  # fmt: skip
    issame = np.asarray(same, bool)
    fold_arr = np.asarray(folds, np.int64) if folds else split_folds(len(rows), n_folds, issame)
    for fold, line in sorted(fold_lines.items(), key=lambda item: item[1]):
        labels = set(issame[fold_arr == fold].tolist())
        if len(labels) == 1:
            kind = "same" if labels == {True} else "different"
            raise InputError(
                f"{path}:{line}: fold {fold} holds only {kind} pairs: every fold needs same and different pairs "
                "(drop the fold column to have the folds dealt with both)"
            )
    return PairsProtocol(name=path.stem, images=list(index), pairs=np.asarray(rows, np.int64), issame=issame,
                         folds=fold_arr, source=path)  # fmt: skip

"""Write the fixed, seeded split of LFW people used by the scaled-down protocol.

Outputs (committed, so every run of the protocol uses the same people and pairs):

* ``bench/data/lfw_split.json``: ``{"seed", "train", "test", "rule", "counts"}``.
  People with 2+ images are shuffled with ``seed`` and split 50/50 into disjoint
  halves; every single-image person goes to ``train`` (no same-person pair can be
  built from one image, and the generator and recognizer training both profit from
  more real faces). ``test`` therefore holds only people with 2+ images.
* ``bench/data/lfw_test_pairs.txt``: LFW ``pairs.txt`` format (first line
  ``10<TAB>300``), 10 folds of 300 same-person then 300 different-person lines,
  built only among ``test`` people. Folds are people-disjoint, like LFW View 2.

Usage (from the repository root):

    .venv/bin/python bench/make_lfw_split.py [--lfw ../shared/data/lfw/lfw-deepfunneled] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from synthface.lfw import IMAGES, lfw_dir
from synthface.recognition.protocols.folders import deal_folds, diff_pairs, same_pairs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LFW = lfw_dir(ROOT.parent / "shared" / "data" / "lfw") / IMAGES  # $SYNTHFACE_LFW, else ../shared
FOLDS = 10
PAIRS_PER_FOLD = 300
RULE = (
    "people with 2+ images: sorted by name, shuffled with random.Random(seed), first half (rounded down) "
    "-> test, rest -> train; every single-image person -> train. Test pairs: test people dealt into 10 "
    "people-disjoint folds (sorted by image count, dealt round-robin after a seeded shuffle); per fold 300 "
    "same-person pairs (round-robin over the fold's people, a fresh random image pair each turn) and 300 "
    "different-person pairs (two random people, one random image each), no pair repeated."
)
_IMAGE = re.compile(r"^(?P<name>.+)_(?P<num>\d{4})\.(jpg|jpeg|png)$", re.IGNORECASE)


def list_people(lfw: Path) -> dict[str, list[int]]:
    """Person name -> sorted 1-based image numbers found in an LFW-layout folder."""
    people: dict[str, list[int]] = {}
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        nums = sorted(
            int(m.group("num")) for f in person.iterdir() if (m := _IMAGE.match(f.name)) and m.group("name") == person.name
        )
        if nums:
            people[person.name] = nums
    return people


def split_people(people: dict[str, list[int]], seed: int) -> tuple[list[str], list[str]]:
    multi = sorted(name for name, nums in people.items() if len(nums) >= 2)
    single = sorted(name for name, nums in people.items() if len(nums) == 1)
    random.Random(seed).shuffle(multi)
    half = len(multi) // 2
    test = sorted(multi[:half])
    train = sorted(multi[half:] + single)
    return train, test


def make_folds(test: list[str], people: dict[str, list[int]], seed: int) -> list[list[str]]:
    return deal_folds(people, test, FOLDS, random.Random(seed + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help="LFW folder: one sub-folder per person")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "data")
    args = parser.parse_args()
    if not args.lfw.is_dir():
        raise SystemExit(f"LFW folder not found: {args.lfw} (pass --lfw)")
    people = list_people(args.lfw)
    train, test = split_people(people, args.seed)
    assert not set(train) & set(test)
    folds = make_folds(test, people, args.seed)
    rng = random.Random(args.seed + 2)
    lines = [f"{FOLDS}\t{PAIRS_PER_FOLD}"]
    for fold in folds:
        lines += [f"{n}\t{a}\t{b}" for n, a, b in same_pairs(fold, people, PAIRS_PER_FOLD, rng)]
        lines += [f"{n1}\t{a}\t{n2}\t{b}" for n1, a, n2, b in diff_pairs(fold, people, PAIRS_PER_FOLD, rng)]
    args.out.mkdir(parents=True, exist_ok=True)
    counts = {
        "people": len(people),
        "train_people": len(train),
        "train_people_2plus": sum(len(people[n]) >= 2 for n in train),
        "train_images": sum(len(people[n]) for n in train),
        "test_people": len(test),
        "test_images": sum(len(people[n]) for n in test),
        "pairs": FOLDS * PAIRS_PER_FOLD * 2,
    }
    split = {"seed": args.seed, "rule": RULE, "counts": counts, "train": train, "test": test}
    (args.out / "lfw_split.json").write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
    (args.out / "lfw_test_pairs.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()

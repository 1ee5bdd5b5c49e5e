"""LFW-style ``pairs.txt`` lists: the pairs, by person name and image number, of a folder of people."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthface.errors import InputError
from synthface.recognition.protocols.pairs import PairsProtocol, split_folds


def read_pairs(pairs_path: str | Path, images_dir: str | Path, n_folds: int = 10, ext: str = ".jpg") -> PairsProtocol:
    """Parse an LFW-style ``pairs.txt`` into a :class:`PairsProtocol`.

    Format: an optional header ``n_folds<TAB>n_per_class`` (LFW View 2: ``10<TAB>300``;
    folds are then blocks of ``2 * n_per_class`` consecutive pairs) or ``n_per_class``
    alone (View 1), then one pair per line: ``name<TAB>i<TAB>j`` (same person) or
    ``name1<TAB>i<TAB>name2<TAB>j`` (different people), any whitespace accepted, blank
    lines ignored. Image ``i`` of ``name`` is ``images_dir/name/name_{i:04d}{ext}``.
    Without a two-number header, ``n_folds`` folds are assigned contiguously within
    each class (see :func:`split_folds`).
    """
    pairs_path, images_dir = Path(pairs_path), Path(images_dir)
    try:
        text = pairs_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"pairs file {pairs_path} does not exist: pass the path of an LFW-style pairs.txt") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read pairs file {pairs_path}: {exc}") from None
    if not images_dir.is_dir():
        raise InputError(f"image folder {images_dir} does not exist: pass the folder holding one sub-folder per person")

    header: tuple[int, ...] | None = None
    names: list[tuple[str, int, str, int]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if header is None and not names and len(fields) <= 2 and all(f.isdigit() for f in fields):
            header = tuple(int(f) for f in fields)
            continue
        try:
            if len(fields) == 3:
                a, b = int(fields[1]), int(fields[2])
                pair = (fields[0], a, fields[0], b)
            elif len(fields) == 4:
                pair = (fields[0], int(fields[1]), fields[2], int(fields[3]))
            else:
                raise ValueError
        except ValueError:
            shown = line.strip()[:80]
            raise InputError(
                f"{pairs_path}:{lineno}: expected 'name i j' or 'name1 i name2 j' (tab-separated), got {shown!r}"
            ) from None
        if pair[1] < 1 or pair[3] < 1:
            raise InputError(f"{pairs_path}:{lineno}: image numbers start at 1, got {line.strip()[:80]!r}")
        names.append(pair)
    if not names:
        raise InputError(f"pairs file {pairs_path} holds no pairs: expected lines like 'name<TAB>1<TAB>2'")

    n = len(names)
    issame = np.array([p[0] == p[2] for p in names], dtype=bool)
    if header is not None and len(header) == 2:
        k, per_class = header
        if k < 2 or per_class < 1 or k * 2 * per_class != n:
            raise InputError(
                f"{pairs_path}: header says {k} folds x {per_class} same + {per_class} different pairs "
                f"({k * 2 * per_class}) but the file lists {n} pairs: fix the header or remove it"
            )
        folds = np.arange(n, dtype=np.int64) // (2 * per_class)
    else:
        if header is not None and header[0] * 2 != n:
            raise InputError(
                f"{pairs_path}: header says {header[0]} same + {header[0]} different pairs "
                f"but the file lists {n} pairs: fix the header or remove it"
            )
        folds = split_folds(n, n_folds, issame)

    index: dict[tuple[str, int], int] = {}
    pairs = np.empty((n, 2), dtype=np.int64)
    for row, (n1, i1, n2, i2) in enumerate(names):
        pairs[row, 0] = index.setdefault((n1, i1), len(index))
        pairs[row, 1] = index.setdefault((n2, i2), len(index))
    paths = [images_dir / name / f"{name}_{num:04d}{ext}" for name, num in index]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(paths)} images named in {pairs_path} are missing under {images_dir} "
            f"(first: {missing[0]}): check the image folder matches the pairs file"
        )
    name = pairs_path.parent.name if pairs_path.stem == "pairs" and pairs_path.parent.name else pairs_path.stem
    return PairsProtocol(name=name, images=paths, pairs=pairs, issame=issame, folds=folds, source=pairs_path)

"""Identity sampling: which synthetic people a dataset holds, as embeddings in the generator's space.

Strategies (``identities.strategy``):

- ``uniform``: random unit vectors in R^D.
- ``gallery``: a Gaussian (Ledoit-Wolf covariance) fitted to real embeddings, sampled and L2-normalised.
- ``images``: the embeddings of given reference faces (one identity per image, or per sub-folder mean).
- ``unconditional``: generate with the model's unconditional branch and embed the result.

Every strategy rejects a candidate whose cosine to an already accepted identity is above
``separation``, and (with a real gallery) above ``leakage`` to any real person. Acceptance is
sequential and candidate (i, attempt) is drawn from a generator seeded by (run seed, i, attempt)
alone, so identity i depends only on the run seed and identities 0..i-1: never on how many
identities were asked for nor on which process computes the plan. Cosines against earlier
identities are computed in fixed-shape blocks so even their rounding does not depend on the count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from synthface.embeddings import fixed_list, fixed_list_array, l2n
from synthface.errors import InputError, ModelMismatchError
from synthface.gallery import ImageEmbedFn, embed_groups, load_gallery, reference_groups

# Domain tags keep the seed streams of different uses apart.
_TAG_IDENTITY, _TAG_SAMPLE, _TAG_CANDIDATE = 1, 2, 3
_SEED_MASK = (1 << 63) - 1


def _entropy(*values: int) -> list[int]:
    return [int(v) % (1 << 64) for v in values]


def _seed_from(*values: int) -> int:
    words = np.random.SeedSequence(_entropy(*values)).generate_state(2, np.uint32)
    return int(((int(words[0]) << 32) | int(words[1])) & _SEED_MASK)


def identity_seed(run_seed: int, identity: int) -> int:
    """The seed of identity ``identity`` (a non-negative int64), from (run seed, identity) alone."""
    return _seed_from(_TAG_IDENTITY, run_seed, identity)


def sample_seeds(run_seed: int, identity: int, count: int, start: int = 0) -> np.ndarray:
    """Seeds of samples start..start+count-1 of an identity: a hash of (run seed, identity, sample)."""
    return np.array([_seed_from(_TAG_SAMPLE, run_seed, identity, j) for j in range(start, start + count)], np.int64)


def candidate_seed(run_seed: int, identity: int, attempt: int) -> int:
    return _seed_from(_TAG_CANDIDATE, run_seed, identity, attempt)


def candidate_rng(run_seed: int, identity: int, attempt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(_entropy(_TAG_CANDIDATE, run_seed, identity, attempt)))


# --------------------------------------------------------------------------- the plan


def plan_labels(kept: np.ndarray) -> np.ndarray:
    """Contiguous labels over kept identities (-1 where dropped): label = kept identities before it."""
    kept = np.asarray(kept, bool)
    return np.where(kept, np.cumsum(kept) - 1, -1).astype(np.int64)


@dataclass
class IdentityPlan:
    """The planned identities of a run; row i is identity i."""

    strategy: str
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    kept: np.ndarray  # (N,) bool: False where the plan itself rejected a fixed reference
    reasons: list[str]  # why not kept ("" where kept)
    seeds: np.ndarray  # (N,) int64 identity seeds
    attempts: np.ndarray  # (N,) int32 candidates drawn before acceptance
    sources: list[str] = field(default_factory=list)  # reference image/folder (images strategy)

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def labels(self) -> np.ndarray:
        """Contiguous labels over kept identities (-1 where not kept)."""
        return plan_labels(self.kept)

    def digest(self) -> str:
        """sha256 of what the renders depend on: the embeddings and the identity seeds."""
        import hashlib

        data = np.ascontiguousarray(self.embeddings, "<f4").tobytes() + np.ascontiguousarray(self.seeds, "<i8").tobytes()
        return hashlib.sha256(data).hexdigest()

    def to_table(self, metadata: dict[str, Any] | None = None) -> Any:
        import pyarrow as pa

        n, d = self.embeddings.shape
        table = pa.table(
            {
                "index": pa.array(np.arange(n, dtype=np.int64)),
                "embedding": fixed_list_array(self.embeddings),
                "seed": pa.array(self.seeds.astype(np.int64)),
                "kept": pa.array(self.kept.astype(bool)),
                "reason": pa.array(list(self.reasons), pa.string()),
                "label": pa.array(self.labels()),
                "attempts": pa.array(self.attempts.astype(np.int32)),
                "source": pa.array(list(self.sources) if self.sources else [""] * n, pa.string()),
            }
        )
        meta = {"strategy": self.strategy, "dim": d, "digest": self.digest(), **(metadata or {})}
        return table.replace_schema_metadata({b"synthface": json.dumps(meta, sort_keys=True).encode()})

    @classmethod
    def from_table(cls, table: Any) -> "IdentityPlan":
        meta = json.loads((table.schema.metadata or {}).get(b"synthface", b"{}"))
        return cls(
            strategy=str(meta.get("strategy", "")),
            embeddings=fixed_list(table.column("embedding")),
            kept=np.asarray(table.column("kept").to_numpy(zero_copy_only=False), bool),
            reasons=[str(r) for r in table.column("reason").to_pylist()],
            seeds=np.asarray(table.column("seed").to_numpy(), np.int64),
            attempts=np.asarray(table.column("attempts").to_numpy(), np.int32),
            sources=[str(s) for s in table.column("source").to_pylist()],
        )


def read_plan(path: Path) -> IdentityPlan | None:
    """The plan stored in ``path`` (identities.parquet), or None when it is unreadable or its
    embeddings and seeds do not match the digest recorded with them (a damaged or edited file; a
    file written before digests were recorded is taken as it is)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        plan = IdentityPlan.from_table(table)
        recorded = json.loads((table.schema.metadata or {}).get(b"synthface", b"{}")).get("digest")
    except Exception:  # noqa: BLE001 - pyarrow raises many types on a bad file
        return None
    return plan if recorded in (None, plan.digest()) else None


def read_plan_metadata(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta.get(b"synthface", b"{}"))
    except Exception:  # noqa: BLE001 - unreadable: treat as absent
        return {}


# --------------------------------------------------------------------------- sequential acceptance


Draw = Callable[[list[tuple[int, int]]], np.ndarray]
"""(identity, attempt) pairs -> (len, D) candidate embeddings (NaN rows: no candidate)."""


class PlacementError(InputError):
    pass


def accept_sequential(
    count: int,
    draw: Draw,
    separation: float,
    real: np.ndarray | None = None,
    leakage: float = 1.0,
    max_attempts: int = 1000,
    block: int = 256,
    retry_batch: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Accept identities 0..count-1 in order; returns (embeddings (count, D) float32, attempts).

    Candidate (i, a) is rejected when invalid (NaN), when its cosine to an accepted identity j < i
    exceeds ``separation``, or (with ``real``) its cosine to a real person exceeds ``leakage``.
    The result for identity i is the same whatever ``count`` is.
    """
    accepted: np.ndarray | None = None
    attempts = np.zeros(count, np.int32)
    real64 = None if real is None or len(real) == 0 else l2n(real)
    for start in range(0, count, block):
        stop = min(start + block, count)
        first = _clean(draw([(i, 0) for i in range(start, stop)]))
        if accepted is None:
            accepted = np.zeros((count, first.shape[1]), np.float32)
        # fixed-shape blocks: pad to `block` rows so the products' rounding never depends on count
        padded = np.zeros((block, first.shape[1]), np.float64)
        padded[: stop - start] = np.nan_to_num(first)
        prev_max = (padded @ accepted[:start].astype(np.float64).T).max(1) if start else np.full(block, -np.inf)
        real_max = (padded @ real64.T).max(1) if real64 is not None else np.full(block, -np.inf)
        for k, i in enumerate(range(start, stop)):
            cand, attempt = first[k], 0
            ok = _valid(cand) and prev_max[k] <= separation and real_max[k] <= leakage
            ok = ok and _max_cos(cand, accepted[start:i]) <= separation
            while not ok:
                if attempt + 1 >= max_attempts:
                    leak = f", above identities.leakage={leakage} to a real person" if real64 is not None else ""
                    raise PlacementError(
                        f"could not place identity {i} after {max_attempts} candidates (each was above "
                        f"identities.separation={separation} cosine to an earlier identity{leak}, or had no face): "
                        "lower identities.count or raise the thresholds"
                    )
                keys = [(i, attempt + 1 + r) for r in range(min(retry_batch, max_attempts - attempt - 1))]
                cands = _clean(draw(keys))
                for r, cand in enumerate(cands):
                    attempt = keys[r][1]
                    ok = (
                        _valid(cand)
                        and _max_cos(cand, accepted[:i]) <= separation
                        and (real64 is None or _max_cos(cand, real64) <= leakage)
                    )
                    if ok:
                        break
            accepted[i] = cand.astype(np.float32)
            attempts[i] = attempt + 1
    if accepted is None:
        return np.zeros((0, 0), np.float32), attempts
    return accepted, attempts


def _clean(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    good = np.isfinite(x).all(axis=1)
    out = np.full_like(x, np.nan)
    out[good] = l2n(x[good]).astype(np.float32).astype(np.float64)  # the float32 values that get stored
    return out


def _valid(v: np.ndarray) -> bool:
    return bool(np.isfinite(v).all())


def _max_cos(v: np.ndarray, others: np.ndarray) -> float:
    if len(others) == 0:
        return -np.inf
    return float((np.asarray(others, np.float64) @ v).max())


# --------------------------------------------------------------------------- candidate sources


def uniform_draw(run_seed: int, dim: int) -> Draw:
    def draw(keys: list[tuple[int, int]]) -> np.ndarray:
        return np.stack([candidate_rng(run_seed, i, a).standard_normal(dim) for i, a in keys]) if keys else np.zeros((0, dim))

    return draw


@dataclass
class Gaussian:
    mean: np.ndarray
    chol: np.ndarray

    @classmethod
    def fit(cls, embeddings: np.ndarray) -> "Gaussian":
        from sklearn.covariance import LedoitWolf

        x = l2n(embeddings)
        if len(x) < 2:
            raise InputError("the identity gallery needs at least 2 real embeddings to fit a distribution")
        lw = LedoitWolf().fit(x)
        cov = lw.covariance_ + 1e-9 * np.eye(x.shape[1])
        return cls(mean=lw.location_, chol=np.linalg.cholesky(cov))


def gaussian_draw(run_seed: int, gaussian: Gaussian) -> Draw:
    dim = len(gaussian.mean)

    def draw(keys: list[tuple[int, int]]) -> np.ndarray:
        if not keys:
            return np.zeros((0, dim))
        # one matrix-vector product per candidate: its rounding never depends on the batch of keys
        return np.stack([gaussian.mean + gaussian.chol @ candidate_rng(run_seed, i, a).standard_normal(dim) for i, a in keys])

    return draw


def unconditional_draw(
    run_seed: int, dim: int, render: Callable[[np.ndarray], Sequence[np.ndarray]], embed: ImageEmbedFn
) -> Draw:
    """Candidates (i, a): render the unconditional branch with seed (run seed, i, a), embed the image."""

    def draw(keys: list[tuple[int, int]]) -> np.ndarray:
        if not keys:
            return np.zeros((0, dim))
        seeds = np.array([candidate_seed(run_seed, i, a) for i, a in keys], np.int64)
        emb = np.asarray(embed(list(render(seeds))), np.float64)
        if emb.shape != (len(keys), dim):
            raise InputError(f"the image embedder returned shape {emb.shape}, expected ({len(keys)}, {dim})")
        return emb

    return draw


# --------------------------------------------------------------------------- planning


def plan_identities(
    cfg: Any,
    run_seed: int,
    dim: int,
    *,
    embedder: str = "",
    image_embed: Callable[[], ImageEmbedFn] | None = None,
    generated_embed: Callable[[], ImageEmbedFn] | None = None,
    render_unconditional: Callable[[np.ndarray], Sequence[np.ndarray]] | None = None,
    max_attempts: int | None = None,
) -> IdentityPlan:
    """The identity plan for an ``identities`` recipe section (see the module docstring).

    ``image_embed`` builds the embedder for real photos (gallery/reference folders: detection +
    the model's conditioning embedder); ``generated_embed`` the one for generated images and
    ``render_unconditional`` renders unconditional samples for seeds (``unconditional`` strategy).
    Factories are called only when the strategy needs them.
    """
    count, strategy = int(cfg.count), str(cfg.strategy)
    gallery = None
    if cfg.gallery:
        if image_embed is None and not Path(cfg.gallery).is_file():
            raise InputError("a gallery folder needs a face embedder to embed it")
        gallery = load_gallery(cfg.gallery, image_embed or _no_embed, embedder, dim)
    real = gallery.persons if gallery is not None else None

    if strategy == "images":
        return _plan_images(cfg, run_seed, dim, real, image_embed)

    if strategy == "uniform":
        draw, attempts_cap = uniform_draw(run_seed, dim), max_attempts or 1000
    elif strategy == "gallery":
        if gallery is None:
            raise InputError("identities.strategy=gallery needs identities.gallery (a `synthface embed` Parquet or a folder)")
        draw, attempts_cap = gaussian_draw(run_seed, Gaussian.fit(gallery.embeddings)), max_attempts or 1000
    elif strategy == "unconditional":
        if render_unconditional is None or generated_embed is None:
            raise InputError("identities.strategy=unconditional needs the generator and a face embedder")
        draw = unconditional_draw(run_seed, dim, render_unconditional, generated_embed())
        attempts_cap = max_attempts or 16
    else:
        raise InputError(f"unknown identities.strategy '{strategy}': use uniform, gallery, images or unconditional")
    block = 64 if strategy == "unconditional" else 256
    emb, attempts = accept_sequential(
        count,
        draw,
        cfg.separation,
        real,
        cfg.leakage,
        attempts_cap,
        block=block,
        retry_batch=4 if strategy == "unconditional" else 1,
    )
    return IdentityPlan(
        strategy=strategy,
        embeddings=emb,
        kept=np.ones(count, bool),
        reasons=[""] * count,
        seeds=np.array([identity_seed(run_seed, i) for i in range(count)], np.int64),
        attempts=attempts,
        sources=[""] * count,
    )


def _no_embed() -> ImageEmbedFn:
    raise InputError("a gallery folder needs a face embedder to embed it")


def _plan_images(
    cfg: Any, run_seed: int, dim: int, real: np.ndarray | None, image_embed: Callable[[], ImageEmbedFn] | None
) -> IdentityPlan:
    if not cfg.images:
        raise InputError("identities.strategy=images needs identities.images (a folder of reference faces)")
    groups = reference_groups(cfg.images)
    count = int(cfg.count)
    if count > len(groups):
        raise InputError(
            f"identities.count={count} but {cfg.images} holds {len(groups)} reference identities: "
            f"set identities.count<={len(groups)}"
        )
    if image_embed is None:
        raise InputError("identities.strategy=images needs a face embedder")
    groups = groups[:count]
    emb, names = embed_groups(groups, image_embed())
    if emb.size and emb.shape[1] != dim:
        raise ModelMismatchError(f"reference embeddings have dimension {emb.shape[1]} but the model expects {dim}")
    by_name: dict[str, list[np.ndarray]] = {}
    for n, e in zip(names, emb):
        by_name.setdefault(n, []).append(e)
    out = np.zeros((count, dim), np.float32)
    kept = np.zeros(count, bool)
    reasons = [""] * count
    real64 = None if real is None else l2n(real)
    for i, (name, _) in enumerate(groups):
        if name not in by_name:
            reasons[i] = "no face found in the reference image(s)"
            continue
        cand = l2n(np.mean(by_name[name], axis=0)).astype(np.float32)
        out[i] = cand
        c64 = cand.astype(np.float64)
        earlier = out[:i][kept[:i]]
        if _max_cos(c64, earlier) > cfg.separation:
            j = int(np.flatnonzero(kept[:i])[np.argmax(earlier.astype(np.float64) @ c64)])
            reasons[i] = f"separation: cosine {_max_cos(c64, earlier):.3f} to identity {j}"
        elif real64 is not None and _max_cos(c64, real64) > cfg.leakage:
            reasons[i] = f"leakage: cosine {_max_cos(c64, real64):.3f} to a real person"
        else:
            kept[i] = True
    if not kept.any():
        why = sorted({r.split(":")[0] for r in reasons})
        raise InputError(
            f"no reference identity in {cfg.images} can be used ({'; '.join(why)}): add clear, frontal "
            "face photos (one sub-folder or image per identity)"
        )
    return IdentityPlan(
        strategy="images",
        embeddings=out,
        kept=kept,
        reasons=reasons,
        seeds=np.array([identity_seed(run_seed, i) for i in range(count)], np.int64),
        attempts=np.ones(count, np.int32),
        sources=[str(files[0].parent if len(files) > 1 else files[0]) for _, files in groups],
    )


def iter_chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
